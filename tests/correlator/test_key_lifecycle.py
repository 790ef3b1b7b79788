"""The signing-key life cycle under load: 20,000 signals through a running correlator while a
key is rotated, a key made elsewhere is registered late and an old key is retired mid-flight —
and nothing lost (see :mod:`tests.correlator.key_lifecycle`). About 30 s here, so it stays in
the normal suite rather than under tests/soak."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.correlator.key_lifecycle import run
from tests.support.processes import settings_for

pytestmark = pytest.mark.integration

SIGNALS = 20_000


@pytest.mark.timeout(600)
def test_rotation_registration_and_retirement_lose_no_signal(private_bootstrap: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "var", private_bootstrap)
    outcome = run(settings, tmp_path, SIGNALS)
    assert outcome.signals == SIGNALS
    print(f"\nkey life cycle: {outcome.signals} signals, refused then brought back {dict(outcome.refused)}, "
          f"{outcome.rounds} reconciliation rounds, {outcome.seconds:.0f} s")
