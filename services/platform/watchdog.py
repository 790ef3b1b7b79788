"""The stall watchdog: a partition that has records to process but does not move.

The failure stream processors' users report most is a consumer that silently stops: the
process lives, the group keeps the partition, nothing advances. From each lag measurement
(:class:`~services.platform.lag.LagMonitor`) the watchdog keeps, per partition, since when it
has been waiting: the committed position unchanged *and* records behind it. An idle partition
(lag 0) never waits, however long nothing comes; a partition that moves starts again from
zero. Past ``stall_s`` the partition is stalled: an ERROR line with the partition and its lag,
``help_partition_stalled`` at 1, and ``on_stall`` (the correlator exits for a restart when
``HELP_WATCHDOG_EXIT`` is true).
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

    def observe(self, found: Mapping[TopicPartition, PartitionLag]) -> list[TopicPartition]:
        """Take a measurement; returns the partitions stalled now."""
        now = self._clock()
        stalled: list[TopicPartition] = []
        for tp in set(self._waiting) - set(found):  # no longer held (or not measured): forgotten
            del self._waiting[tp]
        for tp, lag in found.items():
            labels = (self.name, tp.topic, str(tp.partition))
            waiting = self._waiting.get(tp)
            if lag.lag == 0 or waiting is None or waiting.position != lag.position:
                # caught up, or moved: waiting starts now (if anything is behind)
                self._waiting[tp] = _Waiting(lag.position, now)
                metrics.STALLED.labels(*labels).set(0)
                continue
            still = now - waiting.since
            if still < self.stall_s:
                continue
            stalled.append(tp)
            metrics.STALLED.labels(*labels).set(1)
            if not waiting.reported:
                waiting.reported = True
                log.error("%s: partition %s:%d stalled: %d record(s) waiting, position %d unchanged "
                          "for %.0f s", self.name, tp.topic, tp.partition, lag.lag, lag.position, still)
                if self._on_stall is not None:
                    self._on_stall(tp, lag, still)
        return stalled
