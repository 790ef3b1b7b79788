"""The public key registry the correlator trusts (``<key_dir>/registry.json``).

It lists, per fund, the Ed25519 public keys allowed to sign that fund's messages, and the
exchange (pseudonymisation) key ids and whether each is still accepted. It holds no secret:
the exchange key itself and the funds' private and sealing keys live only at the funds.

Format (JSON)::

    {"version": 1,
     "funds": {"caf": {"signing_keys": [{"key_id": "caf-sig-20261123-1a2b",
                                         "public_key": "<base64url raw 32 bytes>",
                                         "status": "active"}]}},
     "exchange_keys": [{"key_id": "xk-20261123-3c4d", "status": "active",
                        "created_at": "2026-11-23T10:00:00Z"}]}

``status`` is ``active`` or ``retired``. Producers pseudonymise under the newest active
exchange key; the correlator accepts pseudonyms under any active one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.core.signing import b64u_decode
from services.core.types import Fund, KeyId
from services.errors import ConfigurationError

KeyStatus = Literal["active", "retired"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PublicKeyEntry(_Model):
    key_id: KeyId
    public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    status: KeyStatus = "active"

    def ed25519(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(b64u_decode(self.public_key))


class FundKeys(_Model):
    signing_keys: tuple[PublicKeyEntry, ...] = ()


class ExchangeKeyEntry(_Model):
    key_id: KeyId
    status: KeyStatus = "active"
    created_at: str


class Registry(_Model):
    version: Literal[1] = 1
    funds: dict[Fund, FundKeys] = Field(default_factory=dict)
    exchange_keys: tuple[ExchangeKeyEntry, ...] = ()

    def signing_key(self, fund: Fund, key_id: str) -> Ed25519PublicKey | None:
        """The active public key ``key_id`` of ``fund``, or None (unknown, retired, other fund)."""
        for entry in self.funds.get(fund, FundKeys()).signing_keys:
            if entry.key_id == key_id and entry.status == "active":
                return entry.ed25519()
        return None

    def exchange_key_accepted(self, key_id: str) -> bool:
        return any(k.key_id == key_id and k.status == "active" for k in self.exchange_keys)

    def current_exchange_key_id(self) -> str | None:
        active = [k for k in self.exchange_keys if k.status == "active"]
        return max(active, key=lambda k: (k.created_at, k.key_id)).key_id if active else None


def load_registry(path: Path) -> Registry:
    if not path.exists():
        raise ConfigurationError(
            f"no key registry at {path}",
            "create keys with `help-exchange keys init --fund <fund>` and `help-exchange keys init-exchange`",
        )
    try:
        return Registry.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        raise ConfigurationError(f"the key registry {path} is unreadable: {exc}", "restore it from backup") from exc


def save_registry(registry: Registry, path: Path) -> None:
    """Write atomically, so a reader never sees half a registry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(registry.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
