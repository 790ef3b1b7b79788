"""Positions (no broker): a partition advances only over what was processed, in order; a
re-read is skipped; a hole is sought back, never jumped; revocation forgets."""

from __future__ import annotations

from dataclasses import dataclass

from faust.types import TP

from services.correlator.positions import RESEEK_AFTER_S, Positions

A, B = TP("help.signals.caf.v1", 0), TP("help.signals.caf.v1", 1)


@dataclass(frozen=True)
class Msg:
    tp: TP
    offset: int


class FakeConsumer:
    """The group's committed offsets, and the seeks asked of the consumer."""

    def __init__(self, committed: dict[TP, int]) -> None:
        self.committed = committed
        self.asked: list[set[TP]] = []
        self.seeks: list[tuple[TP, int]] = []

    async def offsets(self, tps: set[TP]) -> dict[TP, int]:
        self.asked.append(set(tps))
        return {tp: self.committed.get(tp, 0) for tp in tps}

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


def positions(consumer: FakeConsumer, now: list[float] | None = None) -> Positions:
    clock = now or [0.0]
    p = Positions(consumer.offsets, consumer.seek, clock=lambda: clock[0])
    p.assign({A, B})
    return p


async def test_starts_at_the_committed_offset_and_advances_one_by_one() -> None:
    consumer = FakeConsumer({A: 5})
    p = positions(consumer)
    got = await p.select([Msg(A, 3), Msg(A, 4), Msg(A, 5), Msg(A, 6), Msg(B, 0), Msg(B, 1)])
    assert got == [Msg(A, 5), Msg(A, 6), Msg(B, 0), Msg(B, 1)]  # below 5: processed before the crash
    assert p.offsets({A, B}) == {A: 7, B: 2}
    assert consumer.asked == [{A, B}]  # asked once, when first seen
    assert await p.select([Msg(A, 6), Msg(A, 7)]) == [Msg(A, 7)]  # a re-read is not processed twice
    assert consumer.asked == [{A, B}] and consumer.seeks == []


async def test_a_hole_is_sought_back_and_nothing_after_it_is_taken() -> None:
    consumer = FakeConsumer({A: 0, B: 0})
    now = [100.0]
    p = positions(consumer, now)
    got = await p.select([Msg(A, 0), Msg(A, 2), Msg(A, 3), Msg(B, 0)])
    assert got == [Msg(A, 0), Msg(B, 0)]  # A:1 missing: A:2 and A:3 wait for it
    assert p.offsets({A}) == {A: 1}  # never committed past the hole
    assert consumer.seeks == [(A, 1)]
    assert await p.select([Msg(A, 2)]) == []  # still missing: no second seek at once
    assert consumer.seeks == [(A, 1)]
    now[0] += RESEEK_AFTER_S + 0.1
    assert await p.select([Msg(A, 3)]) == []
    assert consumer.seeks == [(A, 1), (A, 1)]  # sought again after a while
    assert await p.select([Msg(A, 1), Msg(A, 2), Msg(A, 3)]) == [Msg(A, 1), Msg(A, 2), Msg(A, 3)]
    assert p.offsets({A}) == {A: 4}


async def test_not_assigned_and_revoked_partitions_are_not_processed() -> None:
    consumer = FakeConsumer({})
    p = positions(consumer)
    other = TP("help.consents.v1", 0)
    assert await p.select([Msg(other, 0), Msg(A, 0)]) == [Msg(A, 0)]
    p.revoke({A})
    assert await p.select([Msg(A, 1)]) == []  # in flight after the revocation: dropped
    assert p.offsets({A}) == {}  # and nothing to commit for it
    p.assign({A, B})
    consumer.committed[A] = 1
    assert await p.select([Msg(A, 0), Msg(A, 1)]) == [Msg(A, 1)]  # back: from the committed offset
    assert consumer.asked[-1] == {A}
