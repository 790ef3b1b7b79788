"""Every partition a correlator reads, in memory, driven through one :class:`Engine`.

The topics a worker consumes (signal topics, consents, the repartition topic) are queues per
partition; each step takes a batch from one queue, runs the engine, applies its state writes
and routes its outputs as the broker would: the repartition topic back into its queues, the
situations into a compacted map (latest value per situation id, a tombstone removes it).
The order queues are served in is drawn at random, so hand-overs between partitions race
the records that follow them. :meth:`Cluster.crash_next` models the worst a ``kill -9``
can do to a checkpoint (:mod:`services.correlator.checkpoint`): the state writes reached the
changelog, the outputs and the offset commit did not, and the batch is read again.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.core.messages import SituationEvent, parse_situation
from services.correlator.engine import REPARTITION_TOPIC, Engine, Output, Record
from services.correlator.holds import Holds
from services.platform.sealed_situations import sealed_bytes
from services.platform.topics import DEADLETTER_TOPIC, SITUATIONS_TOPIC


@dataclass
class Cluster:
    engine: Engine
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    batch: int = 64
    store: dict[bytes, bytes] = field(default_factory=dict)
    queues: dict[tuple[str, int], deque[Record]] = field(default_factory=dict)
    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Compacted situations topic: situation id -> latest event bytes.
    situations: dict[str, bytes] = field(default_factory=dict)
    #: Every receipt (unless ``keep_receipts`` is off: then the refusals only, and the counts).
    receipts: list[bytes] = field(default_factory=list)
    keep_receipts: bool = True
    accepted: int = 0
    refused: int = 0
    deadletters: list[bytes] = field(default_factory=list)
    crashes: int = 0
    #: Queues not served for now (a partition whose worker is down or far behind).
    blocked: set[tuple[str, int]] = field(default_factory=set)
    #: Backpressure as the worker applies it (services/correlator/holds.py): while the engine
    #: holds this many records or more, the fund topics' partitions holding some are not served.
    hold_max: int = 0
    #: The most records the engine held at once.
    most_held: int = 0
    _crash_next: bool = False

    def publish(self, topic: str, partition: int, value: bytes, timestamp_ms: int = 0,
                headers: dict[str, bytes] | None = None) -> None:
        tp = (topic, partition)
        offset = self.next_offset.get(tp, 0)
        self.next_offset[tp] = offset + 1
        self.queues.setdefault(tp, deque()).append(
            Record(topic, partition, offset, timestamp_ms, None, value, headers or {}))

    def crash_next(self) -> None:
        self._crash_next = True

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def step(self) -> bool:
        """One batch from one non-empty queue (neither blocked nor paused); False when there is none."""
        paused = self.engine.holds.to_pause(self.hold_max) if self.hold_max else set()
        live = [tp for tp, q in self.queues.items() if q and tp not in self.blocked
                and not (tp[0] != REPARTITION_TOPIC and tp[1] in paused)]
        if not live:
            return False
        tp = self.rng.choice(live)
        queue = self.queues[tp]
        records = [queue[i] for i in range(min(self.batch, len(queue)))]
        result = self.engine.process(records, self.store.get)
        self.most_held = max(self.most_held, self.engine.holds.total)
        for key, (_, value) in result.writes.items():  # 1. the changelog
            if value is None:
                self.store.pop(key, None)
            else:
                self.store[key] = value
        if self._crash_next:  # killed here: no output, no commit; the batch comes again
            self._crash_next = False
            self.crashes += 1
            self.engine.states.clear()
            self.engine.holds = Holds()  # (the worker's count is in memory: a restart starts it again)
            return True
        self._route(result.outputs)  # 2. the outputs
        for _ in records:  # 3. the offsets
            queue.popleft()
        return True

    def run(self, *, crash_every: int = 0, limit: int = 10_000_000) -> int:
        steps = 0
        while steps < limit:
            if crash_every and steps % crash_every == crash_every - 1:
                self.crash_next()
            if not self.step():
                return steps
            steps += 1
        raise AssertionError("the cluster did not settle")

    def _opened(self, value: bytes) -> bytes:
        """A situation event in clear: a sealed one opened with the engine's key ring."""
        event = parse_situation(value)
        if isinstance(event, SituationEvent):
            return value
        sealer = self.engine.sealer
        assert sealer is not None, "a sealed situation event from an engine without a sealer"
        opened = sealer.open(None, SITUATIONS_TOPIC, sealed_bytes(event))
        assert opened is not None, f"situation {event.situation_id} sealed under a key already gone"
        return opened

    def _route(self, outputs: Iterable[Output]) -> None:
        for out in outputs:
            if out.topic == REPARTITION_TOPIC:
                assert out.partition is not None
                self.publish(REPARTITION_TOPIC, out.partition, out.value or b"", out.timestamp_ms or 0,
                             dict(out.headers))
            elif out.topic == SITUATIONS_TOPIC:
                sid = (out.key or b"").decode()
                if out.value is None:
                    self.situations.pop(sid, None)
                else:
                    self.situations[sid] = self._opened(out.value)
            elif out.topic == DEADLETTER_TOPIC:
                self.deadletters.append(out.value or b"")
            else:
                value = out.value or b""
                ok = b'"status":"accepte"' in value
                self.accepted += ok
                self.refused += not ok
                if self.keep_receipts or not ok:
                    self.receipts.append(value)
