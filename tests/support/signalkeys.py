"""The key endpoint in process, for tests that seal signals (contract §2.1): what
:attr:`tests.support.signals.Funds.sealing` takes."""

from __future__ import annotations

from services.core.types import Fund
from services.platform.datakeys import KeyStore
from services.signalkeys.service import SignalKeyService


class LocalKeys:
    """(fund, pseudonym) -> (subject, epoch, fund key), from the exchange's key table."""

    def __init__(self, store: KeyStore, secret: bytes) -> None:
        self.service = SignalKeyService(store, secret, quota_per_day=100_000_000, batch_limit=4096)

    def __call__(self, fund: Fund, pseudonym: str) -> tuple[bytes, int, bytes]:
        (key,) = self.service.keys(fund, [pseudonym])
        return key.subject, key.epoch, key.key
