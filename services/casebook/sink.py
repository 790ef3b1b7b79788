"""The casebook sink: situation, follow-up and consent events from Kafka into SQL.

One consumer (aiokafka, consumer group ``help-casebook``) reads ``help.situations.v1``,
``help.followups.v1`` and ``help.consents.v1``. Each poll (up to ``batch_max`` records)
becomes ONE database transaction holding the effects and the consumed offsets (tracking
records), so a crash anywhere either keeps both or neither. The Kafka group offsets are not
trusted: when partitions are assigned, the sink seeks to the stored offset + 1 (or to the
beginning when nothing was stored yet). A message that does not parse is logged and
skipped (its offset is stored: replaying it would fail the same way); a database error
stops the sink without storing anything, and a restart resumes from the last batch.

The sink also publishes the follow-up outbox (see :mod:`services.casebook.followups`) every
few seconds, so follow-ups recorded while the broker was away go out once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from services.casebook import casekeys, store
from services.casebook.config import marker_key
from services.casebook.db import scrub
from services.casebook.followups import publish_outbox
from services.core.messages import (
    ConsentEvent,
    FollowupEvent,
    SealedFollowupEvent,
    SituationEvent,
    parse,
    parse_followup,
)
from services.errors import TransientError
from services.platform import kafka
from services.platform.settings import Settings
from services.platform.topics import CONSENTS_TOPIC, FOLLOWUPS_TOPIC, SITUATIONS_TOPIC

log = logging.getLogger("help_exchange.casebook.sink")

SINK_TOPICS = (SITUATIONS_TOPIC, FOLLOWUPS_TOPIC, CONSENTS_TOPIC)
GROUP = "help-casebook"


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    #: None: a tombstone (compacted ``help.situations.v1``: forget the situation of ``key``)
    value: bytes | None
    key: bytes | None = None


@dataclass
class BatchResult:
    records: int
    applied: store.Applied
    skipped: int


def apply_records(engine: sa.Engine, consumer_name: str, records: Sequence[Record],
                  markers: store.Markers = store.UNKEYED) -> BatchResult:
    """Apply one batch of consumed records and store their offsets, in one transaction."""
    situations: list[SituationEvent] = []
    followups: list[FollowupEvent | SealedFollowupEvent] = []
    consents: list[ConsentEvent] = []
    # In topic order per partition: a tombstone after an event of its key deletes it, an
    # event after a tombstone brings it back; applied in that order below.
    steps: list[tuple[str, list[SituationEvent] | list[str]]] = []
    positions: dict[tuple[str, int], int] = {}
    skipped = 0
    for r in records:
        key = (r.topic, r.partition)
        positions[key] = max(positions.get(key, -1), r.offset)
        if r.value is None:
            if r.topic == SITUATIONS_TOPIC and r.key:
                if situations:
                    steps.append(("situations", situations))
                    situations = []
                steps.append(("tombstones", [r.key.decode("ascii", "replace")]))
            else:
                skipped += 1
            continue
        try:
            if r.topic == SITUATIONS_TOPIC:
                situations.append(parse(SituationEvent, r.value))
            elif r.topic == FOLLOWUPS_TOPIC:
                followups.append(parse_followup(r.value))
            elif r.topic == CONSENTS_TOPIC:
                consents.append(parse(ConsentEvent, r.value))
        except ValidationError as exc:
            skipped += 1
            log.warning("skipped %s[%d]@%d: %s", r.topic, r.partition, r.offset,
                        exc.errors()[0].get("type", "invalid"))
    applied = store.Applied()
    try:
        if situations:
            steps.append(("situations", situations))
        with engine.begin() as conn:
            for kind, items in steps:
                if kind == "situations":
                    applied.situations += store.apply_situations(conn, items, markers)  # type: ignore[arg-type]
                else:
                    applied.erased += store.apply_tombstones(conn, items)  # type: ignore[arg-type]
            applied.followups = store.apply_followups(conn, open_followups(conn, followups), markers)
            applied.erased += store.apply_consents(conn, consents, markers)
            store.store_offsets(conn, consumer_name, positions)
    except DBAPIError as exc:
        raise TransientError(f"the casebook database refused a batch: {exc.orig}",
                             "check that the database answers, then restart the sink") from exc
    return BatchResult(len(records), applied, skipped)



def open_followups(conn: sa.Connection, events: Sequence[FollowupEvent | SealedFollowupEvent],
                   ) -> list[FollowupEvent]:
    """The follow-ups, sealed ones opened with their case's key; one whose case was erased
    (no key any more) is not taken: nothing of it is readable, as intended."""
    keys = casekeys.case_keys(conn, {e.situation_id for e in events if isinstance(e, SealedFollowupEvent)})
    opened: list[FollowupEvent] = []
    for e in events:
        if isinstance(e, FollowupEvent):
            opened.append(e)
        elif (key := keys.get(e.situation_id)) is not None and (f := casekeys.open_followup(e, key)):
            opened.append(f)
    return opened

class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: CasebookSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: object) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        consumer = self.sink.consumer
        assert consumer is not None
        with self.sink.engine.connect() as conn:
            stored = store.load_offsets(conn, self.sink.consumer_name)
        for tp in assigned:
            last = stored.get((tp.topic, tp.partition))
            if last is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, last + 1)


class CasebookSink:
    """Runs until ``stop`` is set (or cancelled); ``on_batch`` is called after each commit."""

    def __init__(self, settings: Settings, engine: sa.Engine, bootstrap: str, *, group: str = GROUP,
                 batch_max: int = 2000, outbox_every_s: float = 2.0) -> None:
        self.settings = settings
        self.engine = engine
        self.bootstrap = bootstrap
        self.group = group
        self.consumer_name = group
        self.batch_max = batch_max
        self.outbox_every_s = outbox_every_s
        self.consumer: AIOKafkaConsumer | None = None
        self.total = store.Applied()
        self.records = 0
        self.markers = store.Markers(marker_key(settings))

    async def run(self, stop: asyncio.Event | None = None,
                  on_batch: Callable[[BatchResult], None] | None = None) -> None:
        consumer = kafka.consumer(self.settings, self.bootstrap, group_id=self.group,
                                  max_poll_records=self.batch_max)
        self.consumer = consumer
        consumer.subscribe(list(SINK_TOPICS), listener=_SeekToStored(self))
        await consumer.start()
        producer = kafka.producer(self.settings, self.bootstrap)
        await producer.start()
        last_outbox = 0.0
        try:
            while stop is None or not stop.is_set():
                batches = await consumer.getmany(timeout_ms=300, max_records=self.batch_max)
                records = [Record(tp.topic, tp.partition, m.offset, m.value, m.key)
                           for tp, messages in batches.items() for m in messages]
                if records:
                    result = await asyncio.to_thread(apply_records, self.engine, self.consumer_name,
                                                     records, self.markers)
                    self.total += result.applied
                    self.records += result.records
                    if result.applied.erased:
                        await asyncio.to_thread(scrub, self.engine)
                    if on_batch is not None:
                        on_batch(result)
                if time.monotonic() - last_outbox > self.outbox_every_s:
                    last_outbox = time.monotonic()
                    await publish_outbox(self.engine, producer)
        finally:
            await producer.stop()
            await consumer.stop()
