"""The stall watchdog: a partition that has records to process but does not move.

The failure stream processors' users report most is a consumer that silently stops: the
process lives, the group keeps the partition, nothing advances. From each lag measurement
(:class:`~services.platform.lag.LagMonitor`) the watchdog keeps, per partition, since when it
has been waiting: the committed position unchanged *and* records behind it. An idle partition
(lag 0) never waits, however long nothing comes; a partition that moves starts again from
zero. Past ``stall_s`` the partition is stalled: an ERROR line with the partition and its lag,
``help_partition_stalled`` at 1, and ``on_stall`` (the correlator exits for a restart when
``HELP_WATCHDOG_EXIT`` is true) — unless it is only waiting its turn.

Waiting its turn: behind a backlog (a night's files published at once), a worker takes its
partitions' records a fetch at a time, and a partition may stand still for longer than
``stall_s`` while the worker works through the records fetched before its own: a long wait,
not a stall. So a partition that stood still for ``stall_s`` is stalled only if the worker
moved no partition at all for ``stall_s`` (it is stuck), or if since the partition started
waiting the worker has processed, in its other partitions, at least as many records as all
its partitions had waiting then (any fair order would have reached this one: it is skipped).

Paused on purpose: the correlator pauses the fetching of a partition whose persons hold too
many records back for key-rotation hand-overs (services/correlator/holds.py). Such a
partition has records waiting and does not move, by design: it is not stalled. While it is
in :attr:`StallWatchdog.paused` its waiting is not counted (it starts again when it resumes)
and ``help_partition_paused`` says why it stands still; the fault, if any, is the partition
that does not answer, which its own worker's watchdog reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition

from services.platform import metrics
from services.platform.lag import PartitionLag

log = logging.getLogger("help.watchdog")

#: Exit status of a worker that stops because a partition stalled (HELP_WATCHDOG_EXIT).
EXIT_STALLED = 76


@dataclass
class _Waiting:
    position: int
    since: float
    #: records waiting in all the measured partitions when this one started waiting
    ahead: int
    #: the records processed so far (:attr:`StallWatchdog.processed`) when it started waiting
    processed: int
    reported: bool = False


class StallWatchdog:
    """Per partition, since when it has had records but no progress."""

    def __init__(self, name: str, stall_s: float, *,
                 on_stall: Callable[[TopicPartition, PartitionLag, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.stall_s = stall_s
        self._on_stall = on_stall
        self._clock = clock
        self._waiting: dict[TopicPartition, _Waiting] = {}
        #: records processed (committed positions advanced), summed over the measurements
        self.processed = 0
        self._positions: dict[TopicPartition, int] = {}
        #: when a partition last moved (or the first measurement)
        self._moved_at: float | None = None
        #: (topic, partition) paused on purpose now (replaced whole by the worker's thread)
        self.paused: frozenset[tuple[str, int]] = frozenset()
        self._shown_paused: set[tuple[str, str, str]] = set()

    def observe(self, found: Mapping[TopicPartition, PartitionLag]) -> list[TopicPartition]:
        """Take a measurement; returns the partitions stalled now."""
        now = self._clock()
        stalled: list[TopicPartition] = []
        advanced = sum(max(0, lag.position - self._positions[tp]) for tp, lag in found.items()
                       if tp in self._positions)
        self._positions = {tp: lag.position for tp, lag in found.items()}
        if advanced or self._moved_at is None:
            self.processed += advanced
            self._moved_at = now
        backlog = sum(lag.lag for lag in found.values())
        for tp in set(self._waiting) - set(found):  # no longer held (or not measured): forgotten
            del self._waiting[tp]
        paused = self.paused
        for tp, lag in found.items():
            labels = (self.name, tp.topic, str(tp.partition))
            waiting = self._waiting.get(tp)
            if (tp.topic, tp.partition) in paused:
                # Paused on purpose (backpressure): standing still is what it should do.
                self._waiting.pop(tp, None)
                metrics.STALLED.labels(*labels).set(0)
                metrics.PAUSED.labels(*labels).set(1)
                self._shown_paused.add(labels)
                continue
            if labels in self._shown_paused:
                self._shown_paused.discard(labels)
                metrics.PAUSED.labels(*labels).set(0)
            if lag.lag == 0 or waiting is None or waiting.position != lag.position:
                # caught up, or moved: waiting starts now (if anything is behind)
                self._waiting[tp] = _Waiting(lag.position, now, backlog, self.processed)
                metrics.STALLED.labels(*labels).set(0)
                continue
            still = now - waiting.since
            if still < self.stall_s:
                continue
            if now - self._moved_at < self.stall_s and self.processed - waiting.processed < waiting.ahead:
                continue  # waiting its turn: the worker is working through what was there before
            stalled.append(tp)
            metrics.STALLED.labels(*labels).set(1)
            if not waiting.reported:
                waiting.reported = True
                log.error("%s: partition %s:%d stalled: %d record(s) waiting, position %d unchanged "
                          "for %.0f s (%d record(s) processed meanwhile in the other partitions)",
                          self.name, tp.topic, tp.partition, lag.lag, lag.position, still,
                          self.processed - waiting.processed)
                if self._on_stall is not None:
                    self._on_stall(tp, lag, still)
        return stalled
