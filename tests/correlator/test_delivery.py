"""Raw delivery (no broker): every fetched source message reaches the agent once, in order,
through a bounded inbox that holds the fetch loop when full and a flow control that holds it
during a rebalance; other topics keep Faust's own handler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from mode.utils.queues import FlowControlEvent

from services.correlator import faust_seam
from services.correlator.delivery import inbox_handler, take_batches, to_record


@dataclass(frozen=True)
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes = b"k"
    value: bytes = b"v"
    timestamp: float | None = 1.5
    headers: Any = None


async def test_every_message_once_in_order_through_a_full_inbox_and_a_suspended_flow() -> None:
    inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=3)
    flow = FlowControlEvent()
    flow.resume()
    deliver = inbox_handler(inbox)(flow.acquire)
    sent = [Msg("help.signals.caf.v1", 0, i) for i in range(50)]

    async def fetch_loop() -> None:  # as Faust's: one delivery after another
        for i, message in enumerate(sent):
            if i == 20:
                flow.suspend()  # a rebalance starts
                asyncio.get_running_loop().call_later(0.02, flow.resume)
            await deliver(message)

    fetching = asyncio.create_task(fetch_loop())
    await asyncio.sleep(0.01)
    assert not fetching.done() and inbox.full()  # a full inbox holds the fetch loop
    got: list[Any] = []
    batches = take_batches(inbox, 7, 0.005)
    while len(got) < len(sent):
        batch = await anext(batches)
        assert 1 <= len(batch) <= 7
        got += batch
    await fetching
    assert got == sent and inbox.empty()  # each once, in order


async def test_the_flow_control_holds_delivery_until_resumed() -> None:
    inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
    flow = FlowControlEvent()
    flow.suspend()
    delivery = asyncio.create_task(inbox_handler(inbox)(flow.acquire)(Msg("t", 0, 0)))
    await asyncio.sleep(0.01)
    assert inbox.empty() and not delivery.done()
    flow.resume()
    await delivery
    assert inbox.get_nowait() == Msg("t", 0, 0)


def test_only_the_source_topics_are_routed_to_the_inbox() -> None:
    faust_built: list[TP] = []

    def faust_handler(tp: TP, channels: Any) -> str:
        faust_built.append(tp)
        return "faust"

    app: Any = SimpleNamespace(topics=SimpleNamespace(_build_handler=faust_handler),
                               flow_control=SimpleNamespace(acquire="acquire"))
    faust_seam.route_to_inbox(app, {"src"}, lambda acquire: f"ours({acquire})")  # type: ignore[arg-type,return-value]
    assert app.topics._build_handler(TP("src", 3), set()) == "ours(acquire)"
    assert app.topics._build_handler(TP("other", 0), set()) == "faust"
    assert faust_built == [TP("other", 0)]


def test_a_record_is_the_message_as_fetched() -> None:
    record = to_record(Msg("help.signals.caf.v1", 2, 9, headers=[("h", b"x"), ("none", None)]))
    assert (record.topic, record.partition, record.offset, record.timestamp_ms) == ("help.signals.caf.v1", 2, 9, 1500)
    assert (record.key, record.value, record.headers) == (b"k", b"v", {"h": b"x"})
    assert to_record(Msg("t", 0, 0, timestamp=None, headers={"a": b"1"})).headers == {"a": b"1"}
