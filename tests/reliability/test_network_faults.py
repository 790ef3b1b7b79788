"""Network faults (issue 8, item 2): a TCP fault proxy between the clients and a dedicated
embedded broker that advertises the proxy, so every connection goes through it. It refuses,
resets, closes and delays connections at random while

- a fund publishes a simulated extract (``publish``, then ``outbox flush`` until nothing
  waits): every valid line reaches the topic, once;
- the casebook sink consumes situation events: the casebook ends equal to what was published.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from services.core.messages import to_wire
from services.core.types import Fund
from services.platform.topics import SITUATIONS_TOPIC, signal_topic
from services.producer.keys import init_exchange_key, init_fund_keys
from services.producer.outbox import Outbox
from services.simulator.cli import simulate, today_paris
from tests.reliability.faultproxy import FaultPlan, FaultProxy
from tests.reliability.sink_crash import db_state, make_events
from tests.support.processes import (
    Broker,
    apply_all_topics,
    free_port,
    kill9,
    read_topics,
    run_cli,
    settings_for,
    start_broker,
    start_service,
    terminate,
)

pytestmark = pytest.mark.integration

#: two funds in CI (≈ 20 s); the soak test runs all four, with several seeds
FUNDS = (Fund.URSSAF, Fund.CARSAT)


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[FaultProxy, Broker]]:
    """A broker advertising a fault proxy in front of it (faults off until the test turns them on)."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = FaultProxy(target_port=broker_port, port=proxy_port, seed=2).start()
    b = start_broker(tmp_path / "broker", port=broker_port, advertised=proxy.address, apply=False)
    try:
        apply_all_topics(proxy.address)
        yield proxy, b
    finally:
        b.stop()
        proxy.stop()


def test_publish_through_a_faulty_network_delivers_every_line_exactly_once(
        proxied: tuple[FaultProxy, Broker], tmp_path: Path) -> None:
    proxy, _ = proxied
    settings = settings_for(tmp_path / "var", proxy.address, request_timeout_ms=4000)
    for fund in FUNDS:
        init_fund_keys(settings.key_dir, fund)
    init_exchange_key(settings.key_dir)
    month = today_paris().strftime("%Y-%m")
    extracts = tmp_path / "extraits"
    simulate("35", month, extracts, seed=3, schemas=settings.schemas_dir, today=today_paris(), scale=1.0)
    proxy.plan = FaultPlan(refuse=0.15, reset=0.35, close=0.15, delay=0.3, max_delay_s=0.3,
                           max_bytes_before_fault=32 * 1024)
    proxy.faults = True
    t0 = time.monotonic()
    figures = []
    for fund in FUNDS:
        extract = extracts / f"{fund.value}.csv"
        with extract.open(encoding="utf-8-sig", newline="") as f:
            lines = sum(1 for _ in csv.DictReader(f, delimiter=";"))
        first = run_cli(settings, "publish", "--fund", fund.value, "--input", str(extract), "--workers", "0",
                        check=False, timeout=240)
        assert first.returncode in (0, 1, 2), first.stderr[-3000:]
        rejected = sum(int(n) for n in re.findall(r"lignes rejetées\s*:\s*(\d+)", first.stdout))
        flushes = 0
        while True:
            with Outbox.for_fund(settings.var_dir, fund) as box:
                pending = box.status().pending
            if pending == 0:
                break
            flushes += 1
            assert flushes <= 40, f"the outbox never emptied through the faulty network ({pending} left)"
            run_cli(settings, "outbox", "flush", "--fund", fund.value, check=False, timeout=120)
        figures.append((fund, lines, rejected, flushes))
    elapsed = time.monotonic() - t0
    proxy.faults = False

    for fund, lines, rejected, flushes in figures:
        with Outbox.for_fund(settings.var_dir, fund) as box:
            sent = box.status().sent
        records = asyncio.run(read_topics(proxy.address, [signal_topic(fund)]))
        ids = Counter(json.loads(r.value)["signal_id"] for r in records if r.value)
        doubles = {k: n for k, n in ids.items() if n > 1}
        print(f"publish {fund.value} through the fault proxy: {lines} lines, {rejected} rejected by the producer, "
              f"{sent} acknowledged, {len(ids)} distinct on the topic, {sum(ids.values())} records, "
              f"{len(doubles)} doubled; {flushes} extra flush runs")
        assert sent == lines - rejected
        assert len(ids) == sent, "a signal acknowledged to the outbox is missing from the topic"
        assert not doubles, f"{len(doubles)} signals of {fund.value} reached the topic more than once"
    print(f"  in {elapsed:.0f} s; faults {dict(proxy.injected)} over {proxy.connections} connections")
    assert proxy.total_faults > 0


async def test_casebook_sink_through_a_faulty_network(proxied: tuple[FaultProxy, Broker], tmp_path: Path) -> None:
    import random

    proxy, _ = proxied
    # Faults a consumer can live with: no refusal storm at start-up, resets and delays after.
    proxy.plan = FaultPlan(refuse=0.1, reset=0.25, close=0.1, delay=0.3, max_delay_s=0.3,
                           max_bytes_before_fault=64 * 1024)
    events = make_events(200, random.Random(5))
    producer = AIOKafkaProducer(bootstrap_servers=proxy.address, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(SITUATIONS_TOPIC, bytes(to_wire(e)), key=e.situation_id.encode())
                   for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    latest: dict[str, int] = {}
    for e in events:
        latest[e.situation_id] = max(latest.get(e.situation_id, 0), e.version)

    settings = settings_for(tmp_path / "var", proxy.address, session_timeout_ms=3000, request_timeout_ms=4000)
    proxy.faults = True
    log = tmp_path / "sink.log"
    restarts = 0
    proc = start_service(settings, log, "casebook", "sink", "--batch", "20")
    t0 = time.monotonic()
    try:
        while True:
            state = db_state(settings.database_url)
            if {sid: v for sid, (v, _, _) in state.items()} == latest:
                break
            if proc.poll() is not None:
                # A dead sink is restarted by its supervisor; counted and shown.
                restarts += 1
                assert restarts <= 10, log.read_text()[-3000:]
                proc = start_service(settings, log, "casebook", "sink", "--batch", "20")
            assert time.monotonic() - t0 < 150, f"{len(state)}/{len(latest)} rows; {log.read_text()[-3000:]}"
            await asyncio.sleep(0.5)
    finally:
        proxy.faults = False
        if proc.poll() is None:
            terminate(proc)
        else:
            kill9(proc)
    print(f"casebook sink through the fault proxy: {len(latest)} situations ({len(events)} events) in "
          f"{time.monotonic() - t0:.0f} s, {restarts} sink restarts; faults {dict(proxy.injected)} over "
          f"{proxy.connections} connections")
    assert proxy.total_faults > 0
    assert restarts == 0, f"the sink died on network faults {restarts} times: {log.read_text()[-3000:]}"
