"""A fake of the part of aiokafka's consumer the tracked consumer uses (no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition


@dataclass(frozen=True)
class Message:
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp: int = 1_765_000_000_000
    headers: tuple[tuple[str, bytes], ...] = ()


class FakeSource:
    """Enough of AIOKafkaConsumer: a log per partition, a position per assigned partition,
    and a group of one whose assignment the test changes (``rebalance``)."""

    def __init__(self, log: dict[TopicPartition, list[Message]],
                 assignment: Sequence[TopicPartition] | None = None) -> None:
        self.log = log
        self.assignment = list(assignment if assignment is not None else log)
        self.position: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.listener: ConsumerRebalanceListener | None = None
        self.started = self.stopped = False

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None:
        assert all(tp.topic in topics for tp in self.assignment)
        self.listener = listener

    async def start(self) -> None:
        self.started = True
        assert self.listener is not None
        await self.listener.on_partitions_assigned(self.assignment)

    async def stop(self) -> None:
        self.stopped = True

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        out: dict[TopicPartition, list[Any]] = {}
        room = max_records or 1_000_000
        for tp in self.assignment:
            start = self.position[tp]
            taken = self.log[tp][start:start + room]
            if taken:
                out[tp] = taken
                self.position[tp] = start + len(taken)
                room -= len(taken)
        if not out:
            await asyncio.sleep(0.01)
        return out

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))
        self.position[partition] = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool:
        for tp in partitions:
            self.seeks.append((tp, 0))
            self.position[tp] = 0
        return True

    async def rebalance(self, assignment: Sequence[TopicPartition]) -> None:
        assert self.listener is not None
        await self.listener.on_partitions_revoked(self.assignment)
        self.assignment = list(assignment)
        self.position = {}
        await self.listener.on_partitions_assigned(self.assignment)
