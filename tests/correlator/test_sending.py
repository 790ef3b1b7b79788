"""Outputs leave as one record batch per topic partition, in order within it, and
:func:`send_batches` returns only once every one is acknowledged (fake aiokafka producer)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.correlator.engine import Output
from services.correlator.sending import send_batches


class Builder:
    def __init__(self, room: int) -> None:
        self.room = room
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.closed = False

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: Any, headers: Any) -> object | None:
        if len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)

    def close(self) -> None:
        self.closed = True


class Metadata:
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0, 1, 2, 3} if topic == "known" else None


class FakeAio:
    def __init__(self, room: int = 3, fail: bool = False) -> None:
        self._metadata = Metadata()
        self.room = room
        self.fail = fail
        self.sent: list[tuple[str, int | None, list[bytes | None]]] = []
        self.acks: list[asyncio.Future[None]] = []

    def _ensure_producer(self) -> FakeAio:
        return self

    def create_batch(self) -> Builder:
        return Builder(self.room)

    def _ack(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(future)
        return future

    async def send_batch(self, builder: Builder, topic: str, *, partition: int) -> asyncio.Future[None]:
        self.sent.append((topic, partition, [v for _, v in builder.records]))
        return self._ack()

    async def send(self, topic: str, value: bytes | None, *, key: Any = None, partition: int | None = None,
                   timestamp_ms: Any = None, headers: Any = None) -> asyncio.Future[None]:
        self.sent.append((topic, partition, [value]))
        return self._ack()


def out(topic: str, value: bytes, partition: int | None) -> Output:
    return Output(topic, b"key", value, partition)


async def test_one_batch_per_partition_in_order_and_acknowledged() -> None:
    aio = FakeAio(room=3)
    outputs = [out("t", b"a", 0), out("t", b"b", 1), out("t", b"c", 0), out("t", b"d", 0), out("t", b"e", 0),
               out("unknown", b"f", None)]
    sending = asyncio.create_task(send_batches(aio, outputs))
    await asyncio.sleep(0.01)
    assert ("unknown", None, [b"f"]) in aio.sent  # partition unknown: aiokafka chooses
    assert [s for s in aio.sent if s[0] == "t"] == [("t", 0, [b"a", b"c", b"d"]), ("t", 0, [b"e"]),
                                                    ("t", 1, [b"b"])]
    assert not sending.done()  # not before every acknowledgement
    for ack in aio.acks:
        ack.set_result(None)
    await sending


async def test_a_keyed_record_goes_where_the_default_partitioner_puts_it_and_a_failure_raises() -> None:
    aio = FakeAio()
    sending = asyncio.create_task(send_batches(aio, [out("known", b"x", None)]))
    await asyncio.sleep(0.01)
    assert len(aio.sent) == 1 and aio.sent[0][1] in {0, 1, 2, 3}
    aio.acks[0].set_exception(ConnectionError("no ack"))
    with pytest.raises(ConnectionError):
        await sending


async def test_the_offsets_after_each_partition_s_last_acknowledged_record_are_returned() -> None:
    """A batch's acknowledgement carries its base offset; its records follow it (the local
    state store keeps, per changelog partition, the offset its rows reflect)."""
    aio = FakeAio(room=2)
    sending = asyncio.create_task(send_batches(aio, [out("t", b"a", 0), out("t", b"b", 0), out("t", b"c", 0),
                                                     out("t", b"d", 1)]))
    await asyncio.sleep(0.01)
    for ack, base in zip(aio.acks, (10, 12, 40), strict=True):  # t/0: [a, b] then [c]; t/1: [d]
        ack.set_result(type("Ack", (), {"offset": base})())  # type: ignore[arg-type]
    assert await sending == {("t", 0): 13, ("t", 1): 41}
