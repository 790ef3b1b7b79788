"""The tracked consumer's lag on a real embedded broker: from the positions stored with its
effects to the partitions' true end offsets (the broker's ListOffsets is short on multi-record
batches), and its batch metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.platform import metrics
from services.platform.db import open_engine
from services.platform.settings import Settings, load_settings
from services.platform.tracking import Batch, TrackedConsumer

pytestmark = pytest.mark.integration

TOPIC = "help.test.lag.v1"
NAME = "lag-tracked"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield eng
    eng.dispose()


@pytest.fixture
def own_settings(tmp_path: Path, private_bootstrap: str) -> Settings:
    return load_settings(bootstrap_servers=private_bootstrap, var_dir=tmp_path / "var", lag_probe_every_s=0.5)


async def _produce(bootstrap: str, partition: int, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(TOPIC, b"v", partition=partition) for _ in range(count)])
    finally:
        await producer.stop()


def _sample(name: str, partition: int) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, {"consumer": NAME, "topic": TOPIC, "partition": str(partition)})


async def test_lag_counts_from_the_stored_positions(own_settings: Settings, engine: sa.Engine) -> None:
    bootstrap = own_settings.bootstrap_servers or ""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, 2, 1)])
    finally:
        await admin.close()
    await _produce(bootstrap, 0, 10)
    await _produce(bootstrap, 1, 6)

    def apply(conn: sa.Connection, batch: Batch) -> int:
        for record in batch:  # partition 0 stops at offset 10: held, read again and again
            if record.partition == 0 and record.offset >= 10:
                batch.hold(record)
        return len(batch)

    tracker = TrackedConsumer(engine, NAME, [TOPIC], apply, batch_max=100)
    before = metrics.REGISTRY.get_sample_value("help_consumer_records_total", {"consumer": NAME}) or 0
    stop = asyncio.Event()
    running = asyncio.create_task(tracker.run(tracker.kafka_source(own_settings, bootstrap), stop=stop,
                                              monitor=tracker.monitor(own_settings, bootstrap)))
    try:
        async def until(cond: object, what: str) -> None:
            deadline = time.monotonic() + 60
            while not cond():  # type: ignore[operator]
                assert not running.done(), running
                assert time.monotonic() < deadline, f"timed out: {what}"
                await asyncio.sleep(0.2)

        await until(lambda: _sample("help_consumer_lag_records", 0) == 0
                    and _sample("help_consumer_lag_records", 1) == 0, "caught up")
        await _produce(bootstrap, 0, 7)  # one batch of seven, held by apply
        await until(lambda: _sample("help_consumer_lag_records", 0) == 7, "a lag of 7 on partition 0")
        assert _sample("help_consumer_lag_records", 1) == 0
        assert (_sample("help_consumer_oldest_unprocessed_age_seconds", 0) or 0) > 0
        assert _sample("help_consumer_oldest_unprocessed_age_seconds", 1) == 0
        after = metrics.REGISTRY.get_sample_value("help_consumer_records_total", {"consumer": NAME}) or 0
        assert after - before >= 16
        assert (metrics.REGISTRY.get_sample_value("help_consumer_batch_seconds_count", {"consumer": NAME}) or 0) >= 1
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
