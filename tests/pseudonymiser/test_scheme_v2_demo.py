"""Scheme v2 end to end: the demo's month with the funds holding no exchange key, every
pseudonym asked of the pseudonymisation service (its own process), the situations still
exactly the simulator's ground truth."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the demo starts a broker, the worker, the sink and the service
DemoRun = tuple[subprocess.CompletedProcess[str], Path]


@pytest.fixture(scope="module")
def demo_v2(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    var = tmp_path_factory.mktemp("demo-v2-var")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELP_")}
    env["HELP_VAR_DIR"] = str(var)
    done = subprocess.run([sys.executable, "-m", "services.app.cli", "demo", "--scheme", "v2"],
                          capture_output=True, text=True, env=env, timeout=400)
    return done, var / "demo"


def test_signals_correlate_exactly_as_with_v1(demo_v2: DemoRun) -> None:
    done, _ = demo_v2
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "schéma v2 : service de pseudonymisation" in done.stdout
    assert "précision 1.000  rappel 1.000" in done.stdout
    match = re.search(r"(\d+)/(\d+) accusés \((\d+) acceptés\)", done.stdout)
    assert match and match.group(1) == match.group(2) == match.group(3) and int(match.group(1)) > 2000


def test_the_funds_hold_no_pseudonymisation_key(demo_v2: DemoRun) -> None:
    """Only the service's key store holds what computes a pseudonym: no exchange key at the
    funds, and no byte of the service's seeds anywhere in their key folder."""
    _, root = demo_v2
    keys = root / "keys"
    assert not (keys / "exchange").exists()
    registry = json.loads((keys / "registry.json").read_text())
    assert [k["key_id"][:3] for k in registry["exchange_keys"]] == ["pk-"]
    seeds = [p.read_bytes() for p in (root / "pseudonymiser" / "seeds").iterdir()]
    assert seeds and all(len(s) == 32 for s in seeds)
    for path in keys.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s in data for s in seeds), path


def test_every_batch_is_in_the_ledger_and_signals_carry_v2_pseudonyms(demo_v2: DemoRun) -> None:
    _, root = demo_v2
    with sqlite3.connect(root / "casebook.db") as conn:
        batches = [json.loads(e) for (e,) in conn.execute(
            "SELECT entry FROM ledger_entries WHERE action = 'pseudonymes_calcules'")]
        subjects = {k for (k,) in conn.execute(
            "SELECT DISTINCT subject_key_id FROM ledger_entries WHERE subject_key_id IS NOT NULL")}
    assert {b["fund"] for b in batches} == {"urssaf", "caf", "cpam", "carsat"}
    assert sum(b["count"] for b in batches) > 2000
    assert all(b["actor"].startswith("pseudonymiseur.pk-") for b in batches)
    assert subjects and all(k.startswith("pk-") for k in subjects)
