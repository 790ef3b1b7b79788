"""Clean stops of a correlator worker, on the real embedded broker.

SIGTERM (or SIGINT) while the worker is processing: the batch in progress is finished and
committed through the checkpoint order, nothing after it is started, and the process exits
0. What the broker then holds must equal what was committed: every record below the
committed offset of its partition has its receipt, none at or after it has one (no batch
half done). A second worker started afterwards processes the rest: every record gets
exactly one receipt in all (nothing processed twice, nothing lost), and no situation event
is sent twice.

A check helper killed while its worker is idle is noticed within a second (measured from
the kill to the worker's ERROR line), replaced, and the next signals are processed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.core.types import Fund
from services.platform.partitioning import partition_for
from services.platform.settings import Settings, load_settings
from services.platform.topics import signal_topic
from tests.correlator.harness import CATEGORIES, Collector, check_helpers, publish, start_worker
from tests.support.signals import Funds, wire

pytestmark = pytest.mark.integration

PARTITIONS = 8


@pytest.fixture
def settings(tmp_path: Path, private_bootstrap: str) -> Settings:
    """A broker of the test's own: the collector reads from the end of the output topics,
    which the embedded broker reports short, so a shared broker would show it the receipts
    of earlier tests (identical ones: a receipt's id is its source position's)."""
    return load_settings(bootstrap_servers=private_bootstrap, var_dir=tmp_path / "var",
                         key_dir=tmp_path / "var" / "keys", session_timeout_ms=6000)


async def committed_offsets(bootstrap: str, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        found = {}
        for tp in tps:
            offset = await consumer.committed(tp)
            if offset is not None and offset >= 0:
                found[tp] = offset
        return found
    finally:
        await consumer.stop()


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stopped_worker_drains_its_batch_and_a_restart_doubles_nothing(
        settings: Settings, tmp_path: Path, signum: int) -> None:
    app_id = f"corr-stop-{signum}"
    funds = Funds()
    funds.write_registry(settings.key_dir)
    funds_cycle = list(CATEGORIES)
    messages = []
    for i in range(6000):
        fund = funds_cycle[i % len(funds_cycle)]
        messages.append(funds.signal(f"{app_id}-{i // 3}", fund, CATEGORIES[fund][i % 2], n=i))
    items = []
    for m in messages:
        value = m["pseudonym"]["value"]
        items.append((signal_topic(Fund(m["fund"])), value.encode(), wire(m),
                      partition_for(value, PARTITIONS)))
    bootstrap = settings.bootstrap_servers or ""
    collector = Collector(bootstrap, settings.database_url)
    await collector.start()
    worker = None
    try:
        wanted = set(await publish(bootstrap, items))
        # Small batches, so that the signal lands while batches are in progress.
        worker = start_worker(settings, app_id, tmp_path / "worker-1.log", "--batch-max", "100")
        await collector.until(lambda c: len(c.receipted & wanted) >= 500, timeout=120,
                              alive=lambda: worker is not None and worker.poll() is None)
        assert len(collector.receipted) < len(wanted), "the worker finished before the stop"
        if signum == signal.SIGINT:  # as a Ctrl-C: to the whole process group, helpers included
            os.killpg(worker.pid, signum)
        else:
            os.kill(worker.pid, signum)
        stopped_at = time.monotonic()
        code = await asyncio.to_thread(wait_exit, worker, 60)
        took = time.monotonic() - stopped_at
        log = (tmp_path / "worker-1.log").read_text(errors="replace")
        assert code == 0, (code, log[-3000:])
        print(f"stop took {took:.2f} s, {len(collector.receipted)} receipts before the restart")
        assert took < settings.drain_timeout_s + 15, took
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # whatever the worker sent, read it all
            await collector.poll()

        tps = sorted({TopicPartition(t, p) for t, p, _ in wanted})
        committed = await committed_offsets(bootstrap, app_id, tps)
        done = {(t, p, o) for t, p, o in wanted if o < committed.get(TopicPartition(t, p), -1)}
        receipted = collector.receipted & wanted
        assert 0 < len(done) < len(wanted)
        # Outputs exactly for what was committed: nothing past the commit, nothing missing.
        assert receipted == done, (len(receipted - done), len(done - receipted))
        assert collector.receipt_count == len(receipted)

        # A restart processes the rest, once.
        worker = start_worker(settings, app_id, tmp_path / "worker-2.log")
        await collector.until(lambda c: wanted <= c.receipted, timeout=120,
                              alive=lambda: worker is not None and worker.poll() is None)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            await collector.poll()
        sources: Counter[tuple[str, int, int]] = Counter()
        for r in collector.receipts.values():
            s = r["source"]
            sources[(s["topic"], s["partition"], s["offset"])] += 1
        assert collector.receipt_count == len(wanted), (collector.receipt_count, len(wanted))
        assert sources == Counter(wanted), "a record got no receipt or more than one"
        assert {r["status"] for r in collector.receipts.values()} == {"accepte"}
        event_ids = Counter(ev["event_id"] for ev in collector.situations)
        assert event_ids and max(event_ids.values()) == 1, event_ids.most_common(3)
        assert len({json.dumps(ev, sort_keys=True) for ev in collector.situations}) == len(collector.situations)
    finally:
        if worker is not None and worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        await collector.stop()


async def test_an_idle_worker_notices_a_killed_check_helper_within_a_second(settings: Settings,
                                                                            tmp_path: Path) -> None:
    app_id = "corr-helper-idle"
    funds = Funds()
    funds.write_registry(settings.key_dir)
    bootstrap = settings.bootstrap_servers or ""

    def items(first: int, n: int) -> list[tuple[str, bytes, bytes, int]]:
        out = []
        for i in range(first, first + n):
            m = funds.signal(f"{app_id}-{i}", Fund.CAF, "impaye_loyer", n=i)
            value = m["pseudonym"]["value"]
            out.append((signal_topic(Fund.CAF), value.encode(), wire(m), partition_for(value, PARTITIONS)))
        return out

    collector = Collector(bootstrap, settings.database_url)
    await collector.start()
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, app_id, log_path)
    try:
        first = set(await publish(bootstrap, items(0, 50)))
        await collector.until(lambda c: first <= c.receipted, timeout=120, alive=lambda: worker.poll() is None)
        helpers = check_helpers(worker.pid)
        assert len(helpers) == settings.correlator_check_processes
        await asyncio.sleep(1.0)  # idle
        killed_at = time.time()
        os.kill(helpers[0], signal.SIGKILL)
        noticed = None
        deadline = time.monotonic() + 10
        while noticed is None and time.monotonic() < deadline:
            for line in log_path.read_text(errors="replace").splitlines():
                if "exited while the worker ran" in line and "[ERROR]" in line:
                    noticed = dt.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            await asyncio.sleep(0.05)
        assert noticed is not None, log_path.read_text(errors="replace")[-3000:]
        print(f"dead helper noticed {noticed - killed_at:.3f} s after the kill")
        assert noticed - killed_at < 1.0, noticed - killed_at
        # Replaced (a new helper), and the next signals are processed as before.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sorted(check_helpers(worker.pid)) in ([], sorted(helpers[1:])):
            await asyncio.sleep(0.05)
        now = check_helpers(worker.pid)
        assert len(now) == len(helpers) and helpers[0] not in now
        second = set(await publish(bootstrap, items(50, 50)))
        await collector.until(lambda c: second <= c.receipted, timeout=60, alive=lambda: worker.poll() is None)
        assert {r["status"] for r in collector.receipts.values()} == {"accepte"}
        assert "replaced (1 since the start)" in log_path.read_text(errors="replace")
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGTERM)
            assert await asyncio.to_thread(wait_exit, worker, 60) == 0
        await collector.stop()
