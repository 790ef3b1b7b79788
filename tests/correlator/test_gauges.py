"""The correlator's metrics, scraped over HTTP and read by the client library's own parser,
on a real embedded broker: the lag per partition is exactly what was published minus what was
processed (the broker's ``ListOffsets`` says otherwise: the test checks that it does, so the
lag is not right by chance), the oldest record's age is plausible, and the stall watchdog
fires on partitions stopped on purpose (the worker's check helpers frozen with SIGSTOP: the
batch waits on them, fetching goes on, nothing is committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from services.core.types import Fund
from services.platform.partitioning import partition_for
from services.platform.settings import Settings, load_settings
from services.platform.topics import signal_topic
from services.platform.watchdog import EXIT_STALLED
from tests.correlator.harness import Collector, check_helpers, publish, start_worker, stop
from tests.support.local import free_port
from tests.support.signals import Funds, wire

pytestmark = pytest.mark.integration

Series = dict[tuple[str, int], float]


@pytest.fixture
def own_settings(tmp_path: Path, private_bootstrap: str) -> Settings:
    """A broker of the test's own: its topics hold only this test's signals."""
    return load_settings(bootstrap_servers=private_bootstrap, var_dir=tmp_path / "var",
                         key_dir=tmp_path / "var" / "keys", session_timeout_ms=6000)


def scrape(port: int) -> dict[str, Series]:
    """Every per-partition series of the endpoint, by metric name, as the parser reads them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "partition" in sample.labels:
                key = (sample.labels["topic"], int(sample.labels["partition"]))
                found.setdefault(sample.name, {})[key] = sample.value
    return found


def signals(funds: Funds, prefix: str, count: int) -> list[tuple[str, bytes, bytes, int]]:
    out = []
    for i in range(count):
        fund = list(Fund)[i % 4]
        category = {Fund.URSSAF: "impaye_cotisations", Fund.CAF: "impaye_loyer",
                    Fund.CPAM: "non_recours_c2s_puma", Fund.CARSAT: "exoneration_csg"}[fund]
        m = funds.signal(f"{prefix}{i}", fund, category)
        value = m["pseudonym"]["value"]
        out.append((signal_topic(fund), value.encode(), wire(m), partition_for(value, 8)))
    return out


async def wait_for(port: int, proc: subprocess.Popen[bytes], ok: Callable[[dict[str, Series]], bool], what: str,
                   timeout: float = 60.0) -> dict[str, Series]:
    deadline = time.monotonic() + timeout
    seen: dict[str, Series] = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker stopped ({proc.returncode})"
        try:
            seen = scrape(port)
        except OSError:
            seen = {}
        if ok(seen):
            return seen
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {seen}")


@pytest.fixture
def helpers() -> Iterator[list[int]]:
    """The check helpers the test froze: thawed and ended whatever happens."""
    frozen: list[int] = []
    yield frozen
    for pid in frozen:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def freeze(pid: int, frozen: list[int]) -> None:
    deadline = time.monotonic() + 30
    found = check_helpers(pid)
    while not found and time.monotonic() < deadline:
        time.sleep(0.2)
        found = check_helpers(pid)
    assert found, "the worker has no check helper"
    for helper in found:
        os.kill(helper, signal.SIGSTOP)
        frozen.append(helper)


async def reported_ends(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def test_lag_is_published_minus_processed_and_the_watchdog_reports_a_stall(
        own_settings: Settings, tmp_path: Path, helpers: list[int]) -> None:
    bootstrap = own_settings.bootstrap_servers or ""
    funds = Funds()
    funds.write_registry(own_settings.key_dir)
    port = free_port()
    env = {"HELP_METRICS_PORT": str(port), "HELP_METRICS_HOST": "127.0.0.1",
           "HELP_LAG_PROBE_EVERY_S": "0.5", "HELP_WATCHDOG_STALL_S": "3"}
    log = tmp_path / "worker.log"
    collector = Collector(bootstrap, own_settings.database_url)
    await collector.start()
    proc = start_worker(own_settings, "corr-gauges", log, env=env)
    try:
        # M signals processed and committed: every partition caught up, lag 0, age 0.
        first = await publish(bootstrap, signals(funds, "m-", 120))
        await collector.until(lambda c: set(first) <= c.receipted, timeout=90, alive=lambda: proc.poll() is None)
        seen = await wait_for(port, proc, lambda s: len(s.get("help_consumer_lag_records", {})) > 0
                              and not any(s["help_consumer_lag_records"].values()), "lag 0 everywhere")
        assert not any(seen["help_consumer_oldest_unprocessed_age_seconds"].values())
        assert not any(seen["help_partition_stalled"].values())

        # The worker stops making progress; N - M more signals come, in multi-record batches.
        freeze(proc.pid, helpers)
        second = await publish(bootstrap, signals(funds, "n-", 200))
        expected = Counter((topic, partition) for topic, partition, _ in second)
        committed = Counter((topic, partition) for topic, partition, _ in first)

        def exact(s: dict[str, Series]) -> bool:
            lag = s.get("help_consumer_lag_records", {})
            return all(lag.get(tp) == n for tp, n in expected.items())

        seen = await wait_for(port, proc, exact, "the lag of the second wave")
        lag = seen["help_consumer_lag_records"]
        # Exactly published - processed on every partition the worker holds, none left out.
        assert {tp: v for tp, v in lag.items() if v} == {tp: float(n) for tp, n in expected.items()}
        assert set(expected) <= set(lag)
        ages = seen["help_consumer_oldest_unprocessed_age_seconds"]
        assert all(ages[tp] > 0 for tp in expected), ages
        assert all(ages[tp] < 120 for tp in expected), ages  # from the broker's timestamps: seconds old
        assert all(ages[tp] == 0 for tp, v in lag.items() if v == 0)
        # What the broker's ListOffsets reports would have given another lag (Tansu 0.6).
        tps = [TopicPartition(t, p) for t, p in expected]
        naive = await reported_ends(bootstrap, tps)
        assert any(naive[tp] - committed[(tp.topic, tp.partition)] != expected[(tp.topic, tp.partition)]
                   for tp in tps), "ListOffsets is right here: the test proves nothing about it"

        # Three seconds without progress: the watchdog reports the partitions that wait, only them.
        seen = await wait_for(port, proc, lambda s: all(s.get("help_partition_stalled", {}).get(tp) == 1
                                                        for tp in expected), "stalled partitions", timeout=30)
        stalled = {tp for tp, v in seen["help_partition_stalled"].items() if v == 1}
        assert stalled == set(expected)
        text = log.read_text(errors="replace")
        assert "stalled" in text and "ERROR" in text, text[-2000:]
        assert proc.poll() is None  # HELP_WATCHDOG_EXIT unset: it reports and goes on

        # Thawed, the worker catches up: lag, age and the stall gauges fall back to 0.
        for pid in helpers:
            os.kill(pid, signal.SIGCONT)
        await collector.until(lambda c: set(second) <= c.receipted, timeout=90, alive=lambda: proc.poll() is None)
        seen = await wait_for(port, proc, lambda s: not any(s["help_consumer_lag_records"].values())
                              and not any(s["help_partition_stalled"].values()), "catching up")
        assert not any(seen["help_consumer_oldest_unprocessed_age_seconds"].values())
    finally:
        stop(proc)
        await collector.stop()


async def test_the_watchdog_exits_for_a_restart_when_configured(
        own_settings: Settings, tmp_path: Path, helpers: list[int]) -> None:
    bootstrap = own_settings.bootstrap_servers or ""
    funds = Funds()
    funds.write_registry(own_settings.key_dir)
    env = {"HELP_LAG_PROBE_EVERY_S": "0.5", "HELP_WATCHDOG_STALL_S": "2", "HELP_WATCHDOG_EXIT": "true"}
    log = tmp_path / "worker.log"
    collector = Collector(bootstrap, own_settings.database_url)
    await collector.start()
    proc = start_worker(own_settings, "corr-watchdog-exit", log, env=env)
    try:
        first = await publish(bootstrap, signals(funds, "a-", 8))
        await collector.until(lambda c: set(first) <= c.receipted, timeout=90, alive=lambda: proc.poll() is None)
        freeze(proc.pid, helpers)
        started = time.monotonic()
        await publish(bootstrap, signals(funds, "b-", 8))
        code = await asyncio.to_thread(proc.wait, 60)
        assert code == EXIT_STALLED, log.read_text(errors="replace")[-2000:]
        assert time.monotonic() - started < 30
        assert "exiting for a restart" in log.read_text(errors="replace")
    finally:
        stop(proc, kill=True)
        await collector.stop()
