"""The signing-key life cycle at full size: 20,000 signals flow through a running correlator
while a key is rotated, a key made elsewhere registered and an old one retired; at the end
every valid signal is accepted exactly once (see :mod:`tests.correlator.key_lifecycle`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.correlator.key_lifecycle import run
from tests.reliability.helpers import settings_for

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1200)
def test_key_life_cycle_with_20000_signals(private_bootstrap: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "var", private_bootstrap)
    outcome = run(settings, tmp_path, 20_000)
    assert outcome.signals == 20_000
    print(f"\nkey life cycle soak: {outcome.signals} signals, refused then brought back {dict(outcome.refused)}, "
          f"{outcome.rounds} reconciliation rounds, {outcome.seconds:.0f} s")
