"""The key endpoint in process, for tests that seal signals (contract §2.1): what
:attr:`tests.support.signals.Funds.sealing` takes (:class:`LocalKeys`), and an endpoint
over HTTP that a test's producers reach (:func:`key_endpoint`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from services.core.messages import Signal
from services.core.types import Fund
from services.platform.datakeys import KeyStore
from services.platform.settings import Settings
from services.signalkeys.service import FundKey, SignalKeyService
from tests.support.local import free_port


class LocalKeys:
    """(fund, pseudonym) -> (subject, epoch, fund key), from the exchange's key table."""

    def __init__(self, store: KeyStore, secret: bytes) -> None:
        self.service = SignalKeyService(store, secret, quota_per_day=100_000_000, batch_limit=4096)

    def __call__(self, fund: Fund, pseudonym: str) -> tuple[bytes, int, bytes]:
        (key,) = self.service.keys(fund, [pseudonym])
        return key.subject, key.epoch, key.key


def local_keys(settings: Settings) -> LocalKeys:
    """The keys of ``settings``' database, as the worker started with them opens signals."""
    from services.platform.db import open_engine
    from services.platform.markers import marker_key

    return LocalKeys(KeyStore(open_engine(settings.database_url)), marker_key(settings))


class _LazyService:
    """The endpoint's service over ``settings``' key table, opened at the first request
    (most tests that take the shared settings never ask for a key: no migration for them)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.batch_limit = settings.signal_keys_batch_limit
        self._service: SignalKeyService | None = None
        self._lock = threading.Lock()

    def keys(self, fund: Fund, pseudonyms: Sequence[str]) -> list[FundKey]:
        with self._lock:
            if self._service is None:
                from services.app.bootstrap import signal_keys_log
                from services.platform.db import open_engine
                from services.platform.markers import marker_key

                s = self.settings
                self._service = SignalKeyService(KeyStore(open_engine(s.database_url)), marker_key(s),
                                                 quota_per_day=s.signal_keys_quota_per_day,
                                                 batch_limit=self.batch_limit, log=signal_keys_log(s))
        return self._service.keys(fund, pseudonyms)


def serve_keys(settings: Settings) -> Settings:
    """:func:`key_endpoint` for the rest of the test process (a helper without a block)."""
    import atexit
    from contextlib import ExitStack

    stack = ExitStack()
    atexit.register(stack.close)
    return stack.enter_context(key_endpoint(settings))


@contextmanager
def key_endpoint(settings: Settings) -> Iterator[Settings]:
    """``settings`` with ``signal_keys_url`` naming a key endpoint served here over their
    database (what ``help-exchange signal-keys serve`` does), so that producers seal."""
    from typing import cast

    from services.signalkeys.server import make_server, serve_in_thread

    port = free_port()
    server = make_server(cast(SignalKeyService, _LazyService(settings)), "127.0.0.1", port)
    serve_in_thread(server)
    try:
        yield settings.model_copy(update={"signal_keys_url": f"http://127.0.0.1:{port}"})
    finally:
        server.shutdown()
        server.server_close()


def open_signal(settings: Settings, value: bytes | str) -> Signal:
    """A signal as read on a signal topic, opened if sealed with the key of ``settings``'
    database (what the correlator does), or as it is if in clear. Fails if it does not open."""
    import json

    from services.core.messages import SealedSignal, parse
    from services.core.signal_seal import open_sealed, opened
    from services.platform.db import open_engine
    from services.platform.topics import signal_topic

    if "sealed" not in json.loads(value):
        return parse(Signal, value)
    signal = parse(SealedSignal, value)
    fund = Fund(signal.fund)
    found = KeyStore(open_engine(settings.database_url)).load([bytes.fromhex(signal.sealed.subject)])
    data_key = found.get(bytes.fromhex(signal.sealed.subject), {}).get(signal.sealed.epoch)
    assert data_key, f"signal {signal.signal_id}: no key of epoch {signal.sealed.epoch} in the key table"
    content = open_sealed(data_key, fund, signal_topic(fund), signal.signal_id,
                          (signal.sealed.subject, signal.sealed.epoch, signal.sealed.value))
    assert content is not None, f"signal {signal.signal_id} does not open with its person's key"
    return opened(signal, content)
