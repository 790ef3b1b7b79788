"""The stall watchdog, on a fake clock: 60 s by default; a partition with nothing to process
never stalls however long it waits; one with records and no progress stalls after the window,
is reported once, and recovers as soon as it moves; one that waits its turn behind a backlog
the worker is working through does not stall, until the worker has processed as much as was
waiting when it started to wait (it is skipped) or stops moving altogether (it is stuck)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from services.platform import metrics
from services.platform.lag import PartitionLag
from services.platform.settings import load_settings
from services.platform.watchdog import StallWatchdog

TP = TopicPartition("help.signals.caf.v1", 3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stalled_gauge(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("help_partition_stalled",
                                             {"consumer": name, "topic": TP.topic, "partition": "3"})


def test_the_default_window_is_sixty_seconds(tmp_path: Path) -> None:
    settings = load_settings(var_dir=tmp_path)
    assert settings.watchdog_stall_s == 60.0
    assert settings.watchdog_exit is False


def test_an_idle_partition_never_stalls() -> None:
    clock = Clock()
    dog = StallWatchdog("wd-idle", 60.0, clock=clock)
    for _ in range(100):  # 100 minutes with nothing to process, position never moving
        assert dog.observe({TP: PartitionLag(position=42, end=42, oldest_ms=None)}) == []
        clock.now += 60
    assert stalled_gauge("wd-idle") == 0


def test_records_waiting_without_progress_stall_after_the_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    fired: list[float] = []
    dog = StallWatchdog("wd-stall", 60.0, clock=clock, on_stall=lambda tp, lag, still: fired.append(still))
    waiting = {TP: PartitionLag(position=42, end=50, oldest_ms=1)}
    assert dog.observe({TP: PartitionLag(position=42, end=42, oldest_ms=None)}) == []  # idle so far
    clock.now += 5  # records arrive
    assert dog.observe(waiting) == []
    clock.now += 54
    assert dog.observe(waiting) == []  # 59 s: not yet
    assert stalled_gauge("wd-stall") == 0
    clock.now += 2
    with caplog.at_level(logging.ERROR, logger="help.watchdog"):
        assert dog.observe(waiting) == [TP]
        clock.now += 10
        assert dog.observe(waiting) == [TP]  # still stalled, reported once
    assert stalled_gauge("wd-stall") == 1
    assert fired == [61.0]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "help.signals.caf.v1:3 stalled: 8 record(s) waiting" in record.getMessage()
    # It moves: not stalled any more, and the window starts again.
    clock.now += 1
    assert dog.observe({TP: PartitionLag(position=43, end=50, oldest_ms=1)}) == []
    assert stalled_gauge("wd-stall") == 0
    clock.now += 30
    assert dog.observe({TP: PartitionLag(position=43, end=50, oldest_ms=1)}) == []


def test_a_partition_that_keeps_moving_never_stalls() -> None:
    clock = Clock()
    dog = StallWatchdog("wd-moving", 60.0, clock=clock)
    for step in range(100):
        assert dog.observe({TP: PartitionLag(position=step, end=step + 5000, oldest_ms=1)}) == []
        clock.now += 59


OTHER = TopicPartition("help.signals.urssaf.v1", 0)


def test_a_partition_waiting_its_turn_behind_a_backlog_is_not_stalled_until_it_is_skipped() -> None:
    clock = Clock()
    dog = StallWatchdog("wd-turn", 60.0, clock=clock)
    # A night's backlog: 30,000 records in another partition, 5,000 in this one; more keep coming.
    assert dog.observe({OTHER: PartitionLag(0, 30_000, 1), TP: PartitionLag(0, 5_000, 1)}) == []
    done, fired_at = 0, None
    for _ in range(60):  # the worker takes 1,000 records every 10 s, all from the other partition
        clock.now += 10
        done += 1_000
        if dog.observe({OTHER: PartitionLag(done, 100_000, 1), TP: PartitionLag(0, 5_000, 1)}):
            fired_at = done
            break
        assert stalled_gauge("wd-turn") == 0  # 340 s without moving, yet only waiting its turn
    # Reported once the worker has processed as much as was waiting when it started to wait.
    assert fired_at == 35_000 and stalled_gauge("wd-turn") == 1


def test_behind_a_backlog_a_worker_that_stops_moving_stalls_after_the_window() -> None:
    clock = Clock()
    dog = StallWatchdog("wd-stuck", 60.0, clock=clock)
    assert dog.observe({OTHER: PartitionLag(0, 30_000, 1), TP: PartitionLag(0, 5_000, 1)}) == []
    clock.now += 10
    assert dog.observe({OTHER: PartitionLag(1_000, 30_000, 1), TP: PartitionLag(0, 5_000, 1)}) == []
    clock.now += 55  # 65 s for this partition, but the worker moved 55 s ago
    assert dog.observe({OTHER: PartitionLag(1_000, 30_000, 1), TP: PartitionLag(0, 5_000, 1)}) == []
    clock.now += 5  # nothing moved for 60 s: both are stalled
    assert sorted(dog.observe({OTHER: PartitionLag(1_000, 30_000, 1), TP: PartitionLag(0, 5_000, 1)})) == [
        TP, OTHER]


def test_lag_and_oldest_age() -> None:
    assert PartitionLag(10, 17, 5_000).lag == 7
    assert PartitionLag(10, 17, 5_000).oldest_age_s(now_s=12.5) == 7.5
    assert PartitionLag(17, 17, None).oldest_age_s(now_s=12.5) == 0.0


def paused_gauge(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("help_partition_paused",
                                             {"consumer": name, "topic": TP.topic, "partition": "3"})


def test_a_partition_paused_on_purpose_is_not_stalled_and_counts_again_from_its_resumption() -> None:
    """The correlator pauses a partition whose persons hold too many records for hand-overs
    (services/correlator/holds.py): it stands still with records waiting, by design."""
    clock = Clock()
    fired: list[float] = []
    dog = StallWatchdog("wd-paused", 60.0, clock=clock, on_stall=lambda tp, lag, still: fired.append(still))
    waiting = {TP: PartitionLag(position=42, end=500, oldest_ms=1)}
    dog.paused = frozenset({(TP.topic, TP.partition)})
    for _ in range(30):  # half an hour paused, records waiting, position unchanged
        assert dog.observe(waiting) == []
        clock.now += 60
    assert fired == [] and stalled_gauge("wd-paused") == 0 and paused_gauge("wd-paused") == 1
    dog.paused = frozenset()  # resumed: the window starts now, not when the pause began
    assert dog.observe(waiting) == []
    assert paused_gauge("wd-paused") == 0
    clock.now += 59
    assert dog.observe(waiting) == []
    clock.now += 2
    assert dog.observe(waiting) == [TP]  # resumed and still not moving: a stall
    assert len(fired) == 1
