"""The lag probe leaves no fetched batch to the garbage collector: what a measurement fetched
and did not read is released when it ends. (aiokafka's fetched batch and its record iterator
refer to each other; the correlator freezes what survives each batch, so a batch left half
read stayed resident until the next full collection and the worker's memory grew with the
time it ran: docs/architecture.md, "Memory".)"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.platform.lag import PROBE_FETCH_BYTES, measure

pytestmark = pytest.mark.integration


async def test_a_measurement_ends_with_its_unread_batches_released(private_bootstrap: str) -> None:
    topic = f"help.test.probe.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=private_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=private_bootstrap, linger_ms=50)
    await producer.start()
    try:  # one batch of many records per partition: a measurement reads only the first
        for p in (0, 1):
            await asyncio.gather(*[await producer.send(topic, b"v" * 100, partition=p) for _ in range(200)])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=private_bootstrap, max_partition_fetch_bytes=PROBE_FETCH_BYTES)
    await consumer.start()
    try:
        positions = {TopicPartition(topic, p): 0 for p in (0, 1)}
        for _ in range(2):
            found = await measure(consumer, positions)
            assert sorted(m.lag for m in found.values()) == [200, 200]
            # aiokafka's private state, read here on purpose: if it moved, the release is void.
            batches = [r._partition_records for r in consumer._fetcher._records.values()
                       if getattr(r, "_partition_records", None) is not None]
            assert batches, "the measurement left no fetched batch to look at"
            # A closed record iterator holds no frame: no cycle back to its batch.
            assert all(b._records_iterator is None or b._records_iterator.gi_frame is None for b in batches)
    finally:
        await consumer.stop()
