"""Fixtures of the consent and erasure tests: each end-to-end test on a broker of its own.

A worker of a new consumer group reads its topics from the start: on the session broker it
would process (and answer) every earlier test's records too, and the probes here read
whole topics; so ``settings`` points at a private broker (tests that need none use
``offline_settings``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.platform.settings import Settings, load_settings
from tests.correlator.harness import Collector
from tests.support.local import free_port


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


@pytest.fixture
def sealing(settings: Settings) -> Iterator[Settings]:
    """``settings`` with sealed signals required (contract §2.1), and the exchange's key
    endpoint serving its key table (the worker must be started with
    ``HELP_SIGNAL_SEALING=required`` too)."""
    from services.app.bootstrap import signal_keys_log
    from services.platform.datakeys import KeyStore
    from services.platform.db import open_engine
    from services.platform.markers import marker_key
    from services.signalkeys.server import make_server, serve_in_thread
    from services.signalkeys.service import SignalKeyService

    port = free_port()
    sealed = settings.model_copy(update={"signal_sealing": "required",
                                         "signal_keys_url": f"http://127.0.0.1:{port}"})
    service = SignalKeyService(KeyStore(open_engine(sealed.database_url)), marker_key(sealed),
                               quota_per_day=100_000, batch_limit=4096, log=signal_keys_log(sealed))
    server = make_server(service, "127.0.0.1", port)
    serve_in_thread(server)
    try:
        yield sealed
    finally:
        server.shutdown()
        server.server_close()
