"""Consumer lag, measured right on the embedded broker as on Apache Kafka.

Lag is a partition's end offset minus the consumer's committed position. The end offset
that ``ListOffsets`` (aiokafka's ``end_offsets``) returns is wrong on the embedded broker:
Tansu 0.6 answers the base offset of the partition's last record batch + 1, not the offset
after its last record (probe: 17 records acknowledged at offsets 0-16 in two batches, the
second starting at 10: ``end_offsets`` says 11). The high watermark of a *fetch* response is
right on both brokers (the same probe: 17). So a measurement fetches each partition once,
from the consumer's committed position, with a consumer of its own (no group):

- the fetch response's high watermark is the true end (and no record can lie beyond the last
  one returned: the end is also at least the last offset read + 1);
- the first record returned is the oldest one not processed: its broker timestamp gives the
  age of the backlog.

One fetch per partition and per measurement, of one record batch at most whatever the backlog:
the consumer asks for 1 KiB a partition (:data:`PROBE_FETCH_BYTES`), the broker returns one whole
batch even when it is larger than that, and only its first record is decoded; the consumer is
paused between measurements (no fetching in the background).

The rest of each batch is freed when the measurement ends (:func:`release_fetched`), not left
to the garbage collector: aiokafka's fetched batch and its record iterator refer to each other,
and the correlator freezes what survives each of its batches (services/platform/runtime.py),
so a batch left half read waited for the next full collection, minutes later: the worker's
memory grew with the time it ran (docs/architecture.md, "Memory").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.platform import metrics

log = logging.getLogger("help.lag")

#: What a measurement's fetches ask for, per partition: one batch comes back.
PROBE_FETCH_BYTES = 1024

#: The committed position of each partition a consumer holds (the next offset to process),
#: given the monitor's own consumer (to ask the broker what it needs).
Positions = Callable[[AIOKafkaConsumer], Awaitable[Mapping[TopicPartition, int]]]


@dataclass(frozen=True)
class PartitionLag:
    """One partition's measurement."""

    position: int
    #: the true end offset (the offset after the partition's last record)
    end: int
    #: broker timestamp (ms) of the oldest record not processed; None when caught up
    oldest_ms: int | None

    @property
    def lag(self) -> int:
        return max(0, self.end - self.position)

    def oldest_age_s(self, now_s: float) -> float:
        if self.lag == 0 or self.oldest_ms is None:
            return 0.0
        return max(0.0, now_s - self.oldest_ms / 1000)


async def measure(consumer: AIOKafkaConsumer, positions: Mapping[TopicPartition, int], *,
                  timeout_s: float = 5.0) -> dict[TopicPartition, PartitionLag]:
    """Fetch each partition once from its position (see the module docstring). ``consumer``
    is started, with no group; partitions the broker did not answer for in ``timeout_s`` are
    left out."""
    if not positions:
        return {}
    tps = list(positions)
    release_fetched(consumer)  # (what came back while paused: the assignment drops it)
    consumer.assign(tps)  # fresh fetch states: no high watermark from an earlier measurement
    for tp in tps:
        consumer.seek(tp, positions[tp])
    last: dict[TopicPartition, int] = {}
    first_ms: dict[TopicPartition, int] = {}
    pending = set(tps)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending and loop.time() < deadline:
        # One record each is all a measurement needs (the rest of a batch is not decoded).
        fetched = await consumer.getmany(*pending, timeout_ms=100, max_records=len(pending))
        for tp, records in fetched.items():
            wanted = [r for r in records if r.offset >= positions[tp]]
            if wanted:
                first_ms.setdefault(tp, wanted[0].timestamp)
                last[tp] = max(last.get(tp, -1), wanted[-1].offset)
        for tp in list(pending):
            high = consumer.highwater(tp)
            if high is None:
                continue
            if high <= positions[tp] or tp in first_ms:
                pending.discard(tp)
    release_fetched(consumer)
    consumer.pause(*tps)  # no fetching in the background until the next measurement
    found: dict[TopicPartition, PartitionLag] = {}
    for tp in tps:
        high = consumer.highwater(tp)
        if tp in pending or high is None:
            continue
        end = max(high, last.get(tp, -1) + 1, positions[tp])
        found[tp] = PartitionLag(positions[tp], end, first_ms.get(tp) if end > positions[tp] else None)
    return found


def release_fetched(consumer: AIOKafkaConsumer) -> None:
    """Free at once the records ``consumer`` fetched and did not hand out.

    aiokafka keeps a partition's fetched batch in a ``PartitionRecords`` whose record
    generator refers back to it (``_records_iterator``): a reference cycle, broken only when
    the last record is read. A batch dropped before that (a pause, an assignment, a seek:
    every measurement) is freed by the cyclic garbage collector alone. Closing the generator
    breaks the cycle; the batch then goes as soon as aiokafka drops it. (Private attributes
    of aiokafka, read where they are: a release that moved them is checked by
    tests/platform/test_lag_probe.py.)"""
    fetcher = getattr(consumer, "_fetcher", None)
    for result in list(getattr(fetcher, "_records", {}).values()):
        iterator = getattr(getattr(result, "_partition_records", None), "_records_iterator", None)
        if iterator is not None:
            iterator.close()


class LagMonitor:
    """Measures a consumer's lag every ``every_s`` seconds into the ``help_consumer_*`` gauges,
    and hands each measurement to ``observe`` (the correlator's stall watchdog)."""

    def __init__(self, name: str, make_consumer: Callable[[], AIOKafkaConsumer], positions: Positions,
                 *, every_s: float,
                 observe: Callable[[Mapping[TopicPartition, PartitionLag]], object] | None = None) -> None:
        self.name = name
        self._make_consumer = make_consumer
        self._positions = positions
        self.every_s = every_s
        self._observe = observe
        self._consumer: AIOKafkaConsumer | None = None
        self._shown: set[TopicPartition] = set()

    async def measure_once(self) -> dict[TopicPartition, PartitionLag]:
        """One measurement: gauges set, series of partitions no longer held removed."""
        if self._consumer is None:
            consumer = self._make_consumer()
            await consumer.start()
            self._consumer = consumer
        positions = dict(await self._positions(self._consumer))
        found = await measure(self._consumer, positions, timeout_s=max(1.0, min(10.0, self.every_s)))
        if len(found) < len(positions):
            metrics.LAG_PROBE_FAILURES.labels(self.name).inc()
        now = time.time()
        for tp, lag in found.items():
            labels = (self.name, tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(lag.lag)
            metrics.OLDEST_AGE.labels(*labels).set(lag.oldest_age_s(now))
        gone = self._shown - positions.keys()
        metrics.forget_partitions(self.name, [(tp.topic, tp.partition) for tp in gone])
        self._shown = (self._shown - gone) | found.keys()
        if self._observe is not None:
            self._observe(found)
        return found

    async def run(self) -> None:
        """Measure until cancelled; a failed measurement is logged and counted, never fatal."""
        try:
            while True:
                try:
                    await self.measure_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    metrics.LAG_PROBE_FAILURES.labels(self.name).inc()
                    log.warning("%s: lag measurement failed", self.name, exc_info=True)
                await asyncio.sleep(self.every_s)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
