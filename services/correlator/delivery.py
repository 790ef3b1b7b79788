"""Raw delivery: each fetched source message, as it is, to the agent's inbox; batches out.

Faust's conductor would decode every message into an Event (the serializers,
``create_event``, reference counts) and put it on the agent's channel with the pressure
callbacks, for raw bytes that the engine reads from the message itself. :func:`inbox_handler`
keeps what matters of it: the flow control (a delivery waits while Faust suspends the flow,
during a rebalance) and a bounded buffer (a full inbox holds the fetch loop, as a full
channel did). The agent takes the inbox in whole batches (:func:`take_batches`), not event
by event through Faust's Stream iterator. :mod:`.faust_seam` plugs the handler in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from services.correlator.engine import Record

#: Waits until Faust lets the flow of messages go on (it suspends it during a rebalance).
AcquireFlow = Callable[[], Awaitable[None]]
#: Faust's fetch loop calls it with each message.
OnMessage = Callable[[Any], Awaitable[None]]

#: While filling a batch, look at the queue again after this long.
_BATCH_POLL_S = 0.002


def inbox_handler(inbox: asyncio.Queue[Any]) -> Callable[[AcquireFlow], OnMessage]:
    """For a flow-control ``acquire``, the callback Faust's fetch loop calls per message."""

    def build(acquire_flow_control: AcquireFlow) -> OnMessage:
        put, put_nowait, full = inbox.put, inbox.put_nowait, inbox.full

        async def on_message(message: Any) -> None:
            await acquire_flow_control()
            if full():
                await put(message)
            else:
                put_nowait(message)

        return on_message

    return build


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


def to_record(message: Any) -> Record:
    """The engine's record of a message as aiokafka fetched it."""
    headers = message.headers or ()
    items = headers.items() if hasattr(headers, "items") else headers
    return Record(
        topic=message.topic, partition=message.partition, offset=message.offset,
        timestamp_ms=int((message.timestamp or 0) * 1000), key=message.key, value=message.value,
        headers={k: bytes(v) for k, v in items if v is not None},
    )
