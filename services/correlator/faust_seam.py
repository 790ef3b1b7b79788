"""Everything the correlator changes in Faust, mode and aiokafka, or reads from their insides.

Faust stays the worker framework: group membership, rebalances, fetching, the producer.
What the worker does differently lives here and nowhere else, each item with its reason;
``tests/correlator/test_faust_seam.py`` checks that every attribute, method and signature
named below is still where we rely on it, and fails naming what moved when a new release of
faust-streaming, mode-streaming or aiokafka (:data:`PINNED`) moves it.

Process-wide patches (installed by :func:`install`, once; idempotent; ``inspect.unwrap``
gives Faust's original):

- ``AIOKafkaConsumerThread._create_worker_consumer``: faust-streaming builds the worker's
  aiokafka consumer with ``fetch_max_wait_ms=1500`` written in the code, which sets the
  latency of a signal reaching an idle worker, and without ``fetch_max_bytes``, so aiokafka's
  default of 50 MiB per fetch response applies; the embedded broker does not honour the
  per-partition limit (``max_partition_fetch_bytes``), only this one, and aiokafka keeps a
  response's records until they are consumed, one response per partition: before a backlog,
  the worker held up to the whole backlog in its consumer thread (its memory grew with the
  volume: docs/architecture.md, "Memory"). The consumer it returns gets our wait and our
  byte bound instead (aiokafka's ``AIOKafkaConsumer._fetch_max_wait_ms`` and
  ``_fetch_max_bytes``, handed to its fetcher by ``start``).
- ``faust.transport.drivers.aiokafka.Consumer.wait_first``: Faust's fetch loop
  (``Consumer._drain_messages``) delivers each message with
  ``wait_first(callback(message), suspend_flow.wait())``: four tasks and an
  ``asyncio.wait`` per message, though a delivery almost never blocks. The delivery is
  stepped once first; if it finishes without blocking, that is the result ``wait_first``
  would have given (mode's ``WaitResults``); if it blocks, the rest of it goes to Faust's
  ``wait_first``, racing the flow suspension exactly as before. It is recognised by its
  second argument being a coroutine of ``asyncio.Event.wait``, and only while the consumer
  is not suspended, stopped or crashed (mode's ``Service._stopped``, ``_crashed``).

Per-app changes:

- :func:`route_to_inbox` replaces the conductor's ``_build_handler`` for the source topics:
  each fetched message goes to the agent's inbox as it is (see :mod:`.delivery`), not
  decoded into an Event and put on the agent's channel.

Stopping (SIGTERM or SIGINT; the platform's rule: services.platform.stopping):

- :func:`on_stopping`: a coroutine awaited through ``App.on_before_shutdown``, which
  ``App.on_stop`` sends after it stopped the fetcher and before the app's children (the
  agents, the consumer and its thread, the producer) are stopped — mode's ``Service.stop``
  runs ``on_stop`` before ``_stop_children``: the last moment at which the batch in
  progress can still be finished, its outputs sent and its offsets committed. Without it
  the agent was cancelled in the middle of a batch and the checkpoint then found the
  consumer's thread loop closed (exit 75, the batch read again).
- :func:`worker`: Faust's ``Worker`` whose ``_schedule_shutdown`` (mode's, where both
  signal handlers of the worker lead) first calls ``on_signal``: the stop's bound starts
  counting when the signal comes, not when Faust reaches the drain.

Private reads (no patch):

- :func:`committed_offsets`: the consumer's aiokafka client (``Consumer._thread``,
  ``ConsumerThread._ensure_consumer``), asked on its own thread (``call_thread``) for the
  group's committed offsets and the partitions' first offsets;
- :func:`commit`: ``Consumer._commit(offsets)``, Faust's commit without its acks
  bookkeeping (the source topic has ``acks=False``; the worker commits what it processed);
- :func:`aiokafka_producer`: ``Producer._ensure_producer()``, the aiokafka producer under
  Faust's, for record batches (:mod:`.sending`) and its ``_metadata`` (the partition counts
  the key partitioner needs).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.services import WaitResults

#: The releases this module was written against: the pins of ``pyproject.toml``, checked
#: against them and against what is installed by ``tests/correlator/test_faust_seam.py``.
PINNED = {"faust-streaming": ">=0.15.3,<0.16", "mode-streaming": ">=0.7.1,<0.8", "aiokafka": ">=0.12,<0.15"}

_FETCH_WAIT_MS: list[int] = [1500]
_FETCH_MAX_BYTES: list[int] = [52_428_800]  # aiokafka's default
_PATCHED = "_help_patched"


def install(fetch_wait_ms: int, fetch_max_bytes: int = 1_048_576) -> None:
    """Install the process-wide patches (once) and set the worker consumer's fetch wait and
    the bytes one fetch response brings at most."""
    _FETCH_WAIT_MS[0] = fetch_wait_ms
    _FETCH_MAX_BYTES[0] = fetch_max_bytes
    _wrap(faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer", _with_fetch_limits)
    _wrap(faust_aiokafka.Consumer, "wait_first", _stepping_first)


def _wrap(cls: type, name: str, wrapper: Callable[[Any], Any]) -> None:
    """Replace ``cls.<name>`` by ``wrapper(original)``, once per class (``functools.wraps``
    keeps the original reachable)."""
    if cls.__dict__.get(_PATCHED + name):
        return
    original = getattr(cls, name)
    setattr(cls, name, functools.wraps(original)(wrapper(original)))
    setattr(cls, _PATCHED + name, True)


def _with_fetch_limits(original: Any) -> Any:
    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _FETCH_WAIT_MS[0]
        consumer._fetch_max_bytes = _FETCH_MAX_BYTES[0]
        return consumer

    return create


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


def _stepping_first(original: Any) -> Any:
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

    return wait_first


def on_stopping(app: faust.App, drain: Callable[[], Awaitable[None]]) -> None:
    """Await ``drain()`` when the app stops, with the fetcher stopped and the consumer and
    the producer still running."""

    async def before_shutdown(sender: Any, *args: Any, **kwargs: Any) -> None:
        await drain()

    # (mode's signal stubs do not accept a coroutine function with *args: cast.)
    app.on_before_shutdown.connect(cast(Any, before_shutdown))


def worker(app: faust.App, on_signal: Callable[[], None], **options: Any) -> faust.Worker:
    """Faust's worker for ``app`` (``options`` as ``faust.Worker``'s), calling ``on_signal()``
    when a stop signal (SIGTERM, SIGINT) comes, before Faust begins stopping."""

    class _Worker(faust.Worker):
        def _schedule_shutdown(self, signal: Any) -> None:
            on_signal()
            super()._schedule_shutdown(signal)

    return _Worker(app, **options)


def route_to_inbox(app: faust.App, topics: set[str],
                   handler: Callable[[Callable[[], Awaitable[None]]], Callable[[Any], Awaitable[None]]]) -> None:
    """The conductor hands each fetched message of ``topics`` to ``handler(acquire_flow)``'s
    callback (built once per partition); other topics keep Faust's own handler."""
    conductor: Any = app.topics
    faust_handler = conductor._build_handler

    def build(tp: TP, channels: Any) -> Any:
        if tp.topic not in topics:
            return faust_handler(tp, channels)
        return handler(app.flow_control.acquire)

    conductor._build_handler = build


def committed_offsets(app: faust.App) -> Callable[[set[TP]], Awaitable[dict[TP, int]]]:
    """For a set of partitions, where processing resumes: the group's committed offset, or
    the partition's first offset where nothing is committed (``auto_offset_reset`` earliest)."""

    async def committed(tps: set[TP]) -> dict[TP, int]:
        # Faust's consumer runs aiokafka in its own service thread: ask it there.
        thread: Any = app.consumer._thread  # type: ignore[attr-defined]
        aio = thread._ensure_consumer()
        found: dict[TP, int] = {}
        for tp in tps:
            offset = await thread.call_thread(aio.committed, TopicPartition(tp.topic, tp.partition))
            if offset is not None and offset >= 0:
                found[tp] = int(offset)
        missing = [TopicPartition(tp.topic, tp.partition) for tp in tps if tp not in found]
        if missing:
            first = await thread.call_thread(aio.beginning_offsets, missing)
            for atp, offset in first.items():
                found[TP(atp.topic, atp.partition)] = int(offset)
        return found

    return committed


def commit(app: faust.App) -> Callable[[dict[TP, int]], Awaitable[None]]:
    """Commit these next offsets now (Faust drops those of partitions no longer assigned)."""

    async def commit_offsets(offsets: dict[TP, int]) -> None:
        consumer: Any = app.consumer
        await consumer._commit(offsets)

    return commit_offsets


def seek(app: faust.App) -> Callable[[TP, int], Awaitable[None]]:
    """Read a partition again from an offset (Faust's public ``Consumer.seek``, awaited)."""

    async def seek_to(tp: TP, offset: int) -> None:
        await app.consumer.seek(tp, offset)

    return seek_to


def aiokafka_producer(producer: Any) -> AIOKafkaProducer:
    """The aiokafka producer under Faust's producer (started with it)."""
    aio: AIOKafkaProducer = producer._ensure_producer()
    return aio


def producer_metadata(aio: AIOKafkaProducer) -> Any:
    """aiokafka's cluster metadata of a producer (``partitions_for_topic``)."""
    return aio._metadata
