"""The public key registry the correlator trusts (``<key_dir>/registry.json``), and its signature.

It lists, per fund, the Ed25519 public keys allowed to sign that fund's messages, and the
exchange (pseudonymisation) key ids and whether each is still accepted. It holds no secret:
the exchange key itself and the funds' private and sealing keys live only at the funds.
The published contract of the file is ``schemas/registry.schema.json`` (the models below
equal it: ``tests/contract/test_registry_schema.py``); ``docs/keys.md`` tells its life cycle.

Format (JSON)::

    {"version": 1,
     "funds": {"caf": {"signing_keys": [{"key_id": "caf-sig-20261123-1a2b",
                                         "public_key": "<base64url raw 32 bytes>",
                                         "status": "active",
                                         "registered_at": "2026-11-23T10:00:00.000000Z"}]}},
     "exchange_keys": [{"key_id": "xk-20261123-3c4d", "status": "active",
                        "created_at": "2026-11-23T10:00:00Z"}]}

``status`` is ``active`` or ``retired``; ``registered_at`` and ``retired_at`` are optional
(registries written before they existed stay readable), and ``retired_at`` only goes with
``retired``. Producers pseudonymise under the newest active exchange key; the correlator
accepts pseudonyms under any active one and signatures by any active signing key of the
message's fund.

**Signature.** Every write (:func:`save_registry`) also writes ``registry.json.sig``: the
base64url Ed25519 signature of the exact bytes of ``registry.json``, by the exchange's
*registry key* (private: ``<key_dir>/exchange-admin/registry-signer.pem``, 0600, created on
first need; public: ``<key_dir>/registry-signer.pub``, PEM, the key the correlator pins).
The correlator takes a registry only through :func:`load_verified_registry`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic import StringConstraints as S

from services.core.reasons import Reason
from services.core.signing import b64u, b64u_decode, load_private_key
from services.core.types import TIMESTAMP_PATTERN, Fund, KeyId
from services.errors import ConfigurationError

KeyStatus = Literal["active", "retired"]


def _real_time(value: str) -> str:
    dt.datetime.fromisoformat(value)  # the pattern lets 2026-02-30 through; the schema's format does not
    return value


def _version(value: Any) -> Any:
    # JSON Schema's const 1 takes 1.0 and refuses true; pydantic's Literal[1] would do the opposite.
    if isinstance(value, bool):
        raise ValueError("version must be the number 1")
    return 1 if isinstance(value, float) and value == 1 else value


#: A registry time: RFC 3339 UTC text, kept as written (the file is signed byte for byte).
Stamp = Annotated[str, S(pattern=TIMESTAMP_PATTERN), AfterValidator(_real_time)]

SIGNATURE_SUFFIX = ".sig"
ADMIN_DIR = "exchange-admin"
SIGNER_PRIVATE = "registry-signer.pem"
SIGNER_PUBLIC = "registry-signer.pub"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _retired_at_only_when_retired(entry: Any) -> Any:
    if entry.retired_at is not None and entry.status != "retired":
        raise ValueError("retired_at goes only with status retired")
    return entry


class PublicKeyEntry(_Model):
    key_id: KeyId
    public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    status: KeyStatus = "active"
    registered_at: Stamp | None = None
    retired_at: Stamp | None = None

    _retired_at_only_when_retired = model_validator(mode="after")(_retired_at_only_when_retired)

    def raw(self) -> bytes:
        return b64u_decode(self.public_key)

    def ed25519(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw())


class FundKeys(_Model):
    signing_keys: tuple[PublicKeyEntry, ...] = ()


class ExchangeKeyEntry(_Model):
    key_id: KeyId
    status: KeyStatus = "active"
    created_at: Stamp
    retired_at: Stamp | None = None

    _retired_at_only_when_retired = model_validator(mode="after")(_retired_at_only_when_retired)


class Registry(_Model):
    version: Annotated[Literal[1], BeforeValidator(_version)]
    funds: dict[Fund, FundKeys] = Field(default_factory=dict)
    exchange_keys: tuple[ExchangeKeyEntry, ...] = ()

    def signing_key_entry(self, fund: Fund, key_id: str) -> PublicKeyEntry | None:
        """The entry ``key_id`` of ``fund`` whatever its status, or None (unknown, other fund)."""
        for entry in self.funds.get(fund, FundKeys()).signing_keys:
            if entry.key_id == key_id:
                return entry
        return None

    def signing_key(self, fund: Fund, key_id: str) -> Ed25519PublicKey | None:
        """The active public key ``key_id`` of ``fund``, or None (unknown, retired, other fund)."""
        entry = self.signing_key_entry(fund, key_id)
        return entry.ed25519() if entry is not None and entry.status == "active" else None

    def signing_key_retired(self, fund: Fund, key_id: str) -> bool:
        entry = self.signing_key_entry(fund, key_id)
        return entry is not None and entry.status == "retired"

    def active_signing_keys(self) -> int:
        return sum(e.status == "active" for keys in self.funds.values() for e in keys.signing_keys)

    def exchange_key_accepted(self, key_id: str) -> bool:
        return key_id in self.accepted_exchange_keys()

    def accepted_exchange_keys(self) -> frozenset[str]:
        """The exchange key ids a pseudonym may be made under (the active ones): a set, for
        the correlator's checks, which ask for every signal."""
        return frozenset(k.key_id for k in self.exchange_keys if k.status == "active")

    def link_refusal(self, key_id: str, value: str, previous_key_id: str,
                     previous_value: str) -> tuple[Reason, str] | None:
        """Why a signal's ``pseudonym_previous`` (contract §4.3) cannot be followed, or None.

        The link must name another pseudonym under an *older* exchange key (a v1 ``xk-`` key
        or an earlier ``pk-`` version) that the registry still lists active: a retired key
        is a destroyed one, past its overlap window (``lien_pseudonyme_perime``)."""
        if previous_key_id == key_id or previous_value == value:
            return Reason.LIEN_PSEUDONYME_INVALIDE, "/pseudonym_previous:same_as_pseudonym"
        entries = {k.key_id: k for k in self.exchange_keys}
        old = entries.get(previous_key_id)
        if old is None:
            return Reason.LIEN_PSEUDONYME_INVALIDE, "/pseudonym_previous/key_id:unknown"
        if old.status != "active":
            return Reason.LIEN_PSEUDONYME_PERIME, "/pseudonym_previous/key_id:retired"
        new = entries.get(key_id)
        if new is not None and (old.created_at, old.key_id) >= (new.created_at, new.key_id):
            return Reason.LIEN_PSEUDONYME_INVALIDE, "/pseudonym_previous/key_id:not_older_than_pseudonym"
        return None

    def current_exchange_key_id(self) -> str | None:
        """The newest active **v1** exchange key (HMAC). ``pk-`` ids are key versions of the
        pseudonymisation service (scheme v2, no key file at the funds): accepted, never picked."""
        active = [k for k in self.exchange_keys if k.status == "active" and not k.key_id.startswith("pk-")]
        return max(active, key=lambda k: (k.created_at, k.key_id)).key_id if active else None


def fingerprint(raw: bytes) -> str:
    """SHA-256 of a raw public key, as read aloud to confirm it: ``sha256:1a2b 3c4d …`` (16 groups)."""
    digest = hashlib.sha256(raw).hexdigest()
    return "sha256:" + " ".join(digest[i:i + 4] for i in range(0, len(digest), 4))


# ------------------------------------------------------------------------------ files
def registry_bytes(registry: Registry) -> bytes:
    """The one written form of a registry (what the signature covers)."""
    return (registry.model_dump_json(indent=2, exclude_none=True) + "\n").encode("utf-8")


def registry_path(key_dir: Path) -> Path:
    return key_dir / "registry.json"


def fund_dir(key_dir: Path, fund: Fund) -> Path:
    """A fund's own keys (signing, sealing, ids; its pseudonym cache's key)."""
    return key_dir / "funds" / fund.value


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def signer_private_path(key_dir: Path) -> Path:
    return key_dir / ADMIN_DIR / SIGNER_PRIVATE


def signer_public_path(key_dir: Path) -> Path:
    return key_dir / SIGNER_PUBLIC


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def registry_signer(key_dir: Path) -> Ed25519PrivateKey:
    """The exchange's registry key, created (with its public file) on first need."""
    private_path = signer_private_path(key_dir)
    if not private_path.exists():
        key = Ed25519PrivateKey.generate()
        write_secret(private_path, key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    key = load_private_key(private_path, "the registry key",
                           "restore HELP_KEY_DIR/exchange-admin/ from backup")
    public_path = signer_public_path(key_dir)
    if not public_path.exists():  # never overwritten: it is what the correlator pins
        _replace(public_path, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def load_signer_public(path: Path) -> Ed25519PublicKey:
    """The pinned public key of the registry signer (PEM SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"no registry signer public key at {path}",
            "sign the registry once with `help-exchange keys sign-registry` (it creates the key), "
            "or point HELP_REGISTRY_SIGNER at the exchange's registry-signer.pub") from exc
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"the registry signer public key {path} is unreadable",
                                 "copy registry-signer.pub again from the exchange's key folder") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"the registry signer public key {path} is not an Ed25519 key",
                                 "copy registry-signer.pub again from the exchange's key folder")
    return key


def _parse(path: Path, data: bytes) -> Registry:
    try:
        return Registry.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:
        raise ConfigurationError(f"the key registry {path} is unreadable: {exc}", "restore it from backup") from exc


def load_registry(path: Path) -> Registry:
    """The registry as the file says, signature not checked (a producer's local copy, tools).

    The correlator uses :func:`load_verified_registry`."""
    if not path.exists():
        raise ConfigurationError(
            f"no key registry at {path}",
            "create keys with `help-exchange keys init --fund <fund>` and `help-exchange keys init-exchange`",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"the key registry {path} is unreadable: {exc}", "restore it from backup") from exc
    return _parse(path, data)


def verify_registry_bytes(data: bytes, signature_text: bytes, signer: Ed25519PublicKey) -> bool:
    """True if ``signature_text`` (base64url, a final newline allowed) signs ``data``."""
    try:
        signature = base64.urlsafe_b64decode(signature_text.strip() + b"=" * (-len(signature_text.strip()) % 4))
        signer.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_verified_registry(path: Path, signer: Ed25519PublicKey) -> Registry:
    """The registry, only if ``registry.json.sig`` is ``signer``'s signature of its bytes."""
    sig_path = signature_path(path)
    try:
        data = path.read_bytes()
        sig = sig_path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"the key registry {path} or its signature {sig_path.name} is missing",
            "write the registry with `help-exchange keys …` (each write signs it), "
            "or sign an existing one with `help-exchange keys sign-registry`") from exc
    except OSError as exc:
        raise ConfigurationError(f"the key registry {path} is unreadable: {exc}", "check HELP_KEY_DIR") from exc
    if not verify_registry_bytes(data, sig, signer):
        raise ConfigurationError(
            f"the signature {sig_path.name} does not match the key registry {path} (changed by hand, "
            "or signed by another registry key)",
            "write it only with `help-exchange keys …`; if the change is the operator's own, "
            "re-sign it with `help-exchange keys sign-registry`")
    return _parse(path, data)


def save_registry(registry: Registry, path: Path) -> None:
    """Write atomically, then its signature (by the registry key of ``path``'s folder).

    A reader that comes between the two renames sees a registry whose signature does not
    match: it keeps what it had and looks again (see the correlator's registry source)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = registry_bytes(registry)
    signature = registry_signer(path.parent).sign(data)
    _replace(path, data)
    _replace(signature_path(path), b64u(signature).encode("ascii") + b"\n")
