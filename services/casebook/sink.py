"""The casebook sink: situation, follow-up and consent events from Kafka into SQL.

A tracked consumer (:mod:`services.platform.tracking`, consumer group ``help-casebook``)
reads ``help.situations.v1``, ``help.followups.v1`` and ``help.consents.v1``; each poll (up
to ``batch_max`` records) is applied by :func:`apply_records` in ONE transaction with the
consumed positions, so a crash anywhere keeps both or neither, and a restart or a
rebalance resumes at the stored positions. A message that does not parse is logged and
skipped (its position is stored: replaying it would fail the same way); a database error
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
from pydantic import ValidationError

from services.casebook import casekeys, store
from services.casebook.config import marker_key
from services.casebook.followups import publish_outbox
from services.core.messages import (
    ConsentEvent,
    FollowupEvent,
    SealedFollowupEvent,
    SealedSituationEvent,
    SituationEvent,
    parse,
    parse_followup,
    parse_situation,
)
from services.platform import kafka
from services.platform.db import scrub
from services.platform.sealed_situations import open_situations
from services.platform.settings import Settings
from services.platform.topics import CONSENTS_TOPIC, FOLLOWUPS_TOPIC, SITUATIONS_TOPIC
from services.platform.tracking import Processed, Record, TrackedConsumer

log = logging.getLogger("help_exchange.casebook.sink")

SINK_TOPICS = (SITUATIONS_TOPIC, FOLLOWUPS_TOPIC, CONSENTS_TOPIC)
GROUP = "help-casebook"


@dataclass
class BatchResult:
    records: int
    applied: store.Applied
    skipped: int


def apply_records(conn: sa.Connection, records: Sequence[Record],
                  markers: store.Markers = store.UNKEYED) -> BatchResult:
    """Apply one batch of consumed records in the caller's transaction (the tracked
    consumer stores their positions in it)."""
    situations: list[SituationEvent | SealedSituationEvent] = []
    followups: list[FollowupEvent | SealedFollowupEvent] = []
    consents: list[ConsentEvent] = []
    # In topic order per partition: a tombstone after an event of its key deletes it, an
    # event after a tombstone brings it back; applied in that order below.
    steps: list[tuple[str, list[SituationEvent | SealedSituationEvent] | list[str]]] = []
    skipped = 0
    for r in records:
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
                situations.append(parse_situation(r.value))
            elif r.topic == FOLLOWUPS_TOPIC:
                followups.append(parse_followup(r.value))
            elif r.topic == CONSENTS_TOPIC:
                consents.append(parse(ConsentEvent, r.value))
        except ValidationError as exc:
            skipped += 1
            log.warning("skipped %s[%d]@%d: %s", r.topic, r.partition, r.offset,
                        exc.errors()[0].get("type", "invalid"))
    applied = store.Applied()
    if situations:
        steps.append(("situations", situations))
    for kind, items in steps:
        if kind == "situations":
            # Sealed events opened with their person's key; one whose key is gone is an
            # erased person's: nothing of it is taken.
            opened = [e for e in open_situations(conn, items) if e is not None]  # type: ignore[arg-type]
            skipped += len(items) - len(opened)
            applied.situations += store.apply_situations(conn, opened, markers)
        else:
            applied.erased += store.apply_tombstones(conn, items)  # type: ignore[arg-type]
    applied.followups = store.apply_followups(conn, open_followups(conn, followups), markers)
    applied.erased += store.apply_consents(conn, consents, markers)
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


class CasebookSink:
    """Runs until ``stop`` is set (or cancelled); ``on_batch`` is called after each commit."""

    def __init__(self, settings: Settings, engine: sa.Engine, bootstrap: str, *, group: str = GROUP,
                 batch_max: int = 2000, outbox_every_s: float = 2.0) -> None:
        self.settings = settings
        self.engine = engine
        self.bootstrap = bootstrap
        self.group = group
        self.outbox_every_s = outbox_every_s
        self.total = store.Applied()
        self.records = 0
        self.markers = store.Markers(marker_key(settings))
        self.tracker = TrackedConsumer(engine, group, SINK_TOPICS, self.apply, batch_max=batch_max)

    def apply(self, conn: sa.Connection, records: Sequence[Record]) -> BatchResult:
        return apply_records(conn, records, self.markers)

    async def run(self, stop: asyncio.Event | None = None,
                  on_batch: Callable[[BatchResult], None] | None = None) -> None:
        producer = kafka.producer(self.settings, self.bootstrap)
        await producer.start()
        last_outbox = 0.0

        async def after_poll(done: Processed[BatchResult] | None) -> None:
            nonlocal last_outbox
            if done is not None:
                self.total += done.result.applied
                self.records += done.result.records
                if done.result.applied.erased:
                    await asyncio.to_thread(scrub, self.engine)
                if on_batch is not None:
                    on_batch(done.result)
            if time.monotonic() - last_outbox > self.outbox_every_s:
                last_outbox = time.monotonic()
                await publish_outbox(self.engine, producer)

        try:
            await self.tracker.run(self.tracker.kafka_source(self.settings, self.bootstrap),
                                   stop=stop, after_poll=after_poll,
                                   monitor=self.tracker.monitor(self.settings, self.bootstrap))
        finally:
            await producer.stop()
