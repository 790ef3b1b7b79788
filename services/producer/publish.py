"""``publish``: an extract file, end to end — read, validate, build, outbox, send, report.

The loop works in batches (:data:`BATCH` lines): build the batch's signals (CPU), write
them to the outbox in one transaction, then send everything pending and wait for the
acknowledgements of the whole batch at once. A broker that stops answering does not stop
the run: the remaining lines are still validated and kept in the outbox, the summary says
how many wait there, and the exit status is 1.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from services.core.reasons import Reason
from services.core.types import Fund
from services.errors import BrokerError, Rejected
from services.platform.settings import Settings
from services.producer.extract import Extract, LineParser, Rejection, RejectReport
from services.producer.nir import mask
from services.producer.outbox import Row
from services.producer.sdk import Publisher, SignalBuilder, SignalInput, today_paris

BATCH = 4000
#: lines per build job (one pickle round trip to a worker process)
CHUNK = 1000
#: with pseudonyms from the service (scheme v2), lines per build job: asked of the service
#: in batches (FIRST_PART, then CHUNK), the next one asked before the current one is built;
#: small enough that at the end of a file no worker builds a long last job alone
REMOTE_CHUNK = 2000
#: the first part of a build job, asked alone: a small batch whose answer is back while the
#: next part is blinded, so a worker starting a job hardly waits for the service (the workers
#: start their jobs together, and the service answers one batch at a time)
FIRST_PART = 250
#: lines the workers may build ahead of the batch being staged and sent: while a batch waits
#: for its acknowledgements, the next one's jobs keep both cores busy
AHEAD = 3 * BATCH
#: below this size, building in-process beats starting worker processes
LARGE_FILE_BYTES = 2_000_000


class RunOutcome:
    """What every file run (signals, consents) concludes: rejected lines and the exit status.

    0 when every line went through, 2 when some were rejected, 1 when the broker failed or
    rows still wait in the outbox."""

    rejected: Counter[Reason]
    broker_error: str | None
    left: int

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def exit_code(self) -> int:
        if self.broker_error or self.left:
            return 1
        return 2 if self.rejected_total else 0


@dataclass
class Summary(RunOutcome):
    input: Path
    format: str = "csv"
    read: int = 0
    new: int = 0                # written to the outbox by this run
    already: int = 0            # already in the outbox (published or waiting) — a re-run
    sent: int = 0               # acknowledged by the broker during this run
    rejected: Counter[Reason] = field(default_factory=Counter)
    left: int = 0               # still waiting in the outbox at the end
    broker_error: str | None = None
    ignored_columns: tuple[str, ...] = ()
    seconds: float = 0.0
    report: Path | None = None
    #: the signing key is not active in the local registry copy (see SignalBuilder.key_warning)
    key_warning: str | None = None

    @property
    def exit_code(self) -> int:
        code = super().exit_code
        return 1 if code == 0 and self.key_warning and self.new else code

    def lines(self) -> list[str]:
        """The French summary for the operator."""
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"Fichier {self.input.name} ({self.format.upper()}) — {self.seconds:.1f} s, "
            f"{rate:,.0f} lignes/s".replace(",", "\u202f", 1 if rate < 1000 else 2).replace("\u202f ", ", "),
            f"  lignes lues                    : {self.read}",
            f"  signalements publiés           : {self.sent}",
        ]
        if self.already:
            out.append(f"  déjà connus (relance, ignorés) : {self.already}")
        out.append(f"  lignes rejetées                : {self.rejected_total}")
        for reason, n in self.rejected.most_common():
            out.append(f"    - {reason.label} ({reason.value}) : {n}")
        out.append(f"  restant dans la boîte d'envoi  : {self.left}")
        if self.ignored_columns:
            out.append(f"  colonnes ignorées (jamais transmises) : {', '.join(self.ignored_columns)}")
        if self.report is not None and self.rejected_total:
            out.append(f"Rapport des rejets : {self.report}")
        if self.broker_error:
            out.append(f"Le courtier Kafka ne répond pas : {self.broker_error}")
        if self.left:
            out.append("Les signalements en attente partiront au prochain envoi : "
                       "help-exchange outbox flush --fund <organisme>")
        if self.key_warning:
            out.append(f"ATTENTION : {self.key_warning}.")
            out.append("  Faites enregistrer la clé par l'opérateur de l'échange (help-exchange keys register), "
                       "ou signez avec la clé en vigueur (help-exchange keys list) ; puis "
                       "`help-exchange receipts --fund <organisme>` remet en file d'envoi les refusés.")
        return out


class _Progress:
    """A rich progress bar with the rate, or nothing when stderr is not a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]publication"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[lines]} lignes · {task.fields[rate]} l/s"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task("publish", total=max(total, 1), lines=0, rate=0)
            self._bar.start()
        self._t0 = time.monotonic()

    def update(self, done_bytes: int, lines: int) -> None:
        if self._bar is not None:
            elapsed = max(time.monotonic() - self._t0, 1e-6)
            self._bar.update(self._task, completed=done_bytes, lines=lines, rate=f"{lines / elapsed:,.0f}")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


async def publish_file(settings: Settings, fund: Fund, path: Path, report_path: Path,
                       *, progress: bool = False, connect: bool = True, workers: int | None = None) -> Summary:
    """Publish ``path`` for ``fund``; rejected lines go to ``report_path``.

    ``workers``: processes that build and sign signals (Ed25519 and validation are most of
    the CPU); None = one per CPU beyond the first when the file is large, 0 = in-process."""
    t0 = time.monotonic()
    summary = Summary(input=path, report=report_path)
    extract = Extract(path)
    publisher = Publisher(settings, fund)
    remote = publisher.builder.remote_pseudonyms
    if workers is None:
        workers = min(2, max((os.cpu_count() or 1), 1)) if extract.size > LARGE_FILE_BYTES else 0
    today = today_paris()
    # What earlier runs sent long ago, before this run's rows make the table larger (none of
    # them could go: a line observed that long ago is refused).
    publisher.outbox.purge_sent(today)
    # Forked before any Kafka client or thread exists in this process.
    pool = _pool(settings, fund, workers) if workers > 0 else None
    try:
        if connect and not await publisher.connect():
            summary.broker_error = publisher.offline_reason
        bar = _Progress(extract.size, progress)
        loop = asyncio.get_running_loop()
        # Each chunk in order: the report stays in line order.
        in_flight: collections.deque[Awaitable[_Built]] = collections.deque()
        rows: list[Row] = []

        async def take_one(report: RejectReport) -> None:
            nonlocal rows
            read, built, rejected = await in_flight.popleft()
            for r in sorted(rejected, key=lambda r: r.line):
                report.write(r)
            summary.read += read
            rows.extend(built)
            if len(rows) >= BATCH:
                await _stage_and_send(publisher, rows, summary)
                rows = []
            bar.update(extract.bytes_read, summary.read)

        try:
            with RejectReport(report_path) as report:
                # Lines go unparsed to whoever builds them: parsing is per line work too.
                size = REMOTE_CHUNK if remote else CHUNK
                window = max(2 * workers, AHEAD // size)
                for chunk in _chunks(extract.raw(), size):
                    parser = extract.parser
                    assert parser is not None  # set once the header is read
                    now = dt.datetime.now(dt.UTC)
                    if pool is not None:
                        in_flight.append(_unpacked(loop.run_in_executor(
                            pool, _build_in_worker, parser, chunk, today, now, publisher.partitions)))
                        while len(in_flight) > window:
                            await take_one(report)
                    else:
                        fut: asyncio.Future[_Built] = loop.create_future()
                        fut.set_result(_build_lines(publisher.builder, parser, chunk, today, now,
                                                    publisher.partitions))
                        in_flight.append(fut)
                        await take_one(report)
                        await asyncio.sleep(0)  # let the batch in flight be sent meanwhile
                while in_flight:
                    await take_one(report)
                await _stage_and_send(publisher, rows, summary)
                await _drain(publisher, summary)
                bar.update(extract.bytes_read, summary.read)
                summary.rejected = report.counts
        finally:
            bar.stop()
        summary.key_warning = publisher.builder.key_warning
        summary.format = extract.format
        summary.ignored_columns = extract.ignored_columns
        if publisher.online and summary.broker_error is None:
            # nothing new but a previous run left rows waiting: send them too
            await _send(publisher, summary)
        summary.left = publisher.outbox.pending_count()
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        await publisher.close()
    summary.seconds = time.monotonic() - t0
    return summary


#: (lines read, not counting blank ones; rows built; lines rejected)
_Built = tuple[int, list[Row], list[Rejection]]
_worker_builder: SignalBuilder | None = None
_T = TypeVar("_T")


def _chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _build_lines(builder: SignalBuilder, parser: LineParser, lines: list[tuple[int, bytes | None]],
                 today: dt.date, now: dt.datetime, partitions: int | None) -> _Built:
    """Parse and build ``lines`` (numbered, as :meth:`Extract.raw` gives them)."""
    records: list[tuple[int, SignalInput]] = []
    rejected: list[Rejection] = []
    parse = parser.parse
    read = 0
    for number, raw in lines:
        item = parse(number, raw)
        if item is None:
            continue
        read += 1
        if isinstance(item, Rejection):
            rejected.append(item)
        else:
            records.append((number, item))
    rows, refused = _build_chunk(builder, records, today, now, partitions)
    return read, rows, rejected + refused


def _build_chunk(builder: SignalBuilder, records: Sequence[tuple[int, SignalInput]], today: dt.date,
                 now: dt.datetime, partitions: int | None) -> tuple[list[Row], list[Rejection]]:
    rows: list[Row] = []
    rejected: list[Rejection] = []
    # Scheme v2: the pseudonyms of each part in one batch to the service, the next part's
    # asked before this one is built, so the service's evaluation and the round trip overlap
    # the signing here (v1: asking is a no-op).
    parts = _parts(records)
    asked = builder.ask(rec for _, rec in parts[0]) if parts else None
    build = builder.build
    for k, part in enumerate(parts):
        ahead = builder.ask(rec for _, rec in parts[k + 1]) if k + 1 < len(parts) else None
        builder.collect(asked)
        for number, rec in part:
            try:
                rows.append(build(rec, today=today, now=now, partitions=partitions))
            except Rejected as exc:
                rejected.append(Rejection(number, exc.field, exc.reason, mask(rec.nir)))
        asked = ahead
    return rows, rejected


def _parts(lines: Sequence[_T]) -> list[Sequence[_T]]:
    """``lines`` in order, in parts of CHUNK lines after a first one of FIRST_PART."""
    head, rest = lines[:FIRST_PART], lines[FIRST_PART:]
    return [part for part in (head, *(rest[i:i + CHUNK] for i in range(0, len(rest), CHUNK))) if part]


def _init_worker(settings: Settings, fund: Fund) -> None:
    global _worker_builder
    _worker_builder = SignalBuilder(settings, fund)


# Back from the worker processes, rows and rejections travel as plain tuples: pickling
# named tuples or dataclasses cost several times more, in the publishing process, which is
# the busiest.
_PackedBuilt = tuple[int, list[tuple[str, str, bytes, bytes, "int | None", "bytes | None"]],
                     list[tuple[int, str, str, str]]]


async def _unpacked(future: asyncio.Future[_PackedBuilt]) -> _Built:
    read, rows, rejected = await future
    return (read, list(map(Row._make, rows)),
            [Rejection(line, name, Reason(reason), masked) for line, name, reason, masked in rejected])


def _build_in_worker(parser: LineParser, lines: list[tuple[int, bytes | None]], today: dt.date,
                     now: dt.datetime, partitions: int | None) -> _PackedBuilt:
    assert _worker_builder is not None
    read, rows, rejected = _build_lines(_worker_builder, parser, lines, today, now, partitions)
    return (read, [tuple(r) for r in rows],  # type: ignore[misc]
            [(r.line, r.field, r.reason.value, r.nir_masked) for r in rejected])


def _pool(settings: Settings, fund: Fund, workers: int) -> ProcessPoolExecutor:
    import multiprocessing

    SignalBuilder(settings, fund)  # fail here, clearly, if a key is missing
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_worker, initargs=(settings, fund))
    pool.submit(int).result()  # fork the workers now, while this process has no other thread
    return pool


async def _stage_and_send(publisher: Publisher, rows: list[Row], summary: Summary) -> None:
    before = publisher.staged_total
    if summary.broker_error is not None:  # the broker failed during this run: only keep
        publisher.stage(rows)
    else:
        try:
            await publisher.submit(rows)
        except BrokerError as exc:  # rows are staged, or else staged here
            summary.broker_error = exc.what
            publisher.stage(rows)
        summary.sent = publisher.sent_total
    new = publisher.staged_total - before
    summary.new += new
    summary.already += len(rows) - new


async def _drain(publisher: Publisher, summary: Summary) -> None:
    try:
        await publisher.drain()
    except BrokerError as exc:
        summary.broker_error = exc.what
    summary.sent = publisher.sent_total


async def _send(publisher: Publisher, summary: Summary) -> None:
    try:
        await publisher.flush()
    except BrokerError as exc:
        summary.broker_error = exc.what
    finally:
        summary.sent = publisher.sent_total
