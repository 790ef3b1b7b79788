"""Per source partition, the next offset the worker must process: what is new, what is a
re-read, what is a hole.

Faust only delivers. Its own bookkeeping guessed: it remembered the last offset read per
partition and silently dropped any record below it, treated any jump in offsets as a
compacted gap and committed over it, and accepted a commit one past a missing offset. A
worker restarted within the session timeout goes through two rebalances with records
fetched before the second seek still in flight: the setting in which a few early offsets
were committed without ever getting a receipt (``tests/correlator/test_crash.py``). Here a
partition's next offset is the group's committed offset when the partition is first seen
after an assignment; a record below it was already processed, a record above it means the
consumer skipped some (it is sought back, never jumped), and only the next offset itself is
taken, which advances it by one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from faust.types import TP

log = logging.getLogger("help.correlator")

#: A hole (a record the consumer skipped) is sought back at most this often per partition.
RESEEK_AFTER_S = 1.0

#: For newly seen partitions, where processing resumes (the committed offset, else the first).
Committed = Callable[[set[TP]], Awaitable[dict[TP, int]]]
#: Read a partition again from an offset.
Seek = Callable[[TP, int], Awaitable[None]]


class Positions:
    """Per assigned source partition, the next offset to process; forgotten on revocation."""

    def __init__(self, committed: Committed, seek: Seek,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._committed = committed
        self._seek = seek
        self._clock = clock
        self.assigned: set[TP] = set()
        self.next: dict[TP, int] = {}
        self._sought: dict[TP, tuple[int, float]] = {}

    async def select(self, received: Sequence[Any]) -> list[Any]:
        """The messages of ``received`` (each with ``tp`` and ``offset``) to process now, in
        order; each taken advances its partition by one; seeks back over holes."""
        fresh = {m.tp for m in received} & self.assigned
        fresh -= self.next.keys()
        if fresh:
            self.next.update(await self._committed(fresh))
        chosen = []
        holes: dict[TP, int] = {}
        for message in received:
            tp = message.tp
            if tp not in self.assigned or tp in holes:
                continue  # not ours any more, or after a hole in this batch
            expected = self.next[tp]
            if message.offset < expected:
                continue  # read again (a seek, a rebalance): already processed
            if message.offset > expected:
                holes[tp] = expected  # the consumer skipped records: never jump over them
                continue
            self.next[tp] = expected + 1
            self._sought.pop(tp, None)
            chosen.append(message)
        now = self._clock()
        for tp, offset in holes.items():
            last = self._sought.get(tp)
            if last is None or last[0] != offset or now - last[1] > RESEEK_AFTER_S:
                log.warning("correlator: %s:%d skipped to a later offset, reading again from %d",
                            tp.topic, tp.partition, offset)
                self._sought[tp] = (offset, now)
                await self._seek(tp, offset)
        return chosen

    def offsets(self, tps: set[TP]) -> dict[TP, int]:
        """The next offsets of these partitions (what to commit once they are processed)."""
        return {tp: self.next[tp] for tp in tps if tp in self.next}

    def assign(self, tps: set[TP]) -> None:
        self.assigned = set(tps)

    def revoke(self, tps: set[TP]) -> None:
        self.assigned -= tps
        for tp in tps:
            self.next.pop(tp, None)
            self._sought.pop(tp, None)
