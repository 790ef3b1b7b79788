"""The pseudonym: scheme v1, HMAC-SHA256 of the normalised NIR under the current exchange key
(scheme v2, the pseudonymisation service's VOPRF: :mod:`services.producer.pseudonym_v2`,
chosen by ``HELP_PSEUDONYM_SCHEME``; :func:`source_for`).

Every producer holds the same exchange key, so the same person gets the same pseudonym at
every fund and the correlator can join their signals without ever seeing a NIR. The key
id travels with the value so that keys can rotate: the registry lists the ids still
accepted. Value: base64url without padding of the 32-byte MAC (43 characters).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from services.core.keyed_digest import KeyedDigest
from services.core.signing import b64u

if TYPE_CHECKING:
    from services.core.registry import Registry
    from services.core.types import Fund
    from services.platform.settings import Settings

PREFIX = b"help-exchange/pseudonym/v1\x00"


def pseudonym_value(exchange_key: bytes, nir: str) -> str:
    """The pseudonym of the already normalised ``nir`` (see :func:`services.producer.nir.normalise`)."""
    return b64u(hmac.digest(exchange_key, PREFIX + nir.encode("ascii"), hashlib.sha256))


def pseudonym(exchange_key_id: str, exchange_key: bytes, nir: str) -> dict[str, str]:
    """The ``pseudonym`` member of a signal."""
    return {"key_id": exchange_key_id, "value": pseudonym_value(exchange_key, nir)}


class PseudonymSource(Protocol):
    """Where a producer gets the ``pseudonym`` member of a normalised NIR."""

    def prefetch(self, nirs: Iterable[str]) -> None: ...

    def ask(self, nirs: Iterable[str]) -> Any:
        """Start what :meth:`prefetch` does, without waiting; :meth:`collect` finishes it."""

    def collect(self, asked: Any) -> None: ...

    def pseudonym(self, nir: str) -> dict[str, str]: ...

    def previous(self, nir: str) -> dict[str, str] | None:
        """The ``pseudonym_previous`` link (contract §4.3) in a rotation or migration window."""
        ...


class HmacSource:
    """Scheme v1: HMAC under the current exchange key, which the fund holds."""

    def __init__(self, key_id: str, key: bytes) -> None:
        self.key_id = key_id
        self._key = key
        self._mac = KeyedDigest(key)  # pseudonym_value's HMAC, the key set up once

    def prefetch(self, nirs: Iterable[str]) -> None:
        """Nothing to ask: v1 is computed locally."""

    def ask(self, nirs: Iterable[str]) -> None:
        """Nothing to ask: v1 is computed locally."""

    def collect(self, asked: None) -> None:
        """Nothing was asked."""

    def pseudonym(self, nir: str) -> dict[str, str]:
        """:func:`pseudonym` (one call per line of a file)."""
        return {"key_id": self.key_id, "value": b64u(self._mac.digest(PREFIX + nir.encode("ascii")))}

    def previous(self, nir: str) -> dict[str, str] | None:
        """v1 keys rotate without a link (a v1 rotation moves every fund at once)."""
        return None


def source_for(settings: Settings, fund: Fund, registry: Registry | None = None) -> PseudonymSource:
    """The source ``settings.pseudonym_scheme`` says: v1 needs the exchange key file, v2 only
    the service's pinned public keys (``public.json``) and its URL."""
    if settings.pseudonym_scheme == "v2":
        from services.producer.pseudonym_v2 import PseudonymClient

        return PseudonymClient.from_settings(settings, fund)
    from services.producer.keys import load_exchange_key

    return HmacSource(*load_exchange_key(settings.key_dir, registry))
