"""kill -9 the casebook sink at random points while situation events stream in; the end state
must equal what was published: every situation at its latest version, none twice, case
numbers allocated once each (no gap, no double). Shared by the CI test and the soak test."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from services.casebook import tables as t
from services.core.messages import SituationEvent, to_wire
from services.platform.topics import SITUATIONS_TOPIC
from tests.support import situations as F
from tests.support.processes import broker, kill9, settings_for, start_service, terminate

MONTH_START = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


@dataclass
class CrashReport:
    situations: int
    events: int
    redelivered: int
    kills: int
    killed_with_rows: list[int]
    seconds: float

    def lines(self) -> list[str]:
        return [f"sink crash test: {self.situations} situations, {self.events} events published "
                f"(+{self.redelivered} redelivered copies), {self.kills} kill -9 in {self.seconds:.0f} s",
                f"  rows in the casebook at each kill: {self.killed_with_rows}"]


def make_events(n_situations: int, rng: random.Random) -> list[SituationEvent]:
    """Situations with 1-4 versions each, in publication order (each situation's versions in
    order, situations interleaved), territories 35 and 61, priorities changing with versions."""
    per: list[list[SituationEvent]] = []
    for n in range(n_situations):
        versions = rng.randint(1, 4)
        territory = "35" if n % 3 else "61"
        funds = rng.choice([("caf", "urssaf"), ("cpam", "carsat"), ("caf", "cpam"), ("urssaf", "carsat")])
        evs = []
        for v in range(1, versions + 1):
            occurred = MONTH_START + dt.timedelta(hours=n % 200, minutes=v)
            evs.append(F.situation(10_000 + n, version=v, territory=territory, funds=funds, occurred_at=occurred,
                                   priority=("vert", "orange", "rouge")[min(v - 1, 2)]))
        per.append(evs)
    out: list[SituationEvent] = []
    while any(per):
        for evs in per:
            if evs and rng.random() < 0.5:
                out.append(evs.pop(0))
    return out


def db_state(url: str) -> dict[str, tuple[int, str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {sid: (v, case, prio) for sid, v, case, prio in conn.execute(
                sa.select(t.situations.c.situation_id, t.situations.c.version, t.situations.c.case_number,
                          t.situations.c.priority))}
    except sa.exc.OperationalError:
        return {}
    finally:
        engine.dispose()


async def _publish(bootstrap: str, events: list[bytes], keys: list[bytes], stop_at: asyncio.Event,
                   pause: float, hold_at: int = 0, resume: asyncio.Event | None = None) -> None:
    """Publish ``events`` in tens; once ``hold_at`` are out, wait for ``resume`` (the first
    stop has landed) before the rest."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        i = 0
        while i < len(events):
            if resume is not None and i >= hold_at:
                await resume.wait()
            size = 10
            futures = [await producer.send(SITUATIONS_TOPIC, events[j], key=keys[j])
                       for j in range(i, min(i + size, len(events)))]
            await asyncio.gather(*futures)
            i += size
            await asyncio.sleep(pause)
    finally:
        await producer.stop()
        stop_at.set()


def sigterm(proc: subprocess.Popen[bytes], log: Path) -> bool:
    """SIGTERM the process and wait: it must drain and exit 0; True if it was alive."""
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGTERM)
    code = proc.wait(timeout=40)  # within HELP_DRAIN_TIMEOUT_S (30 s by default)
    assert code == 0, (code, log.read_text()[-3000:])
    return True


def _starts(log: Path) -> int:
    """How many times the sink said it started consuming, in its log."""
    return log.read_text(errors="replace").count("casebook sink reading from") if log.exists() else 0


async def run_sink_crashes(tmp: Path, *, situations: int, kills: int, seed: int,
                           stop: str = "kill -9") -> CrashReport:
    """``stop``: how the sink is stopped each time, ``kill -9`` or ``SIGTERM`` (then it must
    exit 0, after committing its batch in flight)."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    events = make_events(situations, rng)
    # At-least-once upstream: some events arrive twice (a correlator redelivery).
    copies = rng.sample(range(len(events)), k=len(events) // 10)
    stream = list(events)
    for i in sorted(copies, reverse=True):
        stream.insert(i + 1, events[i])
    wires = [bytes(to_wire(e)) for e in stream]
    keys = [e.situation_id.encode() for e in stream]
    latest: dict[str, SituationEvent] = {}
    for e in events:
        if e.situation_id not in latest or e.version > latest[e.situation_id].version:
            latest[e.situation_id] = e

    with broker(tmp / "broker") as b:
        settings = settings_for(tmp / "var", b.listener, session_timeout_ms=3000)
        done = asyncio.Event()
        # Spread the stream over about the time of the kills (≈ 3 s a restart).
        pause = min(0.25, 3.0 * kills / max(1, len(wires) / 10))
        publisher: asyncio.Task[None] | None = None
        first_stop = asyncio.Event()
        killed_with_rows: list[int] = []
        n_kills = 0
        log = tmp / "sink.log"
        # Kill at random points while events stream in, and more after the stream ends
        # (then the kills land in the catch-up), until `kills` kills are done.
        while n_kills < kills:
            started = _starts(log)
            proc = start_service(settings, log, "casebook", "sink", "--batch", str(rng.choice([7, 50, 500])))
            # From the moment it consumes: on a loaded machine the command alone takes seconds
            # to start, and kills timed from its launch all landed before its first batch.
            deadline = time.monotonic() + 60
            while _starts(log) == started and proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if publisher is None:  # the stream starts once the first sink consumes
                publisher = asyncio.create_task(_publish(b.listener, wires, keys, done, pause,
                                                         hold_at=len(wires) // 2, resume=first_stop))
                # The first stop lands mid-stream whatever the machine's load: once the sink has
                # applied rows from the first half, with the second half held back until then.
                # (Timed stops alone all landed before the first batch, or after the stream.)
                deadline = time.monotonic() + 120
                while not db_state(settings.database_url) and proc.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(rng.uniform(0.0, 0.3))
            else:
                await asyncio.sleep(rng.uniform(0.5, 4.0))
            if (kill9(proc) if stop == "kill -9" else sigterm(proc, log)):
                n_kills += 1
                killed_with_rows.append(len(db_state(settings.database_url)))
                first_stop.set()
            else:
                raise AssertionError(f"the sink stopped by itself: {log.read_text()[-3000:]}")
        assert publisher is not None
        await publisher
        proc = start_service(settings, log, "casebook", "sink")
        try:
            deadline = time.monotonic() + 90
            expected = {sid: e.version for sid, e in latest.items()}
            while True:
                state = db_state(settings.database_url)
                if {sid: v for sid, (v, _, _) in state.items()} == expected:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"casebook never caught up: {len(state)}/{len(expected)} rows; "
                                         f"{log.read_text()[-3000:]}")
                await asyncio.sleep(0.5)
        finally:
            terminate(proc)
        # The end state equals what was published.
        state = db_state(settings.database_url)
        assert set(state) == set(latest), "situations lost or invented"
        for sid, e in latest.items():
            assert state[sid][0] == e.version and state[sid][2] == e.priority.value, sid
        numbers = [case for _, case, _ in state.values()]
        assert len(numbers) == len(set(numbers)), "a case number was given twice"
        engine = sa.create_engine(settings.database_url)
        try:
            with engine.connect() as conn:
                seqs = {(terr, ym): last for terr, ym, last in conn.execute(sa.select(
                    t.case_sequences.c.territory, t.case_sequences.c.year_month, t.case_sequences.c.last_value))}
        finally:
            engine.dispose()
        per_month: dict[tuple[str, str], list[int]] = {}
        for case in numbers:
            terr, year, month, seq = case.split("-")
            per_month.setdefault((terr, f"{year}-{month}"), []).append(int(seq))
        for key, seqs_seen in per_month.items():
            # Allocated exactly once each: 1..n with no gap (a gap = a number burnt twice).
            assert sorted(seqs_seen) == list(range(1, len(seqs_seen) + 1)), key
            assert seqs[key] == len(seqs_seen), key
    return CrashReport(len(latest), len(events), len(copies), n_kills, killed_with_rows, time.monotonic() - t0)
