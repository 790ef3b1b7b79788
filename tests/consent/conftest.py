"""Fixtures of the consent and erasure tests: each end-to-end test on a broker of its own.

A worker of a new consumer group reads its topics from the start: on the session broker it
would process (and answer) every earlier test's records too, and the probes here read
whole topics; so ``settings`` points at a private broker (tests that need none use
``offline_settings``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.platform.settings import Settings, load_settings
from tests.correlator.harness import Collector


@pytest.fixture
def settings(private_bootstrap: str, tmp_path: Path) -> Settings:
    return load_settings(bootstrap_servers=private_bootstrap, var_dir=tmp_path / "var",
                         key_dir=tmp_path / "var" / "keys",
                         database_url=f"sqlite:///{tmp_path / 'var' / 'casebook.db'}",
                         session_timeout_ms=6000)


@pytest.fixture
async def collector(private_bootstrap: str, settings: Settings) -> AsyncIterator[Collector]:
    """The worker's outputs from their current end (started before anything is published)."""
    c = Collector(private_bootstrap, settings.database_url)
    await c.start()
    yield c
    await c.stop()
