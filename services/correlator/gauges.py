"""The correlator worker's gauges: lag per assigned partition, the stall watchdog, and what a
batch and a checkpoint report when they end (services/platform/metrics.py declares them).

The lag is counted from what is *committed* (the standard definition: a batch processed but
not yet checkpointed is still lag), as the checkpoints commit it: :meth:`WorkerGauges.commit`
wraps the commit and keeps the offsets. A partition assigned and not yet committed in this
assignment starts from the group's committed offset (asked once). The end offsets and the
oldest record come from :mod:`services.platform.lag` (right on the embedded broker too).

The measurements and the watchdog run in a thread of their own, with their own event loop
and consumer: a worker whose event loop is blocked (a check helper that hangs holds the
worker's thread on a pipe) is the stall the watchdog is for, and it must still see it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from services.core.reasons import Reason
from services.platform import metrics
from services.platform.lag import LagMonitor, PartitionLag
from services.platform.settings import Settings
from services.platform.watchdog import EXIT_STALLED, StallWatchdog

log = logging.getLogger("help.correlator")

#: Commit next offsets (the consumer group's).
Commit = Callable[[dict[TP, int]], Awaitable[None]]


class WorkerGauges:
    """One worker's metrics and watchdog; handed to the processor and the checkpoints."""

    def __init__(self, settings: Settings, *, assigned: Callable[[], set[TP]],
                 make_consumer: Callable[[], AIOKafkaConsumer]) -> None:
        """``make_consumer``: the monitor's consumer, in the worker's group (it asks the
        committed offsets, never joins)."""
        self.name = settings.correlator_app_id
        self._assigned = assigned
        #: next offset committed per partition, in the current assignment (written by the
        #: worker's loop and the monitor's thread, under ``_lock``)
        self._known: dict[TP, int] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._thread: threading.Thread | None = None
        self.watchdog = StallWatchdog(self.name, settings.watchdog_stall_s,
                                      on_stall=_exit_for_restart if settings.watchdog_exit else None)
        self.monitor = LagMonitor(self.name, make_consumer, self.positions,
                                  every_s=settings.lag_probe_every_s, observe=self.watchdog.observe)
        self._batch_seconds = metrics.BATCH_SECONDS.labels(self.name)
        self._records = metrics.RECORDS.labels(self.name)
        self._accepted = metrics.RECEIPTS.labels("accepte", "")
        self._held = metrics.HELD_RECORDS.labels(self.name)
        self._oldest_hold = metrics.OLDEST_HOLD.labels(self.name)

    def commit(self, commit: Commit) -> Commit:
        """``commit``, keeping the offsets it committed."""
        async def committing(offsets: dict[TP, int]) -> None:
            await commit(offsets)
            with self._lock:
                self._known.update(offsets)
        return committing

    def assigned(self) -> None:
        """A new assignment: the committed offsets are asked again (another worker may have
        moved a partition that comes back)."""
        with self._lock:
            self._known.clear()
            self._generation += 1

    def start(self) -> None:
        """Start measuring, in a daemon thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=asyncio.run, args=(self.monitor.run(),),
                                            name=f"{self.name}-lag-monitor", daemon=True)
            self._thread.start()

    async def positions(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """The committed position of every assigned partition (in the monitor's thread)."""
        assigned = set(self._assigned())  # (a copy: the worker's loop replaces or shrinks it)
        with self._lock:
            known, generation = dict(self._known), self._generation
        missing = sorted(assigned - known.keys())
        if missing:
            asked = {tp: await consumer.committed(TopicPartition(tp.topic, tp.partition)) for tp in missing}
            nothing = [TopicPartition(tp.topic, tp.partition) for tp, offset in asked.items() if offset is None]
            first = await consumer.beginning_offsets(nothing) if nothing else {}
            with self._lock:
                if generation == self._generation:
                    for tp, offset in asked.items():
                        at = offset if offset is not None else first[TopicPartition(tp.topic, tp.partition)]
                        self._known.setdefault(tp, int(at))  # a commit meanwhile is newer
                known = dict(self._known)
        return {TopicPartition(tp.topic, tp.partition): known[tp] for tp in assigned if tp in known}

    def batch_done(self, seconds: float, records: int, accepted: int, rejected: Mapping[Reason, int]) -> None:
        """Once per batch."""
        self._batch_seconds.observe(seconds)
        self._records.inc(records)
        metrics.SIGNALS.inc(records)
        if accepted:
            self._accepted.inc(accepted)
        for reason, count in rejected.items():
            metrics.RECEIPTS.labels("rejete", reason.value).inc(count)

    def paused(self, tps: frozenset[tuple[str, int]]) -> None:
        """The partitions the worker paused on purpose (backpressure): the watchdog does not
        report them as stalled (services/platform/watchdog.py)."""
        self.watchdog.paused = tps

    def holds(self, records: int, oldest_s: float) -> None:
        """What the worker holds back for hand-overs (services/correlator/holds.py)."""
        self._held.set(records)
        self._oldest_hold.set(oldest_s)

    @staticmethod
    def checkpoint_done(seconds: float) -> None:
        metrics.CHECKPOINT_SECONDS.observe(seconds)


def _exit_for_restart(tp: TopicPartition, lag: PartitionLag, still: float) -> None:
    log.critical("correlator: partition %s:%d stalled for %.0f s, exiting for a restart "
                 "(HELP_WATCHDOG_EXIT)", tp.topic, tp.partition, still)
    logging.shutdown()
    os._exit(EXIT_STALLED)
