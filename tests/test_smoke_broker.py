"""The embedded broker really carries messages (the ground every integration test stands on)."""

from __future__ import annotations

import uuid

import pytest

from services.platform import kafka
from services.platform.settings import Settings
from services.platform.topics import load_topic_specs

pytestmark = pytest.mark.integration


async def test_every_declared_topic_exists_with_its_partitions(settings: Settings, bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        live = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    finally:
        await admin.close()
    declared = load_topic_specs(settings.schemas_dir / "asyncapi.yaml")
    assert declared, "asyncapi.yaml declares no topic"
    for spec in declared:
        assert live.get(spec.name) == spec.partitions, spec.name


async def test_round_trip_through_the_broker(settings: Settings, bootstrap: str) -> None:
    # The session broker is shared: other tests write on the same topic, so look for ours only.
    sent = {b"smoke-%s-%d" % (uuid.uuid4().hex.encode(), i) for i in range(20)}
    prod = kafka.producer(settings, bootstrap)
    await prod.start()
    try:
        for i, payload in enumerate(sorted(sent)):
            await prod.send_and_wait("help.deadletter.v1", payload, key=b"k%d" % i)
    finally:
        await prod.stop()
    cons = kafka.consumer(settings, bootstrap, "help.deadletter.v1", group_id=f"smoke-{uuid.uuid4().hex}")
    await cons.start()
    try:
        seen: set[bytes] = set()
        for _ in range(100):
            batch = await cons.getmany(timeout_ms=200)
            seen |= {m.value for msgs in batch.values() for m in msgs if m.value} & sent
            if seen == sent:
                break
    finally:
        await cons.stop()
    assert seen == sent
