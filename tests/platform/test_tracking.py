"""The tracked consumer (services/platform/tracking.py) against a fake Kafka consumer and a
real SQLite file: positions and effects commit together or not at all; a restart and a
rebalance resume at the stored positions; a held record is read again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import TopicPartition

from services.errors import TransientError
from services.platform.db import open_engine
from services.platform.tracking import (
    Batch,
    Processed,
    Record,
    TrackedConsumer,
    load_positions,
    save_positions,
)
from tests.support.fake_kafka import FakeSource, Message

TOPIC = "help.test.v1"
effects = sa.Table("test_effects", sa.MetaData(),
                   sa.Column("topic", sa.String(64), primary_key=True),
                   sa.Column("partition", sa.Integer, primary_key=True),
                   sa.Column("offset", sa.BigInteger, primary_key=True))


def _log(partitions: int = 2, per_partition: int = 10) -> dict[TopicPartition, list[Message]]:
    return {TopicPartition(TOPIC, p): [Message(o, f"{p}:{o}".encode()) for o in range(per_partition)]
            for p in range(partitions)}


def _record_effects(conn: sa.Connection, batch: Batch) -> int:
    rows = [{"topic": r.topic, "partition": r.partition, "offset": r.offset} for r in batch]
    conn.execute(sa.insert(effects), rows)
    return len(rows)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    effects.create(eng)
    yield eng
    eng.dispose()


def _effects(engine: sa.Engine) -> set[tuple[str, int, int]]:
    with engine.connect() as conn:
        return {(t, p, o) for t, p, o in conn.execute(sa.select(effects))}


def _positions(engine: sa.Engine, name: str = "c") -> dict[tuple[str, int], int]:
    with engine.connect() as conn:
        return load_positions(conn, name)


def _records(partition: int, offsets: range) -> list[Record]:
    return [Record(TOPIC, partition, o, 0, None, b"x") for o in offsets]


def test_effects_and_positions_commit_together(engine: sa.Engine) -> None:
    tracker = TrackedConsumer(engine, "c", [TOPIC], _record_effects)
    done = tracker.process(_records(0, range(0, 5)) + _records(1, range(3, 4)))
    assert done.result == 6 and done.records == 6 and done.held == {}
    assert _positions(engine) == {(TOPIC, 0): 5, (TOPIC, 1): 4}  # the next offset to read
    assert len(_effects(engine)) == 6


def test_a_failure_in_apply_commits_neither(engine: sa.Engine) -> None:
    def fails(conn: sa.Connection, batch: Batch) -> int:
        _record_effects(conn, batch)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        TrackedConsumer(engine, "c", [TOPIC], fails).process(_records(0, range(3)))
    assert _effects(engine) == set() and _positions(engine) == {}


def test_a_database_error_is_transient_and_commits_neither(engine: sa.Engine) -> None:
    TrackedConsumer(engine, "c", [TOPIC], _record_effects).process(_records(0, range(2)))
    # offset 1 again, with 2: the primary key refuses the batch
    with pytest.raises(TransientError) as caught:
        TrackedConsumer(engine, "c", [TOPIC], lambda conn, batch: _record_effects(conn, batch)) \
            .process(_records(0, range(1, 3)))
    assert "restart c" in caught.value.hint
    assert _effects(engine) == {(TOPIC, 0, 0), (TOPIC, 0, 1)}
    assert _positions(engine) == {(TOPIC, 0): 2}


def test_positions_never_move_back(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        save_positions(conn, "c", {(TOPIC, 0): 7})
        save_positions(conn, "c", {(TOPIC, 0): 4, (TOPIC, 1): 2})  # a re-read after a crash
    assert _positions(engine) == {(TOPIC, 0): 7, (TOPIC, 1): 2}
    assert _positions(engine, "other") == {}


def test_a_held_record_stays_the_position_of_its_partition(engine: sa.Engine) -> None:
    def hold_offset_3(conn: sa.Connection, batch: Batch) -> int:
        applied = []
        for r in batch:
            if r.partition == 0 and r.offset == 3:
                batch.hold(r)
            if not batch.is_held(r):
                applied.append(r)
        return _record_effects(conn, Batch(applied))

    done = TrackedConsumer(engine, "c", [TOPIC], hold_offset_3).process(
        _records(0, range(6)) + _records(1, range(2)))
    assert done.held == {(TOPIC, 0): 3}
    assert _positions(engine) == {(TOPIC, 0): 3, (TOPIC, 1): 2}
    assert {o for _, p, o in _effects(engine) if p == 0} == {0, 1, 2}


async def _run_until(tracker: TrackedConsumer[int], source: FakeSource, engine: sa.Engine,
                     count: int) -> None:
    stop = asyncio.Event()

    async def after_poll(done: Processed[int] | None) -> None:
        if len(_effects(engine)) >= count:
            stop.set()

    await asyncio.wait_for(tracker.run(source, stop=stop, after_poll=after_poll), 10)


async def test_a_restart_resumes_at_the_stored_positions(engine: sa.Engine) -> None:
    log = _log()
    first = FakeSource(log)
    await _run_until(TrackedConsumer(engine, "c", [TOPIC], _record_effects, batch_max=3),
                     first, engine, 5)
    assert first.started and first.stopped
    assert all(offset == 0 for _, offset in first.seeks)  # nothing stored: from the beginning
    stored = _positions(engine)
    assert sum(stored.values()) == len(_effects(engine)) < 20

    second = FakeSource(log)  # a new process: the source knows nothing of the first one
    await _run_until(TrackedConsumer(engine, "c", [TOPIC], _record_effects, batch_max=3),
                     second, engine, 20)
    # at the stored position, or at the beginning for a partition never read
    assert {(tp.topic, tp.partition): offset for tp, offset in second.seeks} == \
        {(TOPIC, p): stored.get((TOPIC, p), 0) for p in range(2)}
    # every record once: a record read twice would have failed the primary key
    assert len(_effects(engine)) == 20
    assert _positions(engine) == {(TOPIC, 0): 10, (TOPIC, 1): 10}


async def test_a_rebalance_resumes_the_new_partitions_at_their_stored_positions(
        engine: sa.Engine) -> None:
    log = _log(partitions=3)
    p0, p1, p2 = (TopicPartition(TOPIC, p) for p in range(3))
    with engine.begin() as conn:  # another member had read p2 up to 6
        save_positions(conn, "c", {(TOPIC, 2): 6})
        conn.execute(sa.insert(effects), [{"topic": TOPIC, "partition": 2, "offset": o}
                                          for o in range(6)])
    source = FakeSource(log, assignment=[p0])
    tracker = TrackedConsumer(engine, "c", [TOPIC], _record_effects, batch_max=4)
    stop = asyncio.Event()
    rebalanced = False

    async def after_poll(done: Processed[int] | None) -> None:
        nonlocal rebalanced
        if not rebalanced and _positions(engine).get((TOPIC, 0)) == 4:
            rebalanced = True
            source.seeks.clear()
            await source.rebalance([p0, p1, p2])  # a member left: this one takes everything
        if len(_effects(engine)) >= 30:
            stop.set()

    await asyncio.wait_for(tracker.run(source, stop=stop, after_poll=after_poll), 10)
    assert dict(source.seeks[:3]) == {p0: 4, p1: 0, p2: 6}
    assert len(_effects(engine)) == 30  # none twice (primary key), none lost
    assert _positions(engine) == {(TOPIC, 0): 10, (TOPIC, 1): 10, (TOPIC, 2): 10}


async def test_a_revocation_waits_for_the_batch_in_flight(engine: sa.Engine) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(conn: sa.Connection, batch: Batch) -> int:
        loop.call_soon_threadsafe(entered.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return _record_effects(conn, batch)

    source = FakeSource(_log(partitions=1, per_partition=3))
    tracker = TrackedConsumer(engine, "c", [TOPIC], slow)
    stop = asyncio.Event()
    task = asyncio.create_task(tracker.run(source, stop=stop))
    await asyncio.wait_for(entered.wait(), 5)
    revoked = asyncio.create_task(tracker._revoked())
    await asyncio.sleep(0.1)
    assert not revoked.done()  # the group waits: the batch is not committed yet
    release.set()
    await asyncio.wait_for(revoked, 5)
    assert _positions(engine) == {(TOPIC, 0): 3}  # committed before the partition moves
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_until_idle_stops_once_caught_up(engine: sa.Engine) -> None:
    source = FakeSource(_log(partitions=1, per_partition=4))
    tracker = TrackedConsumer(engine, "c", [TOPIC], _record_effects)
    polls: list[bool] = []

    async def after_poll(done: Processed[int] | None) -> None:
        polls.append(done is not None)

    await asyncio.wait_for(tracker.run(source, until_idle=0.1, after_poll=after_poll), 5)
    assert polls[0] and not polls[-1] and source.stopped
    assert _positions(engine) == {(TOPIC, 0): 4}


def test_records_keep_key_value_headers_and_time() -> None:
    from services.platform.tracking import record_of

    message = Message(5, b"v", key=b"k", headers=(("origin", b"purge"),))
    r = record_of(TopicPartition(TOPIC, 1), message)
    assert r == Record(TOPIC, 1, 5, message.timestamp, b"k", b"v", {"origin": b"purge"})
    bare = record_of(TopicPartition(TOPIC, 1), Message(6, b"w"))
    assert dict(bare.headers) == {} and bare.key is None


async def test_a_stop_lets_the_batch_in_flight_commit_and_applies_nothing_after(engine: sa.Engine) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    applied: list[int] = []

    def slow(conn: sa.Connection, batch: Batch) -> int:
        loop.call_soon_threadsafe(entered.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        applied.append(len(batch))
        return _record_effects(conn, batch)

    source = FakeSource(_log(partitions=1, per_partition=9))
    tracker = TrackedConsumer(engine, "c", [TOPIC], slow, batch_max=3)
    stop = asyncio.Event()
    after: list[Processed[int] | None] = []

    async def after_poll(done: Processed[int] | None) -> None:
        after.append(done)

    task = asyncio.create_task(tracker.run(source, stop=stop, after_poll=after_poll))
    await asyncio.wait_for(entered.wait(), 5)
    stop.set()  # as the signal handler does, during the first batch
    await asyncio.sleep(0.1)
    assert not task.done()  # the batch in flight is not abandoned
    release.set()
    await asyncio.wait_for(task, 5)
    assert applied == [3] and _positions(engine) == {(TOPIC, 0): 3}  # that batch, whole; no other
    assert len(after) == 1 and after[0] is not None and after[0].records == 3
    assert source.stopped


async def test_records_fetched_as_the_stop_comes_are_not_applied(engine: sa.Engine) -> None:
    source = FakeSource(_log(partitions=1, per_partition=9))
    tracker = TrackedConsumer(engine, "c", [TOPIC], _record_effects, batch_max=3)
    stop = asyncio.Event()
    fetch = source.getmany
    calls = 0

    async def getmany(*tps: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        nonlocal calls
        calls += 1
        fetched = await fetch(*tps, timeout_ms=timeout_ms, max_records=max_records)
        if calls == 2:
            stop.set()  # the signal comes while the second fetch waits
        return fetched

    source.getmany = getmany  # type: ignore[method-assign]
    await asyncio.wait_for(tracker.run(source, stop=stop), 5)
    assert calls == 2 and _positions(engine) == {(TOPIC, 0): 3} and len(_effects(engine)) == 3
