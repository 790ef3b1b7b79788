"""Test signals and consents, signed like the producer SDK will (until it exists here).

Keys are Ed25519 from ``cryptography``; the registry is written with
:mod:`services.core.registry`; pseudonyms are base64url(HMAC-SHA256) (43 characters);
sealed references are random base64url of 30-120 bytes; signatures via
:func:`services.core.signing.sign`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.core.dates import today_paris
from services.core.registry import ExchangeKeyEntry, FundKeys, PublicKeyEntry, Registry, save_registry
from services.core.signal_seal import seal_message
from services.core.signing import b64u, sign
from services.core.types import Fund, format_timestamp

EXCHANGE_KEY = "xk-20260101-aaaa"
RETIRED_KEY = "xk-20250101-old0"
EMITTERS = {Fund.URSSAF: "urssaf-ca", Fund.CPAM: "cpam-51", Fund.CAF: "caf-51",
            Fund.CARSAT: "carsat-ne", Fund.MSA: "msa-mos"}


def raw_public(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass
class Funds:
    """Every fund's signing key, and the registry the correlator trusts."""

    keys: dict[Fund, Ed25519PrivateKey] = field(
        default_factory=lambda: {f: Ed25519PrivateKey.generate() for f in Fund})
    secret: bytes = b"exchange-secret-for-tests"
    #: When signals are made (default: the clock's, at each one): ``emitted_at`` and, unless
    #: given, ``observed_on`` (its date in Paris), so that they pass the date rules of an
    #: engine whose clock is this moment (services.core.dates).
    now: dt.datetime | None = None
    #: Exchange keys beyond the two every registry of these tests holds (a key rotation).
    more_exchange_keys: tuple[ExchangeKeyEntry, ...] = ()
    #: Where signals get the key they are sealed with (contract §2.1): (fund, pseudonym
    #: value) -> (subject, epoch, the fund's key), as the key endpoint answers. None:
    #: signals in clear (an engine that accepts them, or a test of the clear form).
    sealing: Callable[[Fund, str], tuple[bytes, int, bytes]] | None = None

    def key_id(self, fund: Fund) -> str:
        return f"{fund.value}-sig-1"

    def registry(self) -> Registry:
        return Registry(
            version=1,
            funds={f: FundKeys(signing_keys=(PublicKeyEntry(key_id=self.key_id(f),
                                                             public_key=b64u(raw_public(k))),))
                   for f, k in self.keys.items()},
            exchange_keys=(ExchangeKeyEntry(key_id=EXCHANGE_KEY, created_at="2026-01-01T00:00:00Z"),
                           ExchangeKeyEntry(key_id=RETIRED_KEY, status="retired",
                                            created_at="2025-01-01T00:00:00Z"), *self.more_exchange_keys),
        )

    def write_registry(self, key_dir: Path) -> Path:
        path = key_dir / "registry.json"
        save_registry(self.registry(), path)
        return path

    def pseudonym(self, person: str) -> str:
        return b64u(hmac.new(self.secret, person.encode(), hashlib.sha256).digest())

    def signal(self, person: str, fund: Fund, category: str, *, n: int = 0,
               observed_on: dt.date | None = None, purpose: str = "acces_aux_droits",
               legal_basis: dict[str, Any] | None = None, key_id: str = EXCHANGE_KEY,
               signer: Fund | None = None, territory: str = "51", **overrides: Any) -> dict[str, Any]:
        signal_id = hashlib.sha256(f"{person}/{fund}/{category}/{n}".encode()).hexdigest()[:32]
        at = self.now or dt.datetime.now(dt.UTC)
        msg: dict[str, Any] = {
            "signal_id": signal_id,
            "schema_version": "1.0",
            "fund": fund.value,
            "emitter": EMITTERS[fund],
            "category": category,
            "observed_on": (observed_on or today_paris(at)).isoformat(),
            "emitted_at": format_timestamp(at),
            "territory": territory,
            "pseudonym": {"key_id": key_id, "value": self.pseudonym(person)},
            "sealed_ref": {"key_id": f"{fund.value}-seal-1", "value": b64u(os.urandom(40))},
            "legal_basis": legal_basis or {"code": "L115-2-1", "conditions": []},
            "purpose": purpose,
        }
        clear = overrides.pop("clear", False)
        msg.update(overrides)
        if self.sealing is not None and not clear:
            subject, epoch, key = self.sealing(fund, msg["pseudonym"]["value"])
            msg = seal_message(key, f"help.signals.{fund.value}.v1", subject, epoch, msg)
        who = signer or fund
        return sign(msg, self.keys[who], self.key_id(who))

    def resign(self, msg: dict[str, Any], fund: Fund | None = None) -> dict[str, Any]:
        """``msg`` (changed after signing) signed again by ``fund``'s key (default: its own fund's)."""
        who = fund or Fund(msg["fund"])
        return sign({k: v for k, v in msg.items() if k != "signature"}, self.keys[who], self.key_id(who))

    def consent(self, person: str, kind: str, *, fund: Fund = Fund.URSSAF,
                purposes: tuple[str, ...] = ("acces_aux_droits",),
                effective_at: str = "2026-01-01T00:00:00Z", n: int = 0) -> dict[str, Any]:
        msg = {
            "schema_version": "1.0",
            "event_id": hashlib.sha256(f"consent/{person}/{kind}/{n}".encode()).hexdigest()[:32],
            "kind": kind, "fund": fund.value, "emitter": EMITTERS[fund],
            "pseudonym": {"key_id": EXCHANGE_KEY, "value": self.pseudonym(person)},
            "purposes": list(purposes), "consent_ref": "HELP-2026-000001",
            "effective_at": effective_at,
        }
        return sign(msg, self.keys[fund], self.key_id(fund))


def wire(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()
