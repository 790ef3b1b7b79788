"""Records held back during a cross-partition hand-over (key rotation, contract §4.3), counted
per partition, and the backpressure that bounds them.

While a person waits for its previous pseudonym's state (``PersonState.awaiting``), the
records that come for it are kept in its state (``parked``), in order, and processed when
the answer comes. If the previous pseudonym's partition does not answer (its worker down, a
long backlog there), they would pile up without limit in the state — and a state grows past
what a changelog record may hold. So the engine notes, at the end of every batch, how many
records each waiting person holds (:meth:`Holds.note`), and the worker pauses the fetching of
the fund topics' partitions that hold records while the worker holds more than
``HELP_CORRELATOR_HOLD_MAX`` in all (:meth:`Holds.to_pause`): the records that would add to a
hold stay on the broker, uncommitted, and are read when the partition resumes — the answers
release the holds (the repartition topic, where the answers come, is never paused). Nothing
is dropped and nothing is processed out of order.

The count is the worker's own since it took the partition: a hold restored from the state
store after a restart is counted again as soon as a record or its answer touches it.
No pseudonym is kept here: the tracker is keyed by the person key only in memory, and the
log lines name partitions and counts, never a person.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("help.correlator")


@dataclass
class _Hold:
    partition: int
    count: int
    since: float
    #: the partition the answer is awaited from
    from_partition: int
    warned: bool = False


class Holds:
    """Per waiting person: its partition, how many records it holds, since when (monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._holds: dict[bytes, _Hold] = {}
        self._per_partition: dict[int, int] = {}
        self.total = 0

    def __contains__(self, key: bytes) -> bool:
        return key in self._holds

    def note(self, key: bytes, partition: int, count: int, from_partition: int = -1) -> None:
        """The person ``key`` of ``partition`` now holds ``count`` records (0: none, it is not waiting)."""
        hold = self._holds.get(key)
        if hold is not None:
            self._add(hold.partition, -hold.count)
            if count <= 0:
                del self._holds[key]
                return
            hold.count = count
            self._add(partition, count)
            return
        if count > 0:
            self._holds[key] = _Hold(partition, count, self._clock(), from_partition)
            self._add(partition, count)

    def _add(self, partition: int, delta: int) -> None:
        held = self._per_partition.get(partition, 0) + delta
        if held > 0:
            self._per_partition[partition] = held
        else:
            self._per_partition.pop(partition, None)
        self.total += delta

    def drop(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their holds are another worker's now."""
        gone = set(partitions)
        for key in [k for k, h in self._holds.items() if h.partition in gone]:
            self.note(key, 0, 0)

    def held(self, partition: int) -> int:
        return self._per_partition.get(partition, 0)

    def partitions(self) -> set[int]:
        """The partitions holding records."""
        return set(self._per_partition)

    def oldest_age(self) -> float:
        """Seconds since the oldest hold began (0: none)."""
        if not self._holds:
            return 0.0
        return max(0.0, self._clock() - min(h.since for h in self._holds.values()))

    def to_pause(self, limit: int) -> set[int]:
        """The partitions whose fetching stops: those holding records, while the worker holds
        at least ``limit`` in all (none otherwise)."""
        return self.partitions() if self.total >= limit else set()

    def overdue(self, after_s: float) -> list[tuple[int, int, int, float]]:
        """Holds older than ``after_s`` not reported yet, each reported once:
        (partition, records held, partition awaited, seconds)."""
        now = self._clock()
        late = []
        for hold in self._holds.values():
            if not hold.warned and now - hold.since >= after_s:
                hold.warned = True
                late.append((hold.partition, hold.count, hold.from_partition, now - hold.since))
        return late


class Backpressure:
    """Pauses and resumes the fetching of partitions as :meth:`Holds.to_pause` says, reports
    the holds (gauges, a WARNING once per hold past ``warn_after_s``) and tells the stall
    watchdog which partitions are paused on purpose (``paused_now``)."""

    def __init__(self, holds: Holds, limit: int, warn_after_s: float, *, topics: set[str],
                 pause: Callable[[set[Any]], None], resume: Callable[[set[Any]], None],
                 paused_now: Callable[[frozenset[tuple[str, int]]], None] = lambda _: None,
                 report: Callable[[int, float], None] = lambda _n, _s: None) -> None:
        """``topics``: the topics whose partitions may be paused (the fund topics: never the
        repartition topic, where the answers come); ``pause``/``resume`` take the consumer's
        topic-partitions; ``report``: (records held, oldest hold's age) after every look."""
        self.holds = holds
        self.limit = limit
        self.warn_after_s = warn_after_s
        self.topics = topics
        self._pause, self._resume, self._paused_now, self._report = pause, resume, paused_now, report
        #: the partition numbers paused now
        self.paused: set[int] = set()

    def after_batch(self, assigned: Iterable[Any]) -> None:
        """Once per batch (and from the worker's timer): pause, resume, report."""
        assigned = [tp for tp in assigned if tp.topic in self.topics]
        want = self.holds.to_pause(self.limit)
        if want != self.paused:
            started, ended = want - self.paused, self.paused - want
            if started:
                self._pause({tp for tp in assigned if tp.partition in started})
                log.warning("correlator: %d record(s) held back waiting for hand-overs (limit "
                            "HELP_CORRELATOR_HOLD_MAX=%d): fetching paused for partition(s) %s until "
                            "their answers come", self.holds.total, self.limit, sorted(started))
            if ended:
                self._resume({tp for tp in assigned if tp.partition in ended})
                log.info("correlator: hand-over answers came, fetching resumed for partition(s) %s",
                         sorted(ended))
            self.paused = set(want)
            self._paused_now(frozenset((tp.topic, tp.partition) for tp in assigned if tp.partition in want))
        for partition, count, awaited, seconds in self.holds.overdue(self.warn_after_s):
            log.warning("correlator: partition %d has held %d record(s) for %.0f s waiting for a "
                        "hand-over answer from partition %d (HELP_CORRELATOR_HOLD_WARN_S): is the "
                        "worker of partition %d running and caught up?", partition, count, seconds,
                        awaited, awaited)
        self._report(self.holds.total, self.holds.oldest_age())

    def revoked(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their holds and pauses are no longer this worker's."""
        gone = set(partitions)
        self.holds.drop(gone)
        self.paused -= gone
