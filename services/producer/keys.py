"""A fund's keys and the exchange (pseudonymisation) keys, on disk under ``settings.key_dir``.

Layout::

    <key_dir>/registry.json                    public: what the correlator trusts
    <key_dir>/exchange/<xk-…>.key              32 random bytes, 0600 (producers only)
    <key_dir>/funds/<fund>/<fund>-sig-….pem    Ed25519 private key, PKCS#8 PEM, 0600
    <key_dir>/funds/<fund>/<fund>-seal-….key   32 random bytes (AES-256-GCM), 0600
    <key_dir>/funds/<fund>/current.json        which signing and sealing key ids are in use

Why keys are never overwritten: a sealing key that disappears makes every reference it
sealed unopenable at the monthly review, and a signing key that disappears from the
registry makes in-flight signals unverifiable. ``init --rotate`` therefore *adds* a new
generation and switches ``current.json`` to it; old files stay (and old public keys stay
active in the registry until an operator retires them).

Signal ids are derived from the fund's *first* sealing key (``id_root`` in
``current.json``), not from the current one, so a rotation does not change the id of a
line already published: re-running an old file still publishes nothing twice.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.core.registry import (
    ExchangeKeyEntry,
    FundKeys,
    PublicKeyEntry,
    Registry,
    load_registry,
    save_registry,
)
from services.core.signing import b64u
from services.core.types import KEY_ID_PATTERN, Fund, format_timestamp
from services.errors import ConfigurationError, InputError

SECRET_BYTES = 32


def registry_path(key_dir: Path) -> Path:
    return key_dir / "registry.json"


def fund_dir(key_dir: Path, fund: Fund) -> Path:
    return key_dir / "funds" / fund.value


def exchange_dir(key_dir: Path) -> Path:
    return key_dir / "exchange"


def _new_key_id(prefix: str, now: dt.datetime) -> str:
    return f"{prefix}-{now:%Y%m%d}-{secrets.token_hex(2)}"


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_secret(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror}",
                                 "create the keys with `help-exchange keys init` / `keys init-exchange`, "
                                 "or check HELP_KEY_DIR") from exc


def _registry_or_empty(key_dir: Path) -> Registry:
    path = registry_path(key_dir)
    return load_registry(path) if path.exists() else Registry()


# --------------------------------------------------------------------------- fund keys
@dataclass(frozen=True)
class FundKeyIds:
    signing: str
    sealing: str
    id_root: str


@dataclass(frozen=True)
class FundSecrets:
    """What a producer of ``fund`` holds: its signing key, its sealing keys, its id key."""

    fund: Fund
    signing_key_id: str
    signing_key: Ed25519PrivateKey
    sealing_key_id: str
    #: every sealing key generation of the fund, by key id (reveal opens any of them)
    sealing_keys: dict[str, bytes]
    #: the first sealing key, root of the deterministic signal ids
    id_root: bytes


def _current_path(key_dir: Path, fund: Fund) -> Path:
    return fund_dir(key_dir, fund) / "current.json"


def read_current(key_dir: Path, fund: Fund) -> FundKeyIds | None:
    path = _current_path(key_dir, fund)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return FundKeyIds(str(data["signing"]), str(data["sealing"]), str(data["id_root"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigurationError(f"{path} is unreadable: {exc}", "restore the fund's key folder from backup") \
            from exc


def init_fund_keys(key_dir: Path, fund: Fund, *, rotate: bool = False,
                   now: dt.datetime | None = None) -> FundKeyIds:
    """Create ``fund``'s signing and sealing keys and publish the public key in the registry.

    Refuses (InputError) when the fund already has keys, unless ``rotate``: then a new
    generation is added and becomes current, the old one is kept."""
    now = now or dt.datetime.now(dt.UTC)
    current = read_current(key_dir, fund)
    if current is not None and not rotate:
        raise InputError(
            f"the fund {fund.value} already has keys ({current.signing}, {current.sealing})",
            "keep them; to add a new generation use `help-exchange keys init --fund "
            f"{fund.value} --rotate` (old keys are kept)",
        )
    folder = fund_dir(key_dir, fund)
    sig_id = _new_key_id(f"{fund.value}-sig", now)
    seal_id = _new_key_id(f"{fund.value}-seal", now)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_secret(folder / f"{sig_id}.pem", pem)
    _write_secret(folder / f"{seal_id}.key", secrets.token_bytes(SECRET_BYTES))

    registry = _registry_or_empty(key_dir)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    keys = registry.funds.get(fund, FundKeys())
    entry = PublicKeyEntry(key_id=sig_id, public_key=b64u(public), status="active")
    funds = {**registry.funds, fund: FundKeys(signing_keys=(*keys.signing_keys, entry))}
    save_registry(registry.model_copy(update={"funds": funds}), registry_path(key_dir))

    ids = FundKeyIds(sig_id, seal_id, current.id_root if current else seal_id)
    tmp = _current_path(key_dir, fund).with_suffix(".tmp")
    tmp.write_text(json.dumps({"signing": ids.signing, "sealing": ids.sealing, "id_root": ids.id_root}) + "\n",
                   encoding="utf-8")
    tmp.replace(_current_path(key_dir, fund))
    return ids


def load_fund_secrets(key_dir: Path, fund: Fund) -> FundSecrets:
    current = read_current(key_dir, fund)
    if current is None:
        raise ConfigurationError(
            f"the fund {fund.value} has no keys under {fund_dir(key_dir, fund)}",
            f"create them with `help-exchange keys init --fund {fund.value}` (or check HELP_KEY_DIR)",
        )
    folder = fund_dir(key_dir, fund)
    pem = _read_secret(folder / f"{current.signing}.pem", "the signing key")
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigurationError(f"{folder / current.signing}.pem is not an Ed25519 key",
                                 "restore the fund's key folder from backup")
    sealing = {p.stem: p.read_bytes() for p in sorted(folder.glob(f"{fund.value}-seal-*.key"))}
    for key_id, key in sealing.items():
        if len(key) != SECRET_BYTES:
            raise ConfigurationError(f"sealing key {key_id} is not {SECRET_BYTES} bytes",
                                     "restore the fund's key folder from backup")
    if current.sealing not in sealing or current.id_root not in sealing:
        raise ConfigurationError(f"a sealing key named in {_current_path(key_dir, fund)} is missing",
                                 "restore the fund's key folder from backup")
    return FundSecrets(fund, current.signing, private, current.sealing, sealing, sealing[current.id_root])


# --------------------------------------------------------------------------- exchange keys
def init_exchange_key(key_dir: Path, *, now: dt.datetime | None = None) -> str:
    """Create a new exchange key and record it active; it becomes the one producers use."""
    now = now or dt.datetime.now(dt.UTC)
    key_id = _new_key_id("xk", now)
    _write_secret(exchange_dir(key_dir) / f"{key_id}.key", secrets.token_bytes(SECRET_BYTES))
    registry = _registry_or_empty(key_dir)
    entry = ExchangeKeyEntry(key_id=key_id, status="active", created_at=format_timestamp(now))
    save_registry(registry.model_copy(update={"exchange_keys": (*registry.exchange_keys, entry)}),
                  registry_path(key_dir))
    return key_id


def retire_exchange_key(key_dir: Path, key_id: str) -> None:
    """Mark ``key_id`` retired: producers stop using it and the correlator refuses it."""
    registry = load_registry(registry_path(key_dir))
    if not any(k.key_id == key_id for k in registry.exchange_keys):
        raise InputError(f"no exchange key {key_id!r} in the registry", "see `help-exchange keys list`")
    keys = tuple(k.model_copy(update={"status": "retired"}) if k.key_id == key_id else k
                 for k in registry.exchange_keys)
    save_registry(registry.model_copy(update={"exchange_keys": keys}), registry_path(key_dir))


def load_exchange_key(key_dir: Path, registry: Registry | None = None) -> tuple[str, bytes]:
    """The newest active exchange key (id, secret) — the one to pseudonymise under."""
    registry = registry or load_registry(registry_path(key_dir))
    key_id = registry.current_exchange_key_id()
    if key_id is None:
        raise ConfigurationError("the key registry has no active exchange key",
                                 "create one with `help-exchange keys init-exchange`")
    if not re.fullmatch(KEY_ID_PATTERN, key_id):  # never build a path from an odd id
        raise ConfigurationError(f"exchange key id {key_id!r} is malformed", "fix the registry")
    secret = _read_secret(exchange_dir(key_dir) / f"{key_id}.key", "the exchange key")
    if len(secret) != SECRET_BYTES:
        raise ConfigurationError(f"exchange key {key_id} is not {SECRET_BYTES} bytes", "restore it from backup")
    return key_id, secret
