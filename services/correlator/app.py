"""The correlator worker as a Faust application: wiring.

One agent (``concurrency=1``: it owns the person state) reads every signal topic, the
consents topic and the internal repartition topic, all with ``Settings.partitions``
partitions and keyed by pseudonym, so Faust's assignor gives a worker the same partition
number of each and a person's signals and consents meet in one state. Scale out by running
more workers. Faust does the group membership, the rebalances, the fetching and the
producer; the rest is ours, in named modules (docs/architecture.md, "Faust, as used here"):

- :mod:`.faust_seam`: every change to Faust and every read of its insides, with its reason;
- :mod:`.delivery`: fetched messages, raw, to the agent's inbox, taken in whole batches;
- :mod:`.positions`: per partition, the next offset to process (no jump over a hole);
- :mod:`.processing`: a batch, a rebalance, a retention tick, under one lock;
- :mod:`.checkpoint`: state writes acknowledged, then outputs, then the commit;
- :mod:`.sending`: outputs as one record batch per partition;
- :mod:`.state`: the person state, on local disk behind a bounded cache, caught up or rebuilt
  exactly from its changelog (not a Faust ``Table``: Faust's recovery stops at the reported
  end offset, which the embedded broker reports short);
- :mod:`.gauges`: lag per partition, the stall watchdog, batch and checkpoint metrics;
- :mod:`.checkpool`: the check helpers (the collector's policy: :mod:`services.platform.runtime`),
  watched: one that exits is noticed at once, logged at ERROR and replaced between batches.

A stop (SIGTERM, SIGINT) finishes the batch in progress and commits it, then Faust stops
(:meth:`.processing.Processor.stop`, through :func:`.faust_seam.on_stopping`); past
``Settings.drain_timeout_s`` the process exits 75 without committing more.

Bad input never raises (it becomes a receipt and a dead letter), so anything that escapes
a batch is a bug or a broker failure, and the process exits at once (``os._exit``) without
committing. ``exactly_once`` is not used (docs/architecture.md, decision 4).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, NoReturn, cast

import faust
from aiokafka import AIOKafkaConsumer

from services.core.registry import registry_path
from services.core.rules import Context, load_rules
from services.core.types import Fund
from services.correlator import faust_seam
from services.correlator.checkpoint import EXIT_FATAL, Checkpoints
from services.correlator.checkpool import CheckPool, CheckPoolError, watch
from services.correlator.delivery import inbox_handler, take_batches
from services.correlator.engine import REPARTITION_TOPIC, Engine, Sealer
from services.correlator.gauges import WorkerGauges
from services.correlator.holds import Backpressure
from services.correlator.positions import Positions
from services.correlator.processing import Processor
from services.correlator.registry_source import RegistrySource
from services.correlator.sending import send_batches, send_one
from services.correlator.state import PersonStore, store_directory
from services.platform import metrics
from services.platform.datakeys import KeyRing, KeyStore, changelog_keys
from services.platform.db import open_engine
from services.platform.kafka import consumer as plain_consumer
from services.platform.lag import PROBE_FETCH_BYTES
from services.platform.markers import marker_key
from services.platform.runtime import HeapPolicy
from services.platform.settings import Settings
from services.platform.stopping import Deadline
from services.platform.topics import CONSENTS_TOPIC, signal_topic

log = logging.getLogger("help.correlator")

__all__ = ["changelog_topic", "make_app", "source_topics"]
TABLE = "persons"


def changelog_topic(app_id: str) -> str:
    """The person-state changelog (compacted, co-partitioned): Faust's own name for it."""
    return f"{app_id}-{TABLE}-changelog"


def source_topics() -> list[str]:
    return [signal_topic(f) for f in Fund] + [CONSENTS_TOPIC, REPARTITION_TOPIC]


#: SQLite page cache of the worker's connections to the key table, in KiB (SQLite's default
#: size): a batch's lookups are random points in a table that grows with the persons.
KEY_TABLE_CACHE_KIB = 2048


def key_ring(settings: Settings) -> KeyRing:
    """The persons' data keys, in the exchange's database (``exchange_data_keys``), those of
    as many persons held as person states are (at least four batches' worth)."""
    engine = open_engine(settings.database_url, sqlite_cache_kib=KEY_TABLE_CACHE_KIB)
    return KeyRing(KeyStore(engine), marker_key(settings),
                   max_subjects=max(settings.correlator_state_cache, 4 * settings.correlator_batch_max))


def build_engine(settings: Settings, sealer: Sealer | None = None) -> Engine:
    rules = load_rules(settings.schemas_dir / "rules.yaml", settings.taxonomy)
    ctx = Context(rules=rules, taxonomy=settings.taxonomy, policy=settings.policy)
    # Verified against the pinned registry signer, re-read when it changes (docs/keys.md).
    source = RegistrySource(registry_path(settings.key_dir), settings.registry_signer_path)
    registry = source.registry
    helpers = settings.correlator_check_processes
    checks = CheckPool(registry, helpers, partitions=settings.partitions) if helpers > 0 else None
    return Engine(ctx, registry, partitions=settings.partitions, checks=checks, registry_source=source,
                  marker_secret=marker_key(settings), sealer=sealer,
                  state_topic=changelog_topic(settings.correlator_app_id),
                  accept_clear=settings.signal_sealing == "accepted")


def _faust_app(settings: Settings, bootstrap: str) -> faust.App:
    app_id = settings.correlator_app_id
    session_s = settings.session_timeout_ms / 1000
    datadir = settings.var_dir / "correlator" / app_id  # not the current directory
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=str(datadir),
        processing_guarantee="at_least_once",
        web_enabled=False,
        web_tables_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        topic_disable_leader=True,
        producer_linger_ms=settings.correlator_linger_ms,
        producer_acks=-1,
        producer_max_batch_size=256 * 1024,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.3, session_s / 4),
        broker_request_timeout=max(settings.request_timeout_ms / 1000, session_s + 5),
        broker_rebalance_timeout=max(10.0, session_s * 2),
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=2000,
        # The per-partition bound (a broker that honours it); the response's: faust_seam.
        consumer_max_fetch_size=settings.correlator_fetch_max_bytes,
        stream_buffer_maxsize=_inbox_size(settings),
        # Revocation waits on the processor's lock, not on Faust's count of unacked messages.
        stream_wait_empty=False,
        key_serializer="raw",
        value_serializer="raw",
    )


def _inbox_size(settings: Settings) -> int:
    return max(4096, settings.correlator_batch_max * 2)


def _stop(what: str) -> NoReturn:
    log.critical("correlator: %s, stopping without commit", what, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_FATAL)


def make_app(settings: Settings, bootstrap: str, deadline: Deadline | None = None) -> faust.App:
    """The Faust app; ``bootstrap`` is resolved by the caller (embedded broker or Kafka).
    ``deadline`` bounds a stop (armed at the stop signal, or here when the stop begins)."""
    keys = key_ring(settings)
    engine = build_engine(settings, keys)
    faust_seam.install(settings.correlator_fetch_wait_ms, settings.correlator_fetch_max_bytes)
    app = _faust_app(settings, bootstrap)
    names = source_topics()
    # acks=False: Faust never commits these topics; the checkpoints commit what was processed.
    source = app.topic(*names, key_type=bytes, value_type=bytes, acks=False,
                       key_serializer="raw", value_serializer="raw")

    async def send_acked(topic: str, key: bytes, value: bytes | None, partition: int) -> int:
        return await send_one(app.producer, topic, key, value, partition)  # (Faust's, once started)

    def loader() -> AIOKafkaConsumer:
        return plain_consumer(settings, bootstrap, client_id=f"{settings.correlator_app_id}-state-loader")

    def lag_probe() -> AIOKafkaConsumer:  # one batch per partition and measurement at most
        return plain_consumer(settings, bootstrap, client_id=f"{settings.correlator_app_id}-lag-probe",
                              group_id=settings.correlator_app_id,  # to read its offsets, never joins
                              max_partition_fetch_bytes=PROBE_FETCH_BYTES, fetch_max_wait_ms=100)

    gauges = WorkerGauges(settings, assigned=lambda: processor.positions.assigned, make_consumer=lag_probe)
    processor = Processor(
        engine, PersonStore(changelog_topic(settings.correlator_app_id),
                            changelog_keys(keys.secret),
                            directory=store_directory(settings.var_dir, settings.correlator_app_id),
                            partitions=settings.partitions, cache_persons=settings.correlator_state_cache),
        Positions(faust_seam.committed_offsets(app), faust_seam.seek(app)),
        Checkpoints(lambda outputs: send_batches(app.producer, outputs), gauges.commit(faust_seam.commit(app)),
                    timed=gauges.checkpoint_done),
        HeapPolicy(settings.correlator_gc_full_every_s, trim_every_s=settings.correlator_trim_every_s),
        topics=set(names), send_one=send_acked, loader=loader, gauges=gauges, keys=keys,
        backpressure=Backpressure(
            engine.holds, settings.correlator_hold_max, settings.correlator_hold_warn_s,
            topics={n for n in names if n != REPARTITION_TOPIC},  # the answers come there: never paused
            pause=lambda tps: app.consumer.pause_partitions(tps),
            resume=lambda tps: app.consumer.resume_partitions(tps),
            paused_now=gauges.paused, report=gauges.holds))

    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        await processor.revoked(args[0])

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        await processor.assigned(args[0])
        gauges.assigned()

    # (mode's signal stubs do not accept a coroutine function with *args: cast.)
    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    app.on_partitions_assigned.connect(cast(Any, on_assigned))

    stop_bound = deadline or Deadline(settings.drain_timeout_s, "correlator")

    async def drain() -> None:
        stop_bound.arm()  # (already armed when a signal started the stop)
        await processor.stop()

    faust_seam.on_stopping(app, drain)

    inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=_inbox_size(settings))
    faust_seam.route_to_inbox(app, set(names), inbox_handler(inbox))

    async def sweep() -> None:
        try:
            await processor.sweep(settings.correlator_sweep_page)
        except Exception:  # as a batch: stop rather than go on with a state not written
            _stop("retention sweep failed")

    cast(Any, app).timer(settings.correlator_sweep_every_s)(sweep)  # (faust's timer is untyped)

    pool = engine.checks
    if isinstance(pool, CheckPool):
        async def replace_helpers(dead: list[int]) -> None:
            log.error("correlator: check helper(s) %s exited while the worker ran; replacing them "
                      "between batches", dead)
            async with processor.lock:  # between batches: no verdict is owed
                if processor.stopping:
                    return
                try:
                    replaced = pool.replace_dead()
                except CheckPoolError:
                    _stop("check helpers cannot be replaced")
                metrics.CHECK_HELPERS_REPLACED.inc(replaced)
                log.error("correlator: %d check helper(s) replaced (%d since the start)",
                          replaced, pool.replacements)

        async def watch_helpers() -> None:
            await watch(pool, replace_helpers)

        cast(Any, app).task(watch_helpers)  # (started with the app, cancelled when it stops)

    async def measure_lag() -> None:  # lag gauges and the stall watchdog, in their own thread
        gauges.start()

    cast(Any, app).task(measure_lag)

    @app.agent(source, concurrency=1)
    async def correlate(stream: Any) -> None:
        # The agent subscribes Faust to the topics (group membership, assignment, fetching);
        # the messages themselves come from ``inbox`` (see delivery), in whole batches.
        batch_wait_s = settings.correlator_batch_wait_ms / 1000
        async for messages in take_batches(inbox, settings.correlator_batch_max, batch_wait_s):
            try:
                await processor.batch(messages)
            except Exception:  # a bug or a broker failure: stop, commit nothing more
                _stop("unexpected failure")

    return app
