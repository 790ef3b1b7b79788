"""A batch through the processor (no broker: a fake consumer, producer and engine): state
loaded from its changelog up to the fence first; then the checkpoint in order (state writes,
outputs, commit of the next offsets of what was processed); a failed send commits nothing;
a revocation waits for the checkpoints and forgets the partition and its states."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.types import TP

from services.correlator.checkpoint import Checkpoints
from services.correlator.engine import Batch, Output, Record
from services.correlator.positions import Positions
from services.correlator.processing import Processor
from services.correlator.state import FENCE_KEY, PersonStore
from services.platform.datakeys import KeyRing, KeyStore, envelope, subject_of, unseal
from services.platform.db import open_engine
from services.platform.runtime import HeapPolicy

SRC = "help.signals.caf.v1"
CHANGELOG = "app-persons-changelog"


@dataclass(frozen=True)
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: float = 0.0
    headers: Any = None

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass(frozen=True)
class ChangelogRecord:
    key: bytes | None
    value: bytes | None


class FakeLoader:
    """The changelog as a plain consumer reads it: what the previous owner wrote, then the fence."""

    def __init__(self, records: dict[int, list[ChangelogRecord]]) -> None:
        self.records = records
        self.positions: dict[TopicPartition, int] = {}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = dict.fromkeys(tps, 0)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None: ...

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        out = {}
        for tp in tps:
            records = self.records.get(tp.partition, [])[self.positions[tp]:]
            self.positions[tp] += len(records)
            out[tp] = records
        return out

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


class FakeBroker:
    def __init__(self, fail_topic: str | None = None) -> None:
        self.log: list[tuple[str, Any]] = []
        self.fail_topic = fail_topic
        self.fences: list[int] = []

    async def send(self, outputs: Sequence[Output]) -> None:
        for out in outputs:
            if out.topic == self.fail_topic:
                raise ConnectionError("no ack")
            self.log.append((out.topic, out.value))

    async def send_one(self, topic: str, key: bytes, value: bytes | None, partition: int) -> int:
        self.fences.append(partition)
        return 1  # the fence's offset: after the one record already on the changelog partition

    async def commit(self, offsets: dict[TP, int]) -> None:
        self.log.append(("commit", dict(offsets)))


class FakeEngine:
    """Appends each record's value to its person's state; a receipt per record."""

    def steps(self, records: Iterable[Record], load: Callable[[bytes], bytes | None], *,
              every: int = 0) -> Generator[None, None, Batch]:
        batch = Batch()
        for r in records:
            before = batch.writes[r.key][1] if r.key in batch.writes else load(r.key)
            batch.writes[r.key] = (r.partition, (before or b"") + r.value)
            batch.outputs.append(Output("help.receipts.caf.v1", r.key, b"receipt:" + r.value, None))
            yield
        return batch

    def sweep(self, items: Iterable[tuple[bytes, int, bytes]], outputs: list[Output] | None = None,
              ) -> dict[bytes, tuple[int, bytes]]:
        return {key: (partition, b"swept") for key, partition, _ in items}


def processor(broker: FakeBroker, failures: list[BaseException],
              committed: dict[TP, int] | None = None) -> tuple[Processor, PersonStore]:
    store = PersonStore(CHANGELOG)
    loader = FakeLoader({0: [ChangelogRecord(b"p1", b"a"), ChangelogRecord(FENCE_KEY, None)]})

    async def offsets(tps: set[TP]) -> dict[TP, int]:
        return {tp: (committed or {}).get(tp, 0) for tp in tps}

    async def seek(tp: TP, offset: int) -> None: ...

    p = Processor(FakeEngine(), store, Positions(offsets, seek),  # type: ignore[arg-type]
                  Checkpoints(broker.send, broker.commit, on_failure=failures.append),
                  HeapPolicy(0), topics={SRC}, send_one=broker.send_one,
                  loader=lambda: loader)  # type: ignore[arg-type,return-value]
    return p, store


async def test_a_batch_loads_state_then_writes_outputs_and_commits_in_order() -> None:
    broker, failures = FakeBroker(), []
    p, store = processor(broker, failures, {TP(SRC, 0): 3})
    await p.assigned({TP(SRC, 0), TP("elsewhere", 0)})
    await p.batch([Msg(SRC, 0, 2, b"p1", b"x"), Msg(SRC, 0, 3, b"p1", b"b"), Msg(SRC, 0, 4, b"p2", b"c")])
    await p.checkpoints.drain()
    assert broker.fences == [0]  # the partition's state was loaded (to its fence) before the batch
    assert broker.log == [
        (CHANGELOG, b"ab"), (CHANGELOG, b"c"),  # state: "a" from the changelog, then b; offset 2 skipped
        ("help.receipts.caf.v1", b"receipt:b"), ("help.receipts.caf.v1", b"receipt:c"),
        ("commit", {TP(SRC, 0): 5}),
    ]
    assert store.get(b"p1") == b"ab" and failures == []


async def test_a_failed_send_commits_nothing() -> None:
    broker, failures = FakeBroker(fail_topic="help.receipts.caf.v1"), []
    p, _ = processor(broker, failures)
    await p.assigned({TP(SRC, 0)})
    await p.batch([Msg(SRC, 0, 0, b"p1", b"b")])
    with pytest.raises(ConnectionError):
        await p.checkpoints.drain()
    assert all(step != "commit" for step, _ in broker.log)
    assert [type(e) for e in failures] == [ConnectionError]


async def gated_processor() -> tuple[Processor, PersonStore, FakeBroker, asyncio.Event, list[BaseException]]:
    """A processor assigned partition 0 whose outputs wait for the returned gate."""
    broker, failures = FakeBroker(), list[BaseException]()
    p, store = processor(broker, failures)
    gate = asyncio.Event()
    send = broker.send

    async def slow_send(outputs: Sequence[Output]) -> None:
        await gate.wait()
        await send(outputs)

    p.checkpoints._send = slow_send
    await p.assigned({TP(SRC, 0)})
    return p, store, broker, gate, failures


async def test_a_revocation_waits_for_the_checkpoint_and_forgets_the_partition() -> None:
    p, store, broker, gate, _ = await gated_processor()
    await p.batch([Msg(SRC, 0, 0, b"p1", b"b")])
    revoking = asyncio.create_task(p.revoked({TP(SRC, 0)}))
    await asyncio.sleep(0.01)
    assert not revoking.done() and broker.log == []  # not before the batch is committed
    gate.set()
    await revoking
    assert broker.log[-1] == ("commit", {TP(SRC, 0): 1})
    assert store.get(b"p1") is None and 0 not in store.loaded  # reloaded if it comes back
    assert p.positions.offsets({TP(SRC, 0)}) == {}


async def test_a_sweep_writes_state_and_commits_no_offset() -> None:
    broker, failures = FakeBroker(), []
    p, store = processor(broker, failures)
    store.put(b"p9", 3, b"old")
    assert await p.sweep(10) == 1
    await p.checkpoints.drain()
    assert broker.log == [(CHANGELOG, b"swept")] and store.get(b"p9") == b"swept"


async def test_a_stop_finishes_the_batch_in_progress_and_starts_nothing_after() -> None:
    p, _, broker, gate, failures = await gated_processor()
    in_progress = asyncio.create_task(p.batch([Msg(SRC, 0, 0, b"p1", b"b")]))
    await asyncio.sleep(0)  # the batch holds the lock
    stopping = asyncio.create_task(p.stop())
    later = asyncio.create_task(p.batch([Msg(SRC, 0, 1, b"p1", b"c")]))
    await asyncio.sleep(0.01)
    assert not stopping.done() and broker.log == []  # waits for the checkpoint
    gate.set()
    await asyncio.gather(in_progress, stopping, later)
    assert broker.log[-1] == ("commit", {TP(SRC, 0): 1})  # the first batch, whole
    assert all(value != b"receipt:c" for _, value in broker.log)  # the later one never ran
    assert await p.sweep(10) == 0 and failures == []


class SealingEngine:
    """Writes each record's value as its person's state, sealed under the person's data key
    (the record key: the pseudonym's value); ``race`` runs as its first batch starts, after
    the worker looked the batch's keys up."""

    def __init__(self, ring: KeyRing, race: Callable[[], None]) -> None:
        self.ring, self.race, self.runs = ring, race, 0

    def steps(self, records: Iterable[Record], load: Callable[[bytes], bytes | None], *,
              every: int = 0) -> Generator[None, None, Batch]:
        self.runs += 1
        if self.runs == 1:
            self.race()
        batch = Batch()
        for r in records:
            batch.writes[r.key] = (r.partition, self.ring.seal(r.key, CHANGELOG, r.value))
            yield
        return batch


async def test_a_first_key_the_key_endpoint_made_meanwhile_is_the_one_the_batch_seals_under(
        db_url: str, tmp_path: Path) -> None:
    """The key endpoint hands a fund a person's first key while the worker computes a batch
    that makes one too: the worker's insert loses (insert-or-ignore, read back), the batch
    is computed again under the endpoint's key, and nothing sealed under the lost one is sent."""
    (tmp_path / "var").mkdir(exist_ok=True)
    secret = bytes(range(32))
    ring = KeyRing(KeyStore(open_engine(db_url)), secret)
    endpoint = KeyStore(open_engine(db_url))  # its own connections, as in its own process
    handed: dict[bytes, tuple[int, bytes]] = {}

    def race() -> None:
        handed.update(endpoint.current([subject_of(secret, b"p1")]))

    engine = SealingEngine(ring, race)
    broker, failures = FakeBroker(), list[BaseException]()
    p, _ = processor(broker, failures)
    p.engine, p.keys = engine, ring  # type: ignore[assignment]
    await p.assigned({TP(SRC, 0)})
    await p.batch([Msg(SRC, 0, 0, b"p1", b"x"), Msg(SRC, 0, 1, b"p2", b"y")])
    await p.checkpoints.drain()
    assert failures == [] and engine.runs == 2
    ((epoch, key),) = handed.values()
    states = [value for topic, value in broker.log if topic == CHANGELOG]
    assert len(states) == 2 and unseal(key, CHANGELOG, states[0]) == b"x" and envelope(states[0])[1] == epoch
    table = KeyStore(open_engine(db_url)).load([subject_of(secret, b"p1"), subject_of(secret, b"p2")])
    assert table[subject_of(secret, b"p1")] == {epoch: key}
    assert unseal(table[subject_of(secret, b"p2")][1], CHANGELOG, states[1]) == b"y"
