"""The simulated month through the real pipeline, with the demo's building blocks, against a
broker the test keeps (the demo stops its own): keys, simulate, publish, correlator, sink,
and the comparison of the situations found with the simulator's ground truth."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.app import demo
from services.app.demo import read_latest, wait_for_casebook
from services.core.types import Fund
from services.platform.sealed_situations import situation_docs
from services.platform.settings import Settings
from services.platform.topics import SITUATIONS_TOPIC, receipt_topic
from services.producer.keys import init_exchange_key, init_fund_keys, load_fund_secrets
from services.simulator.cli import TRUTH_FILE, simulate, today_paris
from tests.support.processes import read_topics, start_service, terminate

FUNDS = (Fund.URSSAF, Fund.CAF, Fund.CPAM, Fund.CARSAT)


def init_keys(settings: Settings) -> None:
    for fund in FUNDS:
        init_fund_keys(settings.key_dir, fund)
    init_exchange_key(settings.key_dir)


def simulate_month(settings: Settings, out: Path, *, scale: float = 1.0, seed: int = 1) -> dict[str, Any]:
    month = today_paris().strftime("%Y-%m")
    return simulate("35", month, out, seed=seed, schemas=settings.schemas_dir, today=today_paris(), scale=scale)


@dataclass
class Correlated:
    receipts: dict[str, dict[str, Any]]
    situations: dict[str, dict[str, Any]]
    seconds: float


def correlate(settings: Settings, expected_receipts: int, log_dir: Path, *, app_id: str = "help-correlator",
              sink: bool = False) -> Correlated:
    """Run the correlator (and the casebook sink) until every published signal has its receipt
    and the situations stop changing (and the casebook holds them all)."""
    t0 = time.monotonic()
    corr = start_service(settings, log_dir / "correlator.log", "correlator", "--app-id", app_id)
    sink_proc = start_service(settings, log_dir / "casebook-sink.log", "casebook", "sink") if sink else None
    try:
        receipts = asyncio.run(read_latest(settings, [receipt_topic(f) for f in FUNDS], expect=expected_receipts,
                                         key="signal_id", timeout=180, proc=corr))
        assert len(receipts) == expected_receipts, f"{len(receipts)}/{expected_receipts} receipts"
        situations = _settled_situations(settings)
        if sink_proc is not None:
            wait_for_casebook(settings, {k: v["version"] for k, v in situations.items()}, sink_proc)
    finally:
        terminate(corr)
        if sink_proc is not None:
            terminate(sink_proc)
    return Correlated(receipts, situations, time.monotonic() - t0)


def _settled_situations(settings: Settings, settle: float = 3.0, timeout: float = 120) -> dict[str, dict[str, Any]]:
    assert settings.bootstrap_servers
    deadline = time.monotonic() + timeout
    last: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        records = asyncio.run(read_topics(settings.bootstrap_servers, [SITUATIONS_TOPIC]))
        now: dict[str, dict[str, Any]] = {}
        docs = iter(situation_docs(settings.database_url, [r.value for r in records if r.value is not None]))
        for r in records:
            if r.value is None:
                now.pop((r.key or b"").decode(), None)
                continue
            doc = next(docs)
            if doc is None:  # an erased person's (its key is gone)
                continue
            if doc["situation_id"] not in now or doc["version"] >= now[doc["situation_id"]]["version"]:
                now[doc["situation_id"]] = doc
        if now and now == last:
            return now
        last = now
        time.sleep(settle)
    return last


def compare_with_truth(settings: Settings, situations: dict[str, dict[str, Any]],
                       truth: dict[str, Any]) -> tuple[float, float, int, int]:
    """(precision, recall, found, expected), exactly as the demo measures them."""
    secrets = {fund: load_fund_secrets(settings.key_dir, fund).sealing_keys for fund in FUNDS}
    score = demo.compare_with_truth(situations, truth, secrets)
    return score.precision, score.recall, score.found, score.expected


def load_truth(extracts: Path) -> dict[str, Any]:
    return json.loads((extracts / TRUTH_FILE).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
