"""Soak (issue 8): the correlator fuzzed with 60,000 messages (three corpora of 20,000, other
seeds than CI's). Run by `make soak` (not by the default `pytest`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.test_fuzz_correlator import fuzz_the_correlator
from tests.suite_summary import register

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register(request.config)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", [101, 102, 103])
async def test_soak_fuzz_the_correlator(tmp_path: Path, seed: int) -> None:
    assert await fuzz_the_correlator(tmp_path, n_hyp=4_000, n_mut=16_000, seed=seed) == 20_000
