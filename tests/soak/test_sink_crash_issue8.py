"""Soak (issue 8): the heavier runs of the reliability suite — many more kill -9 of the casebook
sink over many more situations. Run by `make soak` (not by the default `pytest`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.sink_crash import run_sink_crashes
from tests.suite_summary import register

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register(request.config)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", [81, 82])
async def test_soak_kill9_the_casebook_sink(tmp_path: Path, seed: int) -> None:
    report = await run_sink_crashes(tmp_path, situations=4000, kills=30, seed=seed)
    for line in report.lines():
        print(line)
    assert report.kills == 30
