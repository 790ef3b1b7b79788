"""The correlator as a Faust application: a thin adapter around :class:`~.engine.Engine`.

One agent (``concurrency=1``: it writes the person table) reads every signal topic, the
consents topic and the internal repartition topic, all with 8 partitions and keyed by
pseudonym, so Faust's assignor gives a worker the same partition number of each and a
person's signals and consents meet in one state. Scale out by running more workers.

Choices, measured on the embedded broker (see ``bench/correlator.py``):

- ``stream.take_events`` batches (up to ``batch_max`` records or ``batch_wait_s``): the
  engine reads each touched person once and writes it once per batch, so the changelog
  gets one write per person per batch instead of one per signal.
- Table values are raw JSON bytes (``value_serializer="raw"``), re-validated on read by
  pydantic; writes go to ``table.data`` plus one explicit changelog record to the person's
  partition (the partition the engine routed the signal to), and the batch's changelog
  records are acknowledged *before* its situation events are sent (see the agent).
- ``at_least_once``: Faust flushes the producer (receipts, dead letters, situation events,
  changelog) before it commits offsets, so a committed offset means every effect is on the
  broker. After a crash the uncommitted records come again: the engine recognises them
  (same signal id at the same position) and answers identically. ``exactly_once`` is not
  used.
- Faust acks a batch whose handler raised. Bad input never raises (the engine turns it
  into a receipt and a dead letter); anything else that escapes is a bug or a broker
  failure, and the process exits at once (``os._exit``) so that nothing is committed.
- faust-streaming fixes the consumer's fetch wait at 1.5 s, which sets the latency at low
  rates; it is lowered to ``fetch_wait_ms`` on the worker consumer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from services.core.registry import load_registry
from services.core.rules import Context, load_rules
from services.core.types import Fund
from services.correlator.engine import REPARTITION_TOPIC, Engine, Record
from services.platform.settings import Settings
from services.platform.topics import CONSENTS_TOPIC, signal_topic

log = logging.getLogger("help.correlator")

PARTITIONS = 8
TABLE = "persons"
EXIT_FATAL = 75


@dataclass(frozen=True)
class Tuning:
    app_id: str = "help-correlator"
    batch_max: int = 1000
    batch_wait_s: float = 0.02
    fetch_wait_ms: int = 20
    linger_ms: int = 5
    commit_interval_s: float = 1.0


_FETCH_WAIT_MS: list[int] = [1500]


def _patch_fetch_wait() -> None:
    """faust-streaming hard-codes ``fetch_max_wait_ms=1500``: use ours on the worker consumer."""
    cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(cls, "_help_patched", False):
        return
    original = cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _FETCH_WAIT_MS[0]
        return consumer

    cls._create_worker_consumer = create  # type: ignore[method-assign]
    cls._help_patched = True  # type: ignore[attr-defined]


def build_engine(settings: Settings) -> Engine:
    rules = load_rules(settings.schemas_dir / "rules.yaml", settings.taxonomy)
    ctx = Context(rules=rules, taxonomy=settings.taxonomy, policy=settings.policy)
    registry = load_registry(settings.key_dir / "registry.json")
    return Engine(ctx, registry, partitions=PARTITIONS)


def make_app(settings: Settings, bootstrap: str, tuning: Tuning = Tuning()) -> faust.App:
    """The Faust app; ``bootstrap`` is resolved by the caller (embedded broker or Kafka)."""
    engine = build_engine(settings)
    _FETCH_WAIT_MS[0] = tuning.fetch_wait_ms
    _patch_fetch_wait()
    session_s = settings.session_timeout_ms / 1000
    app = faust.App(
        tuning.app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        processing_guarantee="at_least_once",
        web_enabled=False,
        web_tables_enabled=False,
        topic_partitions=PARTITIONS,
        topic_replication_factor=1,
        topic_disable_leader=True,
        producer_linger_ms=tuning.linger_ms,
        producer_acks=-1,
        producer_max_batch_size=256 * 1024,
        broker_commit_interval=tuning.commit_interval_s,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.3, session_s / 4),
        broker_request_timeout=max(settings.request_timeout_ms / 1000, session_s + 5),
        broker_rebalance_timeout=max(10.0, session_s * 2),
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=2000,
        stream_buffer_maxsize=max(4096, tuning.batch_max * 2),
        stream_wait_empty=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    # Table values are raw JSON bytes (the app-wide serializers are "raw"): Faust has no
    # pydantic support, so the engine validates every value it reads.
    table = app.Table(TABLE, default=None, partitions=PARTITIONS, key_type=bytes, value_type=bytes)
    names = [signal_topic(f) for f in Fund] + [CONSENTS_TOPIC, REPARTITION_TOPIC]
    source = app.topic(*names, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    store: Any = None
    changelog = table.changelog_topic.get_topic_name()

    def load(key: bytes) -> bytes | None:
        value = store.get(key) if store is not None else None
        return value if isinstance(value, bytes) else None

    @app.agent(source, concurrency=1)
    async def correlate(stream: Any) -> None:
        nonlocal store
        async for events in stream.take_events(tuning.batch_max, within=tuning.batch_wait_s):
            try:
                store = table.data
                records = [_record(e.message) for e in events]
                batch = engine.process(records, load)
                send = app.producer.send
                # State first, and durably: a situation event is only ever published for a
                # state already on the changelog, so version N of a situation means one
                # content forever, even if a crash reorders the records read after it.
                written = []
                for key, (partition, value) in batch.writes.items():
                    table.data[key] = value
                    written.append(await send(changelog, key, value, partition, None, None))
                if written:
                    await asyncio.gather(*written)
                for out in batch.outputs:
                    await send(out.topic, out.key, out.value, out.partition,
                               out.timestamp_ms / 1000 if out.timestamp_ms else None,
                               list(out.headers) or None)
            except Exception:  # a bug or a broker failure: stop, commit nothing
                log.critical("correlator: unexpected failure, stopping without commit", exc_info=True)
                logging.shutdown()
                os._exit(EXIT_FATAL)

    return app


def _record(message: Any) -> Record:
    headers = message.headers or ()
    items = headers.items() if hasattr(headers, "items") else headers
    return Record(
        topic=message.topic, partition=message.partition, offset=message.offset,
        timestamp_ms=int((message.timestamp or 0) * 1000), key=message.key, value=message.value,
        headers={k: bytes(v) for k, v in items if v is not None},
    )
