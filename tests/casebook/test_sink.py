"""The sink against the real embedded broker: killed mid-stream and restarted, nothing is
lost and nothing counts twice (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import pytest
import sqlalchemy as sa

from services.casebook import store
from services.casebook import tables as t
from services.casebook.followups import record_followup
from services.casebook.sink import CasebookSink
from services.core.messages import SituationEvent, to_wire
from services.platform import kafka
from services.platform.db import open_engine
from services.platform.settings import Settings
from services.platform.topics import CONSENTS_TOPIC, SITUATIONS_TOPIC
from services.platform.tracking import load_positions
from tests.support import situations as F

pytestmark = pytest.mark.integration
UTC = dt.UTC


async def wait_for(predicate: object, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the sink")
        await asyncio.sleep(0.1)


def ours(engine: sa.Engine, ids: list[str]) -> dict[str, tuple[int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.situations.c.situation_id, t.situations.c.version,
                                      t.situations.c.case_number).where(t.situations.c.situation_id.in_(ids)))
        return {r[0]: (r[1], r[2]) for r in rows}


async def test_sink_killed_and_restarted_loses_nothing_and_doubles_nothing(
        settings: Settings, bootstrap: str, db_url: str) -> None:
    engine = open_engine(db_url)
    base = uuid.uuid4().int % 10**9  # this test's own situations on the shared topic
    first = [F.situation(base + i, occurred_at=dt.datetime(2026, 11, 1, tzinfo=UTC) + dt.timedelta(minutes=i))
             for i in range(300)]
    later = [F.situation(base + i, version=2, priority="rouge",
                         occurred_at=dt.datetime(2026, 11, 20, tzinfo=UTC)) for i in range(0, 300, 3)]
    extra = [F.situation(base + 300 + i, occurred_at=dt.datetime(2026, 11, 21, tzinfo=UTC)) for i in range(100)]
    producer = kafka.producer(settings, bootstrap)
    await producer.start()
    try:
        async def publish(events: list[SituationEvent]) -> None:
            for e in events:
                await producer.send(SITUATIONS_TOPIC, to_wire(e), key=e.situation_id.encode())
            await producer.flush()

        await publish(first + first[:50])  # with duplicates
        group = f"casebook-test-{uuid.uuid4().hex[:8]}"
        sink = CasebookSink(settings, engine, bootstrap, group=group, batch_max=40)
        task = asyncio.create_task(sink.run())
        await wait_for(lambda: sink.records >= 80)
        task.cancel()  # killed mid-stream
        with pytest.raises(asyncio.CancelledError):
            await task
        await publish(later + extra + later[:10])
        await publish_objection(producer, base)
        restarted = CasebookSink(settings, engine, bootstrap, group=group, batch_max=500)
        stop = asyncio.Event()
        task = asyncio.create_task(restarted.run(stop))
        ids = [e.situation_id for e in first + extra]
        expected_versions = {e.situation_id: 1 for e in first + extra} | {e.situation_id: 2 for e in later}
        del expected_versions[F.hex32("situation", base + 299)]  # the objecting person
        await wait_for(lambda: {k: v for k, (v, _) in ours(engine, ids).items()} == expected_versions)
        # A follow-up recorded meanwhile goes out through the outbox and comes back once.
        case = ours(engine, ids)[first[0].situation_id][1]
        event = record_followup(engine, settings.taxonomy, case_number=case, fund="caf", action="fsl",
                                outcome="propose", user="agent.caf35")
        with engine.connect() as conn:
            assert len(store.pending_outbox(conn)) == 1
        await wait_for(lambda: _published(engine))
        await asyncio.sleep(1.0)
        stop.set()
        await task
    finally:
        await producer.stop()
    state = ours(engine, ids)
    numbers = [n for _, n in state.values()]
    assert len(numbers) == len(set(numbers)) == 399
    with engine.connect() as conn:
        fus = store.followups_of(conn, event.situation_id)
        assert [f.event_id for f in fus] == [event.event_id]
        offsets = load_positions(conn, group)
    assert offsets[(SITUATIONS_TOPIC, 0)] >= 1 or len(offsets) > 1
    engine.dispose()


async def publish_objection(producer: object, base: int) -> None:
    person = base + 299
    event = F.objection(person, effective_at=dt.datetime(2026, 11, 22, tzinfo=UTC))
    await producer.send_and_wait(CONSENTS_TOPIC, to_wire(event))  # type: ignore[attr-defined]


def _published(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return store.pending_outbox(conn) == []
