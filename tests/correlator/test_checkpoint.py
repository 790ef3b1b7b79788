"""The checkpoint (no broker): state writes acknowledged, then outputs, then the commit; a
step that fails stops the sequence and nothing is committed; checkpoints of successive
batches run one after another, one batch ahead at most, none after a failed one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from faust.types import TP

from services.correlator.checkpoint import Checkpoint, Checkpoints
from services.correlator.engine import Output

TP0 = TP("help.signals.caf.v1", 0)
STATE = Output("app-persons-changelog", b"k", b"{}", 0)
RECEIPT = Output("help.receipts.caf.v1", b"k", b"r", None)


class FakeBroker:
    """Records what reaches it, in order; can hold or fail a topic's sends."""

    def __init__(self, fail_topic: str | None = None, fail_commit: bool = False) -> None:
        self.log: list[tuple[str, object]] = []
        self.fail_topic = fail_topic
        self.fail_commit = fail_commit
        self.gates: dict[str, asyncio.Event] = {}

    async def send(self, outputs: Sequence[Output]) -> None:
        for out in outputs:
            if out.topic in self.gates:
                await self.gates[out.topic].wait()
            if out.topic == self.fail_topic:
                raise ConnectionError(f"no ack from {out.topic}")
            self.log.append(("acked", out.value))

    async def commit(self, offsets: dict[TP, int]) -> None:
        if self.fail_commit:
            raise ConnectionError("commit refused")
        self.log.append(("commit", dict(offsets)))


async def test_state_then_outputs_then_commit() -> None:
    broker = FakeBroker()
    await Checkpoint([STATE], [RECEIPT], {TP0: 7}).commit(broker.send, broker.commit)
    assert broker.log == [("acked", b"{}"), ("acked", b"r"), ("commit", {TP0: 7})]


@pytest.mark.parametrize("failing", [STATE.topic, RECEIPT.topic])
async def test_a_failed_step_stops_the_sequence_and_nothing_is_committed(failing: str) -> None:
    broker = FakeBroker(fail_topic=failing)
    with pytest.raises(ConnectionError):
        await Checkpoint([STATE], [RECEIPT], {TP0: 7}).commit(broker.send, broker.commit)
    assert all(step != "commit" for step, _ in broker.log)
    if failing == STATE.topic:
        assert broker.log == []  # no output for a state not on the changelog


@pytest.mark.parametrize("failing", [None, STATE.topic, RECEIPT.topic])
async def test_retired_keys_are_destroyed_after_the_writes_and_before_the_commit(failing: str | None) -> None:
    """The key deletion is the erasure's commit point: after the states written under the
    new keys are on the broker, before the offsets; never after a failed step (the records
    are read again and the deletion redone)."""
    broker = FakeBroker(fail_topic=failing)

    async def destroy() -> None:
        broker.log.append(("destroyed", None))

    checkpoint = Checkpoint([STATE], [RECEIPT], {TP0: 7}, destroy)
    if failing is None:
        await checkpoint.commit(broker.send, broker.commit)
        assert broker.log == [("acked", b"{}"), ("acked", b"r"), ("destroyed", None), ("commit", {TP0: 7})]
    else:
        with pytest.raises(ConnectionError):
            await checkpoint.commit(broker.send, broker.commit)
        assert ("destroyed", None) not in broker.log


async def test_a_sweep_commits_no_offset() -> None:
    broker = FakeBroker()
    await Checkpoint([STATE]).commit(broker.send, broker.commit)
    assert broker.log == [("acked", b"{}")]


def _checkpoint(i: int) -> Checkpoint:
    return Checkpoint([Output(f"t{i}", b"k", f"s{i}".encode(), 0)], [], {TP0: i + 1})


async def test_checkpoints_one_after_another_one_batch_ahead_at_most() -> None:
    broker = FakeBroker()
    for i in range(3):
        broker.gates[f"t{i}"] = asyncio.Event()
    checkpoints = Checkpoints(broker.send, broker.commit, on_failure=lambda exc: pytest.fail(f"unexpected {exc!r}"))
    await checkpoints.submit(_checkpoint(0))  # nothing before it: returns at once
    second = asyncio.ensure_future(checkpoints.submit(_checkpoint(1)))
    await asyncio.sleep(0.01)
    assert not second.done()  # waits for checkpoint 0: one batch ahead at most
    assert broker.log == []
    broker.gates["t1"].set()
    await asyncio.sleep(0.01)
    assert broker.log == []  # checkpoint 1 does not start before checkpoint 0 ends
    broker.gates["t0"].set()
    await second
    await asyncio.sleep(0.01)
    assert broker.log == [("acked", b"s0"), ("commit", {TP0: 1}), ("acked", b"s1"), ("commit", {TP0: 2})]
    broker.gates["t2"].set()
    await checkpoints.submit(_checkpoint(2))
    await checkpoints.drain()
    assert broker.log[-2:] == [("acked", b"s2"), ("commit", {TP0: 3})]


async def test_a_failed_checkpoint_is_reported_and_nothing_after_it_runs() -> None:
    failures: list[BaseException] = []
    broker = FakeBroker(fail_topic="t0")
    checkpoints = Checkpoints(broker.send, broker.commit, on_failure=failures.append)
    await checkpoints.submit(_checkpoint(0))
    with pytest.raises(ConnectionError):
        await checkpoints.submit(_checkpoint(1))  # the agent learns it too, and stops
    with pytest.raises(ConnectionError):
        await checkpoints.drain()
    await asyncio.sleep(0.01)
    assert broker.log == []  # the next batch's state, outputs and commit never ran
    assert [type(e) for e in failures] == [ConnectionError, ConnectionError]


async def test_a_failed_commit_stops_the_next_checkpoints() -> None:
    failures: list[BaseException] = []
    broker = FakeBroker(fail_commit=True)
    checkpoints = Checkpoints(broker.send, broker.commit, on_failure=failures.append)
    await checkpoints.submit(_checkpoint(0))
    with pytest.raises(ConnectionError):
        await checkpoints.submit(_checkpoint(1))
    await asyncio.sleep(0.01)
    assert broker.log == [("acked", b"s0")]  # checkpoint 1 wrote nothing after the failed commit
    assert failures
