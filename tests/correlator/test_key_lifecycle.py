"""The signing-key life cycle under load, 2,000 signals (20,000 in tests/soak): rotation,
a key made elsewhere registered late, an old key retired mid-flight — and nothing lost:
see :mod:`tests.correlator.key_lifecycle`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.correlator.key_lifecycle import run
from tests.reliability.helpers import settings_for

pytestmark = pytest.mark.integration


@pytest.mark.timeout(400)
def test_rotation_registration_and_retirement_lose_no_signal(private_bootstrap: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "var", private_bootstrap)
    outcome = run(settings, tmp_path, 2000)
    assert outcome.signals == 2000
    print(f"\nkey life cycle: {outcome.signals} signals, refused then brought back {dict(outcome.refused)}, "
          f"{outcome.rounds} reconciliation rounds, {outcome.seconds:.0f} s")
