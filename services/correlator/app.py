"""The correlator as a Faust application: a thin adapter around :class:`~.engine.Engine`.

One agent (``concurrency=1``: it owns the person state) reads every signal topic, the
consents topic and the internal repartition topic, all with 8 partitions and keyed by
pseudonym, so Faust's assignor gives a worker the same partition number of each and a
person's signals and consents meet in one state. Scale out by running more workers.

Faust does the group membership, the rebalances and the fetching; its conductor hands the
fetched messages as they are to the agent's inbox (:func:`_deliver_to`: no Event, no
decoding, the flow control kept), the agent takes them in whole batches
(:func:`take_batches`), not event by event through the Stream iterator, and Faust's fetch
loop delivers each message without four tasks per message when the delivery does not block
(:func:`_patch_drain`): together ≈ 90 µs of what was once ≈ 500 µs of the worker per signal.
Two things Faust did are done here instead, because they lost data under ``kill -9`` on the
embedded broker (see ``tests/correlator/test_crash.py``):

- **Person state** is a :class:`~.state.PersonStore`, not a Faust ``Table``: Faust's table
  recovery stops at the reported end offset, which Tansu reports short (the base offset of
  the last record batch + 1), so a restarted worker lost the last state writes before the
  crash and a redelivered signal rebuilt a situation without an earlier category. The store
  rebuilds a partition from the changelog up to a fence record it writes itself: exact on
  any broker. The changelog topic keeps Faust's name (``<app id>-persons-changelog``).
- **Offsets** are committed by the agent, not by Faust's acks (the source topic has
  ``acks=False``). Faust's own bookkeeping guesses: it remembers the last offset read per
  partition and silently drops any record below it, treats any jump in offsets as a
  compacted gap and commits over it, and accepts a commit one past a missing offset
  (``min(acked) - committed > 1``). A worker restarted within the session timeout goes
  through two rebalances (the dead member expires in between), with records fetched before
  the second seek still in flight: the setting in which a few early offsets were committed
  without ever getting a receipt. Here the agent knows, per source partition, the next
  offset it must process (the group's committed offset when the partition is assigned); it
  skips what it already did, never jumps a hole (it seeks back instead), and commits only
  what it processed, after every effect of it is acknowledged.

Per batch, in this order: load the state of partitions seen for the first time; run the
engine; write the touched states to the changelog and wait for the acks; send receipts, dead
letters, forwards and situation events and wait for the acks; commit the next offsets. A
crash anywhere before the commit means the records come again, and the engine recognises
them (same signal id at the same position) and answers identically; a situation event is
only ever sent for a state already on the changelog. The broker effects (the writes, the
sends, the commit) of a batch run while the next batch is computed (:class:`Effects`): one
batch ahead at most, each batch's effects after the previous batch's, so the broker sees
the same sequence as one batch at a time. Rebalances take the same lock as a batch and
wait for the effects, so a partition is revoked between batches, never during one, and
only once what was processed of it is committed. ``exactly_once`` is not used (see
docs/architecture.md, decision 4).

Other choices, measured on the embedded broker (see ``bench/correlator.py``): the engine
reads and writes each touched person once per batch (one changelog record per person per
batch); table values are the engine's JSON bytes, re-validated on read; bad input never
raises (it becomes a receipt and a dead letter), so anything that escapes is a bug or a
broker failure and the process exits at once (``os._exit``) without committing (so does a
check helper that dies: :class:`~.checkpool.CheckPoolError`); the stateless checks run in
``check_processes`` helper processes beside the agent (:mod:`.checkpool`); outputs leave as
one record batch per partition (:func:`send_batches`); what survives a batch is frozen for
the garbage collector, which otherwise kept walking the cached person states
(:class:`~services.platform.runtime.HeapPolicy`); faust-streaming fixes the consumer's
fetch wait at 1.5 s, which sets the latency at low rates: it is lowered to ``fetch_wait_ms``
on the worker consumer — 100 ms by default, not less, because every fetch that finds
nothing costs the embedded broker ≈ 6 ms of CPU (a worker idling at 20 ms kept a third of a
core busy in the broker); a fetch answers as soon as records come, so this bounds only the
latency of a signal arriving at an idle worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.services import WaitResults

from services.core.registry import registry_path
from services.core.rules import Context, load_rules
from services.core.types import Fund
from services.correlator.checkpool import CheckPool
from services.correlator.engine import PARTITIONS, REPARTITION_TOPIC, Batch, Engine, Output, Record
from services.correlator.registry_source import RegistrySource
from services.correlator.state import PersonStore
from services.correlator.tuning import DEFAULT_TUNING, Tuning
from services.platform.kafka import consumer as plain_consumer
from services.platform.markers import marker_key
from services.platform.partitioning import murmur2
from services.platform.runtime import HeapPolicy
from services.platform.settings import Settings
from services.platform.topics import CONSENTS_TOPIC, signal_topic

log = logging.getLogger("help.correlator")

__all__ = ["PARTITIONS", "make_app"]
TABLE = "persons"
EXIT_FATAL = 75
#: A hole (a record the consumer skipped) is sought back at most this often per partition.
RESEEK_AFTER_S = 1.0
#: The engine lets the event loop run after every so many records of a batch.
STEP_RECORDS = 256


def changelog_topic(app_id: str) -> str:
    """The person-state changelog (compacted, co-partitioned): Faust's own name for it."""
    return f"{app_id}-{TABLE}-changelog"


def source_topics() -> list[str]:
    return [signal_topic(f) for f in Fund] + [CONSENTS_TOPIC, REPARTITION_TOPIC]


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


class _Resume:
    """The rest of a coroutine already stepped once (it yielded ``pending``), as an awaitable
    a Task can drive: what ``await coro`` would have done from there on."""

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Any:
        coro, pending = self.coro, self.pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation included: passed on, as by await
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _resumed(coro: Any, pending: Any) -> Any:
    return await _Resume(coro, pending)


_FLOW_WAIT = asyncio.Event.wait.__code__


def _patch_drain() -> None:
    """Faust's fetch loop delivers each message with ``wait_first(deliver(message),
    suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per message (≈ 40 µs, a tenth of
    the worker's time), though delivery almost never blocks. Here the delivery is stepped
    first; if it finishes without blocking (the queue had room, the flow is not suspended),
    that is the result ``wait_first`` would have given; if it blocks, the rest of it goes to
    Faust's ``wait_first`` as before, racing the flow suspension exactly as it did."""
    cls = faust_aiokafka.Consumer
    if getattr(cls, "_help_drain_patched", False):
        return
    original = cls.wait_first

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        if (len(coros) == 2 and getattr(coros[1], "cr_code", None) is _FLOW_WAIT
                and asyncio.iscoroutine(coros[0]) and not self.suspend_flow.is_set()
                and not self._stopped.is_set() and not self._crashed.is_set()):
            work, flow = coros
            try:
                pending = work.send(None)
            except StopIteration as stop:
                flow.close()
                return WaitResults([work], [stop.value], False)
            except BaseException:
                flow.close()
                raise
            return await original(self, _resumed(work, pending), flow, timeout=timeout)
        return await original(self, *coros, timeout=timeout)

    cls.wait_first = wait_first  # type: ignore[method-assign]
    cls._help_drain_patched = True  # type: ignore[attr-defined]


def build_engine(settings: Settings, check_processes: int = 0) -> Engine:
    rules = load_rules(settings.schemas_dir / "rules.yaml", settings.taxonomy)
    ctx = Context(rules=rules, taxonomy=settings.taxonomy, policy=settings.policy)
    # Verified against the pinned registry signer, re-read when it changes (docs/keys.md).
    source = RegistrySource(registry_path(settings.key_dir), settings.registry_signer_path)
    registry = source.registry
    checks = CheckPool(registry, check_processes, partitions=PARTITIONS) if check_processes > 0 else None
    return Engine(ctx, registry, partitions=PARTITIONS, checks=checks, registry_source=source,
                  marker_secret=marker_key(settings))


class Positions:
    """Per source partition, the next offset the agent must process.

    Set from the group's committed offset (or the partition's first offset) when a
    partition is first seen after an assignment, advanced record by record, forgotten on
    revocation. Faust only delivers; this decides what is new, what is a re-read and what
    is a hole."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.assigned: set[TP] = set()
        self.next: dict[TP, int] = {}
        self._sought: dict[TP, tuple[int, float]] = {}

    async def start_of(self, tps: set[TP]) -> None:
        """Fetch where processing resumes for newly seen partitions (the committed offset)."""
        # Faust's consumer runs aiokafka in its own service thread: ask it there.
        thread: Any = self.app.consumer._thread  # type: ignore[attr-defined]
        aio = thread._ensure_consumer()
        found: dict[TP, int] = {}
        for tp in tps:
            offset = await thread.call_thread(aio.committed, TopicPartition(tp.topic, tp.partition))
            if offset is not None and offset >= 0:
                found[tp] = int(offset)
        missing = [TopicPartition(tp.topic, tp.partition) for tp in tps if tp not in found]
        if missing:  # nothing committed yet: auto_offset_reset is "earliest"
            first = await thread.call_thread(aio.beginning_offsets, missing)
            for atp, offset in first.items():
                found[TP(atp.topic, atp.partition)] = int(offset)
        self.next.update(found)

    async def select(self, received: Sequence[Any]) -> list[Any]:
        """The messages of ``received`` to process now, in order; seeks back over holes."""
        fresh = {m.tp for m in received} & self.assigned
        fresh -= self.next.keys()
        if fresh:
            await self.start_of(fresh)
        chosen = []
        holes: dict[TP, int] = {}
        for message in received:
            tp = message.tp
            if tp not in self.assigned or tp in holes:
                continue  # not ours any more, or after a hole in this batch
            expected = self.next[tp]
            if message.offset < expected:
                continue  # read again (a seek, a rebalance): already processed
            if message.offset > expected:
                holes[tp] = expected  # the consumer skipped records: never jump over them
                continue
            self.next[tp] = expected + 1
            self._sought.pop(tp, None)
            chosen.append(message)
        now = time.monotonic()
        for tp, offset in holes.items():
            last = self._sought.get(tp)
            if last is None or last[0] != offset or now - last[1] > RESEEK_AFTER_S:
                log.warning("correlator: %s:%d skipped to a later offset, reading again from %d",
                            tp.topic, tp.partition, offset)
                self._sought[tp] = (offset, now)
                await self.app.consumer.seek(tp, offset)
        return chosen

    def assign(self, tps: set[TP]) -> None:
        self.assigned = set(tps)

    def revoke(self, tps: set[TP]) -> None:
        self.assigned -= tps
        for tp in tps:
            self.next.pop(tp, None)
            self._sought.pop(tp, None)


class Effects:
    """The broker effects of processed batches (state writes, outputs, commit), one batch
    after another, while the next batch is computed.

    A batch's effects start only when the previous batch's are done, so the broker sees
    exactly the sequence of writes and commits that running the batches one by one gives
    (the crash and redelivery reasoning of the module docstring is unchanged); and
    :meth:`submit` returns only when the previous batch's effects are done, so at most one
    batch is computed ahead of what is committed. Meanwhile the agent computes the next
    batch and the check helpers check it: measured on the embedded broker, the waits for
    acknowledgements were a quarter of a worker's time with the CPU otherwise idle. A
    failure of an effect stops the process (``os._exit``) without any later commit.
    """

    def __init__(self, on_failure: Callable[[BaseException], None] | None = None) -> None:
        self._last: asyncio.Task[None] | None = None
        self._on_failure = on_failure or _stop_now

    async def submit(self, effect: Coroutine[Any, Any, None]) -> None:
        """Run ``effect`` after the previous one; return once the previous one is done."""
        previous = self._last
        task = asyncio.ensure_future(self._after(previous, effect))
        task.add_done_callback(self._done)
        self._last = task
        if previous is not None:
            await asyncio.shield(previous)

    @staticmethod
    async def _after(previous: asyncio.Task[None] | None, effect: Coroutine[Any, Any, None]) -> None:
        if previous is not None:
            try:
                await asyncio.shield(previous)
            except BaseException:
                effect.close()  # never run after a failed predecessor
                raise
        await effect

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._on_failure(exc)

    async def drain(self) -> None:
        """Wait until every submitted effect is done (a revocation, a stop)."""
        if self._last is not None:
            await asyncio.shield(self._last)


def _stop_now(exc: BaseException) -> None:
    # (A task cancelled means the worker is stopping: nothing after it is committed either.)
    log.critical("correlator: a batch's effects failed, stopping without commit",
                 exc_info=(type(exc), exc, exc.__traceback__))
    logging.shutdown()
    os._exit(EXIT_FATAL)


def _deliver_to(app: faust.App, topics: set[str], inbox: asyncio.Queue[Any]) -> None:
    """Faust's conductor hands each fetched message of ``topics`` to ``inbox`` as it is.

    Its own handler decodes every message into an Event (the serializers, ``create_event``,
    reference counts) and puts it on the agent's channel with the pressure callbacks: ≈ 10 µs
    a message, for raw bytes that the engine reads from the message itself. This keeps what
    matters of it: the flow control (delivery waits while Faust suspends it, during a
    rebalance) and a bounded buffer (a full inbox holds the fetch loop, as a full channel
    did). Other topics keep Faust's handler."""
    conductor: Any = app.topics
    faust_handler = conductor._build_handler

    def build(tp: TP, channels: Any) -> Any:
        if tp.topic not in topics:
            return faust_handler(tp, channels)
        acquire_flow_control = app.flow_control.acquire
        put, put_nowait, full = inbox.put, inbox.put_nowait, inbox.full

        async def on_message(message: Any) -> None:
            await acquire_flow_control()
            if full():
                await put(message)
            else:
                put_nowait(message)

        return on_message

    conductor._build_handler = build


def make_app(settings: Settings, bootstrap: str, tuning: Tuning = DEFAULT_TUNING) -> faust.App:
    """The Faust app; ``bootstrap`` is resolved by the caller (embedded broker or Kafka)."""
    engine = build_engine(settings, tuning.check_processes)
    _FETCH_WAIT_MS[0] = tuning.fetch_wait_ms
    _patch_fetch_wait()
    _patch_drain()
    session_s = settings.session_timeout_ms / 1000
    datadir = settings.var_dir / "correlator" / tuning.app_id  # not the current directory
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        tuning.app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=str(datadir),
        processing_guarantee="at_least_once",
        web_enabled=False,
        web_tables_enabled=False,
        topic_partitions=PARTITIONS,
        topic_replication_factor=1,
        topic_disable_leader=True,
        producer_linger_ms=tuning.linger_ms,
        producer_acks=-1,
        producer_max_batch_size=256 * 1024,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.3, session_s / 4),
        broker_request_timeout=max(settings.request_timeout_ms / 1000, session_s + 5),
        broker_rebalance_timeout=max(10.0, session_s * 2),
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=2000,
        stream_buffer_maxsize=max(4096, tuning.batch_max * 2),
        # Revocation waits on our own lock (below), not on Faust's count of unacked messages.
        stream_wait_empty=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    names = source_topics()
    # acks=False: Faust never commits these topics; the agent commits what it processed.
    source = app.topic(*names, key_type=bytes, value_type=bytes, acks=False,
                       key_serializer="raw", value_serializer="raw")
    changelog = changelog_topic(tuning.app_id)
    store = PersonStore(changelog)
    positions = Positions(app)
    heap = HeapPolicy(tuning.gc_full_every_s)
    lock = asyncio.Lock()

    async def send_acked(topic: str, key: bytes, value: bytes | None, partition: int) -> int:
        future = await app.producer.send(topic, key, value, partition, None, None)
        return int((await future).offset)

    def loader() -> AIOKafkaConsumer:
        return plain_consumer(settings, bootstrap, client_id=f"{tuning.app_id}-state-loader")

    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0]
        async with lock:  # after the batch in progress, before the next one
            await effects.drain()  # what was processed is on the broker and committed
            ours = {tp for tp in revoked if tp.topic in names}
            positions.revoke(ours)
            still = {tp.partition for tp in positions.assigned}
            store.drop({tp.partition for tp in ours} - still)

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned: set[TP] = args[0]
        async with lock:
            positions.assign({tp for tp in assigned if tp.topic in names})

    # (mode's signal stubs do not accept a coroutine function with *args: cast.)
    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    app.on_partitions_assigned.connect(cast(Any, on_assigned))

    effects = Effects()

    async def apply(writes: list[Output], outputs: list[Output], offsets: dict[TP, int]) -> None:
        # State first, and durably: a situation event is only ever published for a state
        # already on the changelog, so version N of a situation means one content forever.
        await send_batches(app.producer, writes)
        await send_batches(app.producer, outputs)
        # Every effect is on the broker: commit exactly what was processed (not revoked:
        # a revocation drains the effects first, and Faust drops offsets of unassigned
        # partitions). Faust's own commit follows acks: it is given the offsets instead.
        if offsets:  # (a retention sweep's writes commit no offset)
            consumer: Any = app.consumer
            await consumer._commit(offsets)

    async def handle(received: Sequence[Any]) -> None:
        messages = await positions.select(received)
        if not messages:
            return
        await store.load({m.partition for m in messages}, send_acked, loader)
        records = [_record(m) for m in messages]
        steps = engine.steps(records, store.get, every=STEP_RECORDS)
        batch: Batch
        while True:  # the previous batch's effects progress between the steps
            try:
                next(steps)
            except StopIteration as end:
                batch = end.value
                break
            await asyncio.sleep(0)
        for key, (partition, value) in batch.writes.items():
            store.put(key, partition, value)
        done = {m.tp for m in messages}
        # The offsets now: the next batch advances ``positions`` before this one commits.
        offsets = {tp: positions.next[tp] for tp in done if tp in positions.next}
        writes = [Output(changelog, key, value, partition)
                  for key, (partition, value) in batch.writes.items()]
        await effects.submit(apply(writes, batch.outputs, offsets))
        heap.after_batch()

    inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(4096, tuning.batch_max * 2))
    _deliver_to(app, set(names), inbox)

    async def sweep_step() -> int:
        """One page of the retention sweep, between batches (under the batch lock, so a
        state is never swept and processed at once); its writes go the way of a batch's."""
        async with lock:
            writes = engine.sweep(store.sweep_page(tuning.sweep_page))
            for key, (partition, value) in writes.items():
                store.put(key, partition, value)
            if writes:
                await effects.submit(apply([Output(changelog, key, value, partition)
                                            for key, (partition, value) in writes.items()], [], {}))
        return len(writes)

    async def sweep() -> None:
        try:
            await sweep_step()
        except Exception:  # as a batch: stop rather than go on with a state not written
            log.critical("correlator: retention sweep failed, stopping", exc_info=True)
            logging.shutdown()
            os._exit(EXIT_FATAL)

    cast(Any, app).timer(tuning.sweep_every_s)(sweep)  # (faust's timer decorator is untyped)

    @app.agent(source, concurrency=1)
    async def correlate(stream: Any) -> None:
        # The agent subscribes Faust to the topics (group membership, assignment, fetching);
        # the messages themselves come from ``inbox`` (see _deliver_to), in whole batches.
        async for messages in take_batches(inbox, tuning.batch_max, tuning.batch_wait_s):
            try:
                async with lock:
                    await handle(messages)
            except Exception:  # a bug or a broker failure: stop, commit nothing more
                log.critical("correlator: unexpected failure, stopping without commit", exc_info=True)
                logging.shutdown()
                os._exit(EXIT_FATAL)

    return app


class _Partitioner:
    """aiokafka's default partitioner (murmur2 of the key over the topic's partitions), with
    the engine's faster murmur2 (equal to Kafka's, see tests/correlator/test_fast_paths.py);
    ``None`` (aiokafka decides) when the topic's partitions are not yet known or not 0..n-1."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.metadata = producer._metadata
        self.counts: dict[str, int | None] = {}

    def __call__(self, topic: str, key: bytes | None) -> int | None:
        if key is None:
            return None
        if topic not in self.counts:
            parts = self.metadata.partitions_for_topic(topic)
            self.counts[topic] = len(parts) if parts and parts == set(range(len(parts))) else None
        n = self.counts[topic]
        return None if n is None else (murmur2(key) & 0x7FFFFFFF) % n


async def send_batches(producer: Any, outputs: Sequence[Output]) -> None:
    """Send ``outputs`` and wait until the broker has acknowledged every one.

    One record batch per topic partition (in the outputs' order within it), built with
    aiokafka's ``create_batch``/``send_batch``: a future per batch instead of a future, a
    partitioner call and an accumulator append per record (≈ 12 µs of the worker's time per
    record measured here, ≈ 4 µs batched). A record whose partition aiokafka must choose
    (the topic's metadata not known yet) is sent on its own, as before."""
    if not outputs:
        return
    aio: AIOKafkaProducer = producer._ensure_producer()
    partition_of = _Partitioner(aio)
    groups: dict[tuple[str, int], list[Output]] = {}
    pending = []
    for out in outputs:
        partition = out.partition if out.partition is not None else partition_of(out.topic, out.key)
        if partition is None:
            pending.append(await aio.send(out.topic, out.value, key=out.key, timestamp_ms=out.timestamp_ms,
                                          headers=list(out.headers) or None))
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
                pending.append(await aio.send_batch(builder, topic, partition=partition))
                builder = aio.create_batch()
                if builder.append(key=out.key, value=out.value, timestamp=out.timestamp_ms,
                                  headers=headers) is not None:
                    continue
            # Larger than a batch can hold: on its own (aiokafka sizes a batch for it).
            pending.append(await aio.send(topic, out.value, key=out.key, partition=partition,
                                          timestamp_ms=out.timestamp_ms, headers=headers or None))
            builder = aio.create_batch()
        if builder.record_count():
            builder.close()  # complete: producer.send() must not add to it
            pending.append(await aio.send_batch(builder, topic, partition=partition))
    await asyncio.gather(*pending)


#: While filling a batch, look at the queue again after this long.
_BATCH_POLL_S = 0.002


async def take_batches(queue: Any, max_: int, within: float) -> AsyncIterator[list[Any]]:
    """Batches of at most ``max_`` events from ``queue``: from the first event, whatever
    arrives within ``within`` seconds, returned at once when full."""
    loop = asyncio.get_running_loop()
    ended = False
    while not ended:
        try:  # Faust ends a channel by throwing StopAsyncIteration into its queue
            events = [await queue.get()]
        except StopAsyncIteration:
            return
        deadline = loop.time() + within
        while not ended:
            try:
                while len(events) < max_ and not queue.empty():
                    events.append(queue.get_nowait())
            except StopAsyncIteration:
                ended = True
                break
            remaining = deadline - loop.time()
            if len(events) >= max_ or remaining <= 0:
                break
            await asyncio.sleep(min(remaining, _BATCH_POLL_S))
        yield events


def _record(message: Any) -> Record:
    headers = message.headers or ()
    items = headers.items() if hasattr(headers, "items") else headers
    return Record(
        topic=message.topic, partition=message.partition, offset=message.offset,
        timestamp_ms=int((message.timestamp or 0) * 1000), key=message.key, value=message.value,
        headers={k: bytes(v) for k, v in items if v is not None},
    )
