"""The worker's shortcuts around Faust's per-message machinery behave as what they replace.

- :func:`services.correlator.delivery.take_batches`: batches of at most ``max_`` events, in order,
  as soon as full or ``within`` after the first one; ends on Faust's StopAsyncIteration;
- :class:`services.correlator.sending.KeyPartitioner`: the partition aiokafka's default
  partitioner would choose, or None when it cannot know;
- the patched ``Consumer.wait_first`` (:mod:`services.correlator.faust_seam`): a delivery
  that does not block completes at once with ``wait_first``'s result; one that blocks still
  races the flow suspension (cancelled by it, or completed when it unblocks), as in Faust.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from services.correlator import faust_seam
from services.correlator.delivery import take_batches
from services.correlator.sending import KeyPartitioner


async def test_take_batches_full_batches_at_once_then_the_rest_within() -> None:
    flow = FlowControlEvent()
    flow.resume()
    queue: ThrowableQueue = ThrowableQueue(flow_control=flow)
    for i in range(25):
        queue.put_nowait(i)
    gen = take_batches(queue, 10, 0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await anext(gen) == list(range(10))
    assert await anext(gen) == list(range(10, 20))
    assert loop.time() - t0 < 0.04  # full batches do not wait
    assert await anext(gen) == list(range(20, 25))
    assert loop.time() - t0 >= 0.045  # a partial batch waits for more, up to `within`

    async def later() -> None:
        await asyncio.sleep(0.01)
        queue.put_nowait(99)

    task = asyncio.create_task(later())
    queue.put_nowait(98)
    assert await anext(gen) == [98, 99]  # what came within the wait joins the batch
    await task
    queue.put_nowait(1)
    asyncio.get_running_loop().call_later(0.01, queue._throw, StopAsyncIteration())
    assert await anext(gen) == [1]  # ended while filling: what was taken is handed over
    try:
        await anext(gen)
    except StopAsyncIteration:
        pass
    else:  # pragma: no cover
        raise AssertionError("take_batches did not end")


class _Metadata:
    def __init__(self, parts: dict[str, set[int]]) -> None:
        self.parts = parts

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.parts.get(topic)


class _Producer:
    def __init__(self, metadata: _Metadata) -> None:
        self._metadata = metadata

    def _ensure_producer(self) -> Any:
        return self


def test_partitioner_equals_aiokafka_default() -> None:
    meta = _Metadata({"four": {0, 1, 2, 3}, "one": {0}, "odd": {0, 2}})
    ours = KeyPartitioner(_Producer(meta))  # type: ignore[arg-type]  # only the metadata is read
    theirs = DefaultPartitioner()
    for n in range(2000):
        key = os.urandom(n % 50 + 1)
        for topic in ("four", "one"):
            parts = sorted(meta.parts[topic])
            assert ours(topic, key) == theirs(key, parts, parts)
    assert ours("odd", b"k") is None  # not 0..n-1: aiokafka decides
    assert ours("unknown", b"k") is None  # no metadata yet: aiokafka decides
    assert ours("four", None) is None  # no key: aiokafka's random choice


class _Consumer(faust_aiokafka.Consumer):
    """Only what the patched wait_first touches (the flow event and Service.wait_first)."""

    def __init__(self) -> None:  # no Faust app: Service attributes wait_first needs
        self.suspend_flow = asyncio.Event()
        self._stopped = asyncio.Event()
        self._crashed = asyncio.Event()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:  # type: ignore[override]
        return asyncio.get_running_loop()


async def test_patched_wait_first_fast_and_blocking_deliveries() -> None:
    faust_seam.install(100)
    consumer = _Consumer()
    done: list[str] = []

    async def quick() -> str:
        done.append("quick")
        return "q"

    result = await consumer.wait_first(quick(), consumer.suspend_flow.wait())
    assert done == ["quick"] and list(result.results) == ["q"] and not result.stopped

    gate = asyncio.Event()

    async def blocked() -> str:
        await asyncio.sleep(0)
        await gate.wait()
        done.append("blocked")
        return "b"

    asyncio.get_running_loop().call_later(0.01, gate.set)
    result = await consumer.wait_first(blocked(), consumer.suspend_flow.wait())
    assert done[-1] == "blocked" and "b" in list(result.results)

    cancelled: list[bool] = []

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    asyncio.get_running_loop().call_later(0.01, consumer.suspend_flow.set)
    await consumer.wait_first(stuck(), consumer.suspend_flow.wait())
    await asyncio.sleep(0)
    assert cancelled == [True]  # the flow suspension won the race and cancelled the delivery

    async def failing() -> None:
        raise KeyError("x")

    consumer.suspend_flow.clear()
    try:
        await consumer.wait_first(failing(), consumer.suspend_flow.wait())
    except KeyError:
        pass
    else:  # pragma: no cover
        raise AssertionError("the delivery's exception was swallowed")
