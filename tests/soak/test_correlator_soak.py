"""The issue's crash test at full size: 50,000 signals (then genuine replays), the worker
killed with SIGKILL at random points and restarted, six times; the situations at the end
are exactly those the ground truth predicts: none lost, none doubled."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.platform.settings import Settings
from tests.correlator.harness import kill_9_script, plan, run_scenario

pytestmark = pytest.mark.integration

PEOPLE = 23_200  # 50,228 signals with seed 11 (asserted below), then ~20 genuine replays


@pytest.mark.timeout(1800)
async def test_kill_9_during_a_50000_signal_run(settings: Settings, tmp_path: Path) -> None:
    assert len(plan(11, PEOPLE, "x")) >= 50_000
    result = await run_scenario(settings, tmp_path, kill_9_script(kills=6, low=5.0, high=12.0),
                                people=PEOPLE, rate=2500, seed=11, app_id="corr-soak-11", wait_s=600)
    print(f"\nsoak: {result.signals} signals + {result.replays} replays in {result.seconds:.0f} s; "
          f"{result.events}")
