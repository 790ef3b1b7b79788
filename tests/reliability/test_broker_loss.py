"""Broker loss (issue 8, item 3). The embedded broker keeps every topic in memory: kill -9 it
and everything on it is gone. What the producers' outboxes can and cannot replay:

- CAN: every signal not yet acknowledged. ``publish`` with the broker down keeps each signal,
  signed and final, *with its payload* in ``var/outbox/<fund>.db``; ``outbox flush`` sends
  them to the new broker, each exactly once.
- NOT BY ``flush``: signals acknowledged before the loss. Acknowledged is "sent", so
  ``outbox flush`` has nothing to resend and re-running ``publish`` on the same extract sends
  nothing ("déjà connus"). One way back is publishing the month's extracts again from an
  outbox without those ids (the fund's outbox file moved away once it holds nothing pending):
  the signal ids are deterministic, so the replay carries the same ids and the correlator,
  run afresh, rebuilds the same situations — checked here against the simulator's ground truth.
- BY ``outbox resend --since``: a sent row keeps its bytes until its receipt is reconciled,
  and an accepted one ``HELP_OUTBOX_KEEP_SENT_DAYS`` more; the command puts back what was sent
  since a time and sends it to the new broker; sent twice, the copies are answered
  ``doublon`` by the correlator and build nothing (second test).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from services.core.types import Fund
from services.platform.kafka import producer as kafka_producer
from services.platform.settings import Settings
from services.platform.topics import receipt_topic, signal_topic
from services.producer.outbox import Outbox, outbox_path
from tests.reliability.pipeline import FUNDS, compare_with_truth, correlate, init_keys, load_truth, simulate_month
from tests.suite_summary import count
from tests.support.local import free_port
from tests.support.processes import read_topics, run_cli, settings_for, start_broker

pytestmark = pytest.mark.integration

BEFORE = (Fund.CAF, Fund.URSSAF)      # acknowledged by the first broker, then lost with it
DURING = (Fund.CPAM, Fund.CARSAT)     # published while no broker answers: kept in the outbox


def _topic_ids(bootstrap: str, fund: Fund) -> Counter[str]:
    records = asyncio.run(read_topics(bootstrap, [signal_topic(fund)]))
    return Counter(json.loads(r.value)["signal_id"] for r in records if r.value)


async def _copy_topic(settings: Settings, bootstrap: str, topic: str) -> None:
    records = await read_topics(bootstrap, [topic])
    prod = kafka_producer(settings, bootstrap)
    await prod.start()
    try:
        for rec in records:
            await prod.send_and_wait(topic, rec.value, key=rec.key, partition=rec.partition)
    finally:
        await prod.stop()


def _outbox_rows(var: Path, fund: Fund) -> tuple[int, int, int]:
    """(pending with payload, sent without payload (receipt accepted), sent still holding a
    payload (no accepted receipt reconciled yet))."""
    db = sqlite3.connect(outbox_path(var, fund))
    try:
        return (db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND msg_value IS NOT NULL").fetchone()[0],
                db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL AND msg_value IS NULL").fetchone()[0],
                db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL AND msg_value IS NOT NULL"
                           ).fetchone()[0])
    finally:
        db.close()


def test_outbox_holds_what_is_unacknowledged_and_a_replay_rebuilds_the_same_situations(tmp_path: Path) -> None:
    port = free_port()
    first = start_broker(tmp_path / "broker-1", port=port)
    settings = settings_for(tmp_path / "var", first.listener, request_timeout_ms=3000)
    init_keys(settings)
    extracts = tmp_path / "extraits"
    truth = simulate_month(settings, extracts, scale=0.5, seed=11)

    # 1. Acknowledged by the first broker.
    acked: dict[Fund, set[str]] = {}
    try:
        for fund in BEFORE:
            run_cli(settings, "publish", "--fund", fund.value, "--input", str(extracts / f"{fund.value}.csv"),
                    "--workers", "0", check=False)
            pending, settled, sent = _outbox_rows(settings.var_dir, fund)
            assert pending == 0 and sent > 0 and settled == 0  # no receipt reconciled: payload kept
            acked[fund] = set(_topic_ids(first.listener, fund))
            assert len(acked[fund]) == sent
    finally:
        # 2. The broker is lost (memory storage: every topic with it).
        first.kill()
    count("faults_injected", detail="broker loss")

    # 3. Published while no broker answers: every signal stays in the outbox, with its payload.
    waiting: dict[Fund, int] = {}
    for fund in DURING:
        done = run_cli(settings, "publish", "--fund", fund.value, "--input", str(extracts / f"{fund.value}.csv"),
                       "--workers", "0", check=False)
        assert done.returncode == 1, done.stdout + done.stderr
        pending, settled, sent = _outbox_rows(settings.var_dir, fund)
        assert pending > 0 and sent == settled == 0
        waiting[fund] = pending
        status = run_cli(settings, "outbox", "status", "--fund", fund.value, check=False)
        assert status.returncode == 1 and f"{pending} en attente" in status.stdout

    # 4. A new, empty broker at the same address.
    second = start_broker(tmp_path / "broker-2", port=port)
    try:
        for fund in FUNDS:
            assert not _topic_ids(second.listener, fund), "a new embedded broker starts empty"
        for fund in FUNDS:
            run_cli(settings, "outbox", "flush", "--fund", fund.value)
        for fund in DURING:   # what waited is delivered, once each
            ids = _topic_ids(second.listener, fund)
            assert len(ids) == waiting[fund] and set(ids.values()) == {1}
            assert _outbox_rows(settings.var_dir, fund) == (0, 0, waiting[fund])
        for fund in BEFORE:   # what was acknowledged before the loss cannot come from the outbox
            assert not _topic_ids(second.listener, fund)
            again = run_cli(settings, "publish", "--fund", fund.value, "--input",
                            str(extracts / f"{fund.value}.csv"), "--workers", "0", check=False)
            assert "déjà connus" in again.stdout and not _topic_ids(second.listener, fund), again.stdout
        print(f"broker loss: acknowledged before the loss (gone, not replayable from the outbox): "
              f"{ {f.value: len(v) for f, v in acked.items()} }; kept in the outbox and delivered after: "
              f"{ {f.value: n for f, n in waiting.items()} }")

        # 5. The replay: the month's extracts again, from outboxes without the acknowledged ids.
        for fund in BEFORE:
            with Outbox.for_fund(settings.var_dir, fund) as box:
                assert box.status().pending == 0  # nothing waiting would be lost by moving it away
            path = outbox_path(settings.var_dir, fund)
            for suffix in ("", "-wal", "-shm"):
                p = path.with_name(path.name + suffix)
                if p.exists():
                    p.rename(p.with_name(p.name + ".before-loss"))
            run_cli(settings, "publish", "--fund", fund.value, "--input", str(extracts / f"{fund.value}.csv"),
                    "--workers", "0", check=False)
            assert set(_topic_ids(second.listener, fund)) == acked[fund], "the replay carries the same ids"
        published = sum(len(_topic_ids(second.listener, f)) for f in FUNDS)
        result = correlate(settings, published, tmp_path, app_id="corr-after-loss")
        precision, recall, found, expected = compare_with_truth(settings, result.situations, load_truth(extracts))
        print(f"after the loss and the replay: {published} signals, {len(result.receipts)} receipts, "
              f"{found} situations rebuilt in {result.seconds:.0f} s; precision {precision:.3f} recall "
              f"{recall:.3f} against the ground truth ({expected} expected)")
        assert (precision, recall) == (1.0, 1.0)
        assert truth["situations"]
    finally:
        second.stop()


def test_outbox_resend_recovers_what_a_lost_broker_had_acknowledged_none_doubled(tmp_path: Path) -> None:
    port = free_port()
    first = start_broker(tmp_path / "broker-1", port=port)
    settings = settings_for(tmp_path / "var", first.listener, request_timeout_ms=3000)
    init_keys(settings)
    extracts = tmp_path / "extraits"
    truth = simulate_month(settings, extracts, scale=0.5, seed=12)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)

    # 1. Every fund publishes; the first broker acknowledges everything.
    acked: dict[Fund, Counter[str]] = {}
    try:
        for fund in FUNDS:
            run_cli(settings, "publish", "--fund", fund.value, "--input", str(extracts / f"{fund.value}.csv"),
                    "--workers", "0", check=False)
            pending, _, sent = _outbox_rows(settings.var_dir, fund)
            acked[fund] = _topic_ids(first.listener, fund)
            assert pending == 0 and sent == len(acked[fund]) > 0 and set(acked[fund].values()) == {1}
    finally:
        # 2. The loss: the broker killed and its data wiped.
        first.kill()
        shutil.rmtree(tmp_path / "broker-1", ignore_errors=True)
    count("faults_injected", detail="broker loss after acknowledgements")

    # 3. A fresh broker at the same address; every fund re-sends what it sent since `since`.
    second = start_broker(tmp_path / "broker-2", port=port)
    try:
        for fund in FUNDS:
            assert not _topic_ids(second.listener, fund), "a new embedded broker starts empty"
            done = run_cli(settings, "outbox", "resend", "--fund", fund.value, "--since", since.isoformat())
            n = len(acked[fund])
            assert f"{n} signalements envoyés depuis" in done.stdout and f"{n} renvoyés et acquittés" in done.stdout, \
                done.stdout
            assert _topic_ids(second.listener, fund) == acked[fund], "each acknowledged signal back, once"
        # Run again on a broker that has them, the command finds them at the topic's end and
        # sends nothing twice; copies still happen (a resend from another copy of the outbox, a
        # client's retry): every CAF signal copied once more onto its topic, byte for byte.
        again = run_cli(settings, "outbox", "resend", "--fund", "caf", "--since", since.isoformat())
        assert "0 renvoyés" in again.stdout and set(_topic_ids(second.listener, Fund.CAF).values()) == {1}
        asyncio.run(_copy_topic(settings, second.listener, signal_topic(Fund.CAF)))
        assert set(_topic_ids(second.listener, Fund.CAF).values()) == {2}

        # 4. Downstream: every signal recovered, none doubled.
        distinct = sum(len(ids) for ids in acked.values())
        result = correlate(settings, distinct, tmp_path, app_id="corr-after-resend", sink=True)
        precision, recall, found, expected = compare_with_truth(settings, result.situations, load_truth(extracts))
        receipts = asyncio.run(read_topics(second.listener, [receipt_topic(Fund.CAF)]))
        docs = [json.loads(r.value) for r in receipts if r.value]
        caf = Counter((d["signal_id"], d.get("reason")) for d in docs)
        print(f"broker loss then outbox resend: {distinct} signals re-sent ({len(acked[Fund.CAF])} CAF ones twice), "
              f"{found} situations rebuilt (casebook equal); precision {precision:.3f} recall {recall:.3f} "
              f"against the ground truth ({expected} expected)")
        assert (precision, recall) == (1.0, 1.0) and truth["situations"]
        # the second copy of each CAF signal was answered "doublon", the first accepted
        assert {sid for (sid, reason) in caf if reason == "doublon"} == set(acked[Fund.CAF])
        assert {sid for (sid, reason) in caf if reason is None} == set(acked[Fund.CAF])
        # the fund's reconciliation counts a "doublon" as accepted
        rec = run_cli(settings, "receipts", "--fund", "caf")
        assert f"{len(acked[Fund.CAF])} acceptés" in rec.stdout, rec.stdout
    finally:
        second.stop()
