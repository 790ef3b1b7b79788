"""The worker's outputs on the broker: one record batch per topic partition, acknowledged.

Built with aiokafka's ``create_batch``/``send_batch``: a future per batch instead of a
future, a partitioner call and an accumulator append per record (measured here, a third of
the worker's time per record it sends). A record whose partition aiokafka must choose (the
topic's metadata not known yet) is sent on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from services.correlator.engine import Output
from services.correlator.faust_seam import aiokafka_producer, producer_metadata
from services.platform.partitioning import murmur2


class KeyPartitioner:
    """aiokafka's default partitioner (murmur2 of the key over the topic's partitions), with
    the engine's faster murmur2 (equal to Kafka's, see tests/correlator/test_fast_paths.py);
    ``None`` (aiokafka decides) when the topic's partitions are not yet known or not 0..n-1."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.metadata = producer_metadata(producer)
        self.counts: dict[str, int | None] = {}

    def __call__(self, topic: str, key: bytes | None) -> int | None:
        if key is None:
            return None
        if topic not in self.counts:
            parts = self.metadata.partitions_for_topic(topic)
            self.counts[topic] = len(parts) if parts and parts == set(range(len(parts))) else None
        n = self.counts[topic]
        return None if n is None else (murmur2(key) & 0x7FFFFFFF) % n


#: Per topic partition, the offset after the last record a call acknowledged there.
NextOffsets = dict[tuple[str, int], int]


async def send_batches(producer: Any, outputs: Sequence[Output]) -> NextOffsets:
    """Send ``outputs`` with Faust's ``producer`` and wait until the broker has acknowledged
    every one; within a topic partition, in the outputs' order. Returns, per topic partition
    given by the outputs, the offset after the last record acknowledged (a record batch's
    offsets follow each other from the base offset its acknowledgement carries)."""
    if not outputs:
        return {}
    aio = aiokafka_producer(producer)
    partition_of = KeyPartitioner(aio)
    groups: dict[tuple[str, int], list[Output]] = {}
    pending = []
    counted: list[tuple[tuple[str, int], int]] = []  # (topic partition, records) of pending[i]
    for out in outputs:
        partition = out.partition if out.partition is not None else partition_of(out.topic, out.key)
        if partition is None:
            pending.append(await aio.send(out.topic, out.value, key=out.key, timestamp_ms=out.timestamp_ms,
                                          headers=list(out.headers) or None))
            counted.append(((out.topic, -1), 0))
        else:
            groups.setdefault((out.topic, partition), []).append(out)
    for (topic, partition), records in groups.items():
        builder = aio.create_batch()
        for out in records:
            headers = list(out.headers)
            if builder.append(key=out.key, value=out.value, timestamp=out.timestamp_ms,
                              headers=headers) is not None:
                continue
            if builder.record_count():  # full: off it goes (closed), and a new one
                counted.append(((topic, partition), builder.record_count()))
                pending.append(await aio.send_batch(builder, topic, partition=partition))
                builder = aio.create_batch()
                if builder.append(key=out.key, value=out.value, timestamp=out.timestamp_ms,
                                  headers=headers) is not None:
                    continue
            # Larger than a batch can hold: on its own (aiokafka sizes a batch for it).
            counted.append(((topic, partition), 1))
            pending.append(await aio.send(topic, out.value, key=out.key, partition=partition,
                                          timestamp_ms=out.timestamp_ms, headers=headers or None))
            builder = aio.create_batch()
        if builder.record_count():
            builder.close()  # complete: producer.send() must not add to it
            counted.append(((topic, partition), builder.record_count()))
            pending.append(await aio.send_batch(builder, topic, partition=partition))
    acks = await asyncio.gather(*pending)
    after: NextOffsets = {}
    for (tp, count), ack in zip(counted, acks, strict=True):
        if count and ack is not None:
            after[tp] = max(after.get(tp, 0), ack.offset + count)
    return after


async def send_one(producer: Any, topic: str, key: bytes, value: bytes | None, partition: int) -> int:
    """Send one record with Faust's ``producer``; the offset the broker gave it, once acknowledged."""
    future = await producer.send(topic, key, value, partition, None, None)
    return int((await future).offset)
