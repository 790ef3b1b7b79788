"""A million in minutes: four funds' files published while the correlator and the casebook
sink run, as at night, timed from the first line read to the last situation in the casebook.

On a fresh embedded broker and casebook (SQLite): simulate Ille-et-Vilaine's month scaled to
about ``--signals`` signals (four funds' extract files, ``services.simulator``), start one
correlator worker and the casebook sink (the real ``help-exchange`` processes), then publish
the four files one after another with ``help-exchange publish`` (the producer's CLI:
pseudonymising, sealing, signing, outbox, acknowledgements). Publishing and correlating
overlap. The clock starts when the first ``publish`` starts and stops when the casebook holds
every situation at its latest version (the distinct situations on ``help.situations.v1``,
read once everything is over; the casebook is polled meanwhile and the first poll that
matched gives the time). Also printed: the producer's lines/s (its four runs end to end) and
the correlator's signals/s (first to last receipt).

``python -m bench.national --signals 100000`` for a smaller run (default 1,000,000).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import emit
from bench.month import FUNDS, prepare_month
from services.platform import kafka
from services.platform.broker import EmbeddedBroker
from services.platform.settings import Settings, load_settings
from services.platform.topics import SITUATIONS_TOPIC, receipt_topic
from tests.support.local import free_port


def data_lines(path: Path) -> int:
    with path.open("rb") as f:
        return max(0, sum(1 for _ in f) - 1)  # (the header)


class Publisher(threading.Thread):
    """The four funds' files, one after another, each with ``help-exchange publish``."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.root, self.env = root, env
        self.started_at = self.ended_at = 0.0
        self.rejected = 0
        self.failed: str | None = None

    def run(self) -> None:
        self.started_at = time.monotonic()
        for fund in FUNDS:
            rejects = self.root / f"rejects-{fund.value}.csv"
            done = subprocess.run([sys.executable, "-m", "services.app.cli", "publish", "--fund", fund.value,
                                   "--input", str(self.root / "extracts" / f"{fund.value}.csv"),
                                   "--reject-report", str(rejects)],
                                  env=self.env, capture_output=True, text=True)
            if done.returncode not in (0, 2):  # (2: some lines rejected, as the simulator means)
                self.failed = f"publish {fund.value}: exit {done.returncode}: {done.stderr[-2000:]}"
                return
            if rejects.exists():
                self.rejected += data_lines(rejects)
        self.ended_at = time.monotonic()


def stall_reports(log: Path) -> list[str]:
    """The stall watchdog's reports in the worker's log (services/platform/watchdog.py)."""
    with log.open(encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if "stalled:" in line]


def casebook_counts(db: Path) -> tuple[int, int]:
    """(situations, sum of their versions) in the casebook, (0, 0) before its tables exist."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            count, versions = conn.execute("SELECT count(*), coalesce(sum(version), 0) FROM casebook_situations"
                                           ).fetchone()
            return int(count), int(versions)
    except sqlite3.OperationalError:
        return 0, 0


class CasebookPoller(threading.Thread):
    """The casebook's counts every quarter of a second, with the time, until stopped."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.history: list[tuple[float, tuple[int, int]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.history.append((time.monotonic(), casebook_counts(self.db)))
            self.stop.wait(0.25)

    def first_at(self, counts: tuple[int, int]) -> float | None:
        return next((t for t, c in self.history if c == counts), None)


async def latest_situations(settings: Settings, bootstrap: str) -> tuple[int, int]:
    """The distinct situations on the topic at their latest version: (count, sum of versions)."""
    import json

    consumer = kafka.consumer(settings, bootstrap, SITUATIONS_TOPIC, group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    latest: dict[bytes, int | None] = {}
    empty = 0
    try:
        while empty < 10:  # (the topic is complete: the receipts of every signal came)
            batch = await consumer.getmany(timeout_ms=300, max_records=50_000)
            if not batch:
                empty += 1
                continue
            empty = 0
            for records in batch.values():
                for r in records:
                    latest[r.key] = None if r.value is None else int(json.loads(r.value)["version"])
    finally:
        await consumer.stop()
    versions = [v for v in latest.values() if v is not None]
    return len(versions), sum(versions)


async def watch(settings: Settings, bootstrap: str, db: Path, publisher: Publisher,
                workers: list[subprocess.Popen[bytes]], lines: int, timeout: float
                ) -> tuple[int, float, float]:
    """Receipts (count, first, last), until every line has a receipt or was rejected."""
    consumer = kafka.consumer(settings, bootstrap, *[receipt_topic(f) for f in FUNDS], group_id=None,
                              fetch_max_wait_ms=100)
    await consumer.start()
    seen = 0
    first = last = 0.0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if publisher.failed:
                raise SystemExit(publisher.failed)
            if any(w.poll() is not None for w in workers):
                raise SystemExit("the correlator or the casebook sink stopped: see their logs")
            if not publisher.is_alive() and seen >= lines - publisher.rejected:
                break
            batch = await consumer.getmany(timeout_ms=250, max_records=50_000)
            got = sum(len(records) for records in batch.values())
            now = time.monotonic()
            if got:
                last = now
                first = first or now
                seen += got
    finally:
        await consumer.stop()
    return seen, first, last


def run(signals: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-national-") as tmp:
        root = Path(tmp)
        base = load_settings(var_dir=root, key_dir=root / "keys", broker_port=free_port(), session_timeout_ms=6000)
        broker, broker_proc = EmbeddedBroker(base).start(detach=False)
        db = root / "casebook.db"
        # Signals in clear (HELP_SIGNAL_SEALING=accepted), as the figures were first measured.
        settings = load_settings(var_dir=root, key_dir=root / "keys", bootstrap_servers=broker.bootstrap,
                                 session_timeout_ms=6000, database_url=f"sqlite:///{db}", signal_sealing="accepted")
        workers: list[subprocess.Popen[bytes]] = []
        try:
            doc = prepare_month(settings, broker.bootstrap, root / "extracts", signals)
            lines = sum(data_lines(root / "extracts" / f"{f.value}.csv") for f in FUNDS)
            # The worker's own knobs (HELP_CORRELATOR_*, HELP_WATCHDOG_*) pass through: to measure another setting.
            env = {**{k: v for k, v in os.environ.items()
                      if not k.startswith("HELP_") or k.startswith(("HELP_CORRELATOR_", "HELP_WATCHDOG_"))},
                   "HELP_BOOTSTRAP_SERVERS": broker.bootstrap, "HELP_VAR_DIR": str(root),
                   "HELP_KEY_DIR": str(root / "keys"), "HELP_SESSION_TIMEOUT_MS": "6000",
                   "HELP_DATABASE_URL": settings.database_url, "HELP_TERRITORY": "35",
                   "HELP_SIGNAL_SEALING": "accepted"}
            for name, args in (("correlator", ["correlator"]), ("sink", ["casebook", "sink"])):
                with (root / f"{name}.log").open("wb") as log:
                    workers.append(subprocess.Popen([sys.executable, "-m", "services.app.cli", *args], env=env,
                                                    stdout=log, stderr=subprocess.STDOUT))
            time.sleep(5)  # (both join their groups: the night's services are up before the files come)
            publisher = Publisher(root, env)
            poller = CasebookPoller(db)
            poller.start()
            publisher.start()
            seen, first, last = asyncio.run(
                watch(settings, broker.bootstrap, db, publisher, workers, lines, timeout=max(600.0, lines / 300)))
            publisher.join()
            expected = asyncio.run(latest_situations(settings, broker.bootstrap))
            while poller.first_at(expected) is None and time.monotonic() < last + 300:
                time.sleep(0.25)
            poller.stop.set()
            done = poller.first_at(expected)
            stalls = stall_reports(root / "correlator.log")
            if done is None:
                raise SystemExit(f"the casebook holds {casebook_counts(db)} (situations, versions), "
                                 f"expected {expected}: see {root / 'sink.log'}")
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(timeout=30)
            broker_proc.terminate()
            broker_proc.wait(timeout=10)
    t0 = publisher.started_at
    publish_s = publisher.ended_at - t0
    return {"signals": seen, "lines": lines, "persons": doc["personnes"], "situations": expected[0],
            "total_s": done - t0, "publish_s": publish_s, "producer_lines_per_s": lines / publish_s,
            "correlator_signals_per_s": seen / max(last - first, 1e-3), "correlate_tail_s": last - publisher.ended_at,
            "casebook_tail_s": done - last, "stalls": len(stalls), "stall_lines": stalls[:5]}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.national", description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=int(os.environ.get("BENCH_NATIONAL_SIGNALS", "1000000")),
                        help="about how many signals (default: %(default)s)")
    r = run(parser.parse_args().signals)
    print(f"{r['lines']:,.0f} lignes de quatre fonds, {r['persons']:,.0f} personnes, {r['situations']:,.0f} situations")
    print(f"de la première ligne lue à la dernière situation au casebook : {r['total_s']:.1f} s "
          f"(objectif ≤ 240 s pour 1 000 000)")
    print(f"producteur : {r['producer_lines_per_s']:,.0f} lignes/s ({r['publish_s']:.1f} s pour les quatre fichiers)")
    print(f"correlator : {r['correlator_signals_per_s']:,.0f} signaux/s pendant la publication ; "
          f"dernier accusé {r['correlate_tail_s']:.1f} s après la fin de la publication, "
          f"dernière situation au casebook {r['casebook_tail_s']:.1f} s après")
    print(f"partitions signalées bloquées par le chien de garde : {r['stalls']}")
    for line in r["stall_lines"]:
        print(f"  {line}")
    emit("national", {**{k: v for k, v in r.items() if k != "stall_lines"}, "load_average": os.getloadavg()[0]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
