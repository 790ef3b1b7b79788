"""The one way to consume into the database: a tracked consumer.

On the pattern of the event-sourcing "follower": a consumer whose position is a *tracking
record* written in the same transaction as the effects of what it read. For each poll::

    with engine.begin() as conn:          # one transaction
        result = apply(conn, batch)       # the service's effects (casebook rows, ledger entries)
        save_positions(conn, name, ...)   # the next offset of each partition read

so a crash anywhere keeps both or neither, and a failure in ``apply`` commits neither.
Kafka's group offsets are never committed nor trusted: when partitions are assigned (on
start and on every rebalance) the consumer seeks each one to its stored next offset, or to
the beginning when nothing was stored yet. Effects must be idempotent (a batch applied but
not yet committed when the process dies is read again).

One assignment strategy: a consumer group named after the consumer (``name``), so several
instances split the partitions; a partition taken away waits for the batch in flight to be
committed before the group moves on (:class:`_SeekToStored`), so its next owner starts
where this one stopped.

``apply`` may *hold* a record (:meth:`Batch.hold`): it and the rest of its partition are
not applied, the partition's position stays at it, and the consumer reads it again after
a short pause (the audit sink waits so for a signal read after its receipt).

The positions live in ``tracking_offsets`` (consumer, topic, partition → next offset),
one table for every consumer of the database, migrated like every other table.

Metrics (services/platform/metrics.py), labelled by the consumer's name: each batch's time
and records; with a :meth:`TrackedConsumer.monitor`, the lag of every assigned partition
from its stored position (:mod:`services.platform.lag`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, overload

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from sqlalchemy.exc import DBAPIError

from services.errors import TransientError
from services.platform import kafka, metrics
from services.platform.lag import PROBE_FETCH_BYTES, LagMonitor
from services.platform.settings import Settings

log = logging.getLogger("help_exchange.platform.tracking")

NO_HEADERS: Mapping[str, bytes] = MappingProxyType({})

#: A topic and a partition.
Partition = tuple[str, int]

metadata = sa.MetaData()

#: Tracking records: the next offset to read, per consumer, topic and partition, written in
#: the transaction of the effects of everything before it.
offsets = sa.Table(
    "tracking_offsets",
    metadata,
    sa.Column("consumer", sa.String(64), primary_key=True),
    sa.Column("topic", sa.String(128), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
)


class Record(NamedTuple):
    """A consumed record. (A named tuple, not a frozen dataclass: the correlator makes
    several per signal, and a named tuple is cheaper to build.)"""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    #: None: a tombstone (on the compacted ``help.situations.v1``: forget ``key``)
    value: bytes | None
    headers: Mapping[str, bytes] = NO_HEADERS


def record_of(tp: TopicPartition, message: Any) -> Record:
    """A :class:`Record` from one of aiokafka's ``ConsumerRecord``."""
    headers = message.headers
    return Record(tp.topic, tp.partition, message.offset, message.timestamp or 0, message.key,
                  message.value, {k: bytes(v) for k, v in headers} if headers else NO_HEADERS)


class Batch(Sequence[Record]):
    """The records of one poll, as ``apply`` receives them."""

    def __init__(self, records: Sequence[Record]) -> None:
        self._records = records
        #: partition -> offset of the first record held (read again from there)
        self.held: dict[Partition, int] = {}

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Record]: ...
    def __getitem__(self, index: int | slice) -> Record | Sequence[Record]:
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records)

    def hold(self, record: Record) -> None:
        """Leave ``record`` and the rest of its partition for a later poll: ``apply`` must
        not apply them (:meth:`is_held` says which)."""
        key = (record.topic, record.partition)
        self.held[key] = min(self.held.get(key, record.offset), record.offset)

    def is_held(self, record: Record) -> bool:
        first = self.held.get((record.topic, record.partition))
        return first is not None and record.offset >= first

    def next_offsets(self) -> dict[Partition, int]:
        """Per partition read, the offset to read next: after its last record, or at its
        first held record."""
        positions: dict[Partition, int] = {}
        for r in self._records:
            key = (r.topic, r.partition)
            if positions.get(key, -1) <= r.offset:
                positions[key] = r.offset + 1
        positions.update(self.held)
        return positions


def load_positions(conn: sa.Connection, consumer: str) -> dict[Partition, int]:
    """The stored next offset of each partition ``consumer`` has read."""
    c = offsets.c
    return {(topic, int(partition)): int(offset) for topic, partition, offset in conn.execute(
        sa.select(c.topic, c.partition, c.next_offset).where(c.consumer == consumer))}


def save_positions(conn: sa.Connection, consumer: str, positions: Mapping[Partition, int]) -> None:
    """Store ``positions`` in the caller's transaction; a position never moves back (a
    batch re-read after a crash stores what is already there)."""
    if not positions:
        return
    known = load_positions(conn, consumer)
    new = [{"consumer": consumer, "topic": topic, "partition": partition, "next_offset": offset}
           for (topic, partition), offset in positions.items() if (topic, partition) not in known]
    moved = [{"b_topic": topic, "b_partition": partition, "b_offset": offset}
             for (topic, partition), offset in positions.items()
             if (topic, partition) in known and known[(topic, partition)] < offset]
    if new:
        conn.execute(sa.insert(offsets), new)
    if moved:
        c = offsets.c
        conn.execute(sa.update(offsets)
                     .where(c.consumer == consumer, c.topic == sa.bindparam("b_topic"),
                            c.partition == sa.bindparam("b_partition"))
                     .values(next_offset=sa.bindparam("b_offset")), moved)


R = TypeVar("R")

#: What a service does with a batch, inside the transaction that stores the positions.
Apply = Callable[[sa.Connection, Batch], R]


@dataclass
class Processed(Generic[R]):
    """One committed batch: what ``apply`` returned and the partitions it held."""

    result: R
    records: int
    held: dict[Partition, int] = field(default_factory=dict)


class Source(Protocol):
    """What the tracked consumer uses of :class:`aiokafka.AIOKafkaConsumer` (a fake in the
    unit tests)."""

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Any]]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool: ...


class TrackedConsumer(Generic[R]):
    """Reads ``topics`` as consumer ``name`` and applies each poll with ``apply``, its
    positions stored with its effects."""

    def __init__(self, engine: sa.Engine, name: str, topics: Sequence[str], apply: Apply[R],
                 *, batch_max: int = 2000) -> None:
        self.engine = engine
        self.name = name
        self.topics = list(topics)
        self.apply = apply
        self.batch_max = batch_max
        #: held while a batch is applied: a revocation waits for it
        self._busy = asyncio.Lock()
        self._assigned_at: float | None = None
        #: the partitions the group gave this consumer (for the lag)
        self.assignment: set[TopicPartition] = set()

    def process(self, records: Sequence[Record]) -> Processed[R]:
        """Apply ``records`` and store the positions after them, in one transaction; a
        database error is a :class:`TransientError` and commits nothing."""
        batch = Batch(records)
        try:
            with self.engine.begin() as conn:
                result = self.apply(conn, batch)
                save_positions(conn, self.name, batch.next_offsets())
        except DBAPIError as exc:
            raise TransientError(f"{self.name}: the database refused a batch: {exc.orig}",
                                 f"check that the database answers, then restart {self.name}") from exc
        return Processed(result, len(records), dict(batch.held))

    def kafka_source(self, settings: Settings, bootstrap: str) -> AIOKafkaConsumer:
        """The Kafka consumer to :meth:`run` on: group ``name``, polls of ``batch_max``."""
        return kafka.consumer(settings, bootstrap, group_id=self.name,
                              max_poll_records=self.batch_max, fetch_max_wait_ms=200)

    def positions(self) -> dict[Partition, int]:
        with self.engine.connect() as conn:
            return load_positions(conn, self.name)

    def monitor(self, settings: Settings, bootstrap: str) -> LagMonitor:
        """The lag of the assigned partitions, from their stored positions, every
        ``HELP_LAG_PROBE_EVERY_S`` (hand it to :meth:`run`)."""

        def probe() -> AIOKafkaConsumer:
            return kafka.consumer(settings, bootstrap, client_id=f"{self.name}-lag-probe",
                                  max_partition_fetch_bytes=PROBE_FETCH_BYTES, fetch_max_wait_ms=100)

        async def stored(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
            assigned = set(self.assignment)
            known = await asyncio.to_thread(self.positions)
            found = {tp: known[(tp.topic, tp.partition)] for tp in assigned if (tp.topic, tp.partition) in known}
            fresh = [tp for tp in assigned if tp not in found]  # nothing stored: read from the start
            if fresh:
                found.update(await consumer.beginning_offsets(fresh))
            return found

        return LagMonitor(self.name, probe, stored, every_s=settings.lag_probe_every_s)

    async def run(self, source: Source, *, stop: asyncio.Event | None = None,
                  until_idle: float | None = None,
                  after_poll: Callable[[Processed[R] | None], Awaitable[None]] | None = None,
                  monitor: LagMonitor | None = None) -> None:
        """Consume until ``stop`` is set, or until ``until_idle`` seconds pass without a
        record (counted from the last record, or from the last assignment). ``stop`` (set on
        SIGTERM or SIGINT: :func:`services.platform.stopping.stop_on_signals`) lets the batch
        being applied commit and its ``after_poll`` run; nothing fetched after it is applied. ``after_poll``
        is awaited after each commit with what was processed, and after each empty fetch
        (caught up) with None. ``monitor`` measures the lag meanwhile."""
        source.subscribe(self.topics, listener=_SeekToStored(self, source))
        await source.start()
        idle_since = time.monotonic()
        batch_seconds, batch_records = metrics.BATCH_SECONDS.labels(self.name), metrics.RECORDS.labels(self.name)
        measuring = asyncio.create_task(monitor.run()) if monitor is not None else None
        try:
            while stop is None or not stop.is_set():
                fetched = await source.getmany(timeout_ms=300, max_records=self.batch_max)
                if stop is not None and stop.is_set():
                    break  # asked to stop during the fetch: not applied, read again at the next start
                records = [record_of(tp, m) for tp, messages in fetched.items() for m in messages]
                if records:
                    started = time.perf_counter()
                    async with self._busy:
                        done = await asyncio.to_thread(self.process, records)
                    batch_seconds.observe(time.perf_counter() - started)
                    batch_records.inc(len(records))
                    for (topic, partition), offset in done.held.items():
                        source.seek(TopicPartition(topic, partition), offset)  # read it again
                    if done.held:
                        await asyncio.sleep(0.05)
                    idle_since = time.monotonic()
                    if after_poll is not None:
                        await after_poll(done)
                    continue
                if after_poll is not None:
                    await after_poll(None)
                if self._assigned_at is not None:
                    idle_since = max(idle_since, self._assigned_at)
                if until_idle is not None and time.monotonic() - idle_since >= until_idle:
                    break
        finally:
            if measuring is not None:
                measuring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await measuring
            await source.stop()

    async def _assigned(self, source: Source, assigned: Sequence[TopicPartition]) -> None:
        stored = await asyncio.to_thread(self.positions)
        for tp in assigned:
            position = stored.get((tp.topic, tp.partition))
            if position is None:
                await source.seek_to_beginning(tp)
            else:
                source.seek(tp, position)
        self._assigned_at = time.monotonic()
        self.assignment = set(assigned)
        log.info("%s: %d partition(s) assigned, resumed at their stored positions",
                 self.name, len(assigned))

    async def _revoked(self) -> None:
        async with self._busy:  # the batch in flight commits first
            self.assignment = set()


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, tracker: TrackedConsumer[Any], source: Source) -> None:
        self.tracker = tracker
        self.source = source

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.tracker._revoked()

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.tracker._assigned(self.source, assigned)
