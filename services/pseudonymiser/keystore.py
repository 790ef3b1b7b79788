"""The service's key store: one 32-byte seed per key version, and the public list funds pin.

Layout (``Settings.pseudonymiser_key_dir``, default ``<key_dir>/pseudonymiser``)::

    seeds/<key_version>.seed   32 random bytes, 0600: DeriveKeyPair(seed, "help-exchange/pseudonym/v2")
    public.json                {"suite": "ristretto255-SHA512", "versions": [{"key_version",
                                "public_key" (b64url of 32 bytes), "status", "created_at"}]}

``public.json`` is read by :func:`services.core.pseudonymisation.read_public` (funds pin it).

Each version is also listed among the registry's ``exchange_keys`` (active), so that the
correlator accepts pseudonyms under it exactly as it accepts v1 ones; v1 producers ignore
``pk-`` ids (:meth:`services.core.registry.Registry.current_exchange_key_id`).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from pathlib import Path

from services.core.oprf import SEED_BYTES, SUITE, Evaluator
from services.core.pseudonymisation import PublicVersion, public_path, read_public
from services.core.registry import ExchangeKeyEntry, load_registry, registry_path, save_registry, write_secret
from services.core.signing import b64u
from services.core.types import format_timestamp
from services.errors import ConfigurationError
from services.platform.settings import Settings

KEY_INFO = b"help-exchange/pseudonym/v2"
VERSION_PREFIX = "pk"


def store_dir(settings: Settings) -> Path:
    return settings.pseudonymiser_store


def _write_public(folder: Path, versions: list[PublicVersion]) -> None:
    doc = {"suite": SUITE, "versions": [
        {"key_version": v.key_version, "public_key": b64u(v.public_key), "status": v.status,
         "created_at": v.created_at} for v in versions]}
    tmp = public_path(folder).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="ascii")
    tmp.replace(public_path(folder))


def init_key(settings: Settings, *, now: dt.datetime | None = None) -> str:
    """A new key version: seed kept here, public key published, registry entry active."""
    now = now or dt.datetime.now(dt.UTC)
    reg_path = registry_path(settings.key_dir)
    registry = load_registry(reg_path)  # first: nothing is written if there is no registry
    folder = store_dir(settings)
    version = f"{VERSION_PREFIX}-{secrets.token_hex(4)}"
    seed = secrets.token_bytes(SEED_BYTES)
    write_secret(folder / "seeds" / f"{version}.seed", seed)
    stamp = format_timestamp(now)
    existing = read_public(public_path(folder)) if public_path(folder).exists() else []
    evaluator = Evaluator.from_seed(version, seed, KEY_INFO)
    _write_public(folder, [*existing, PublicVersion(version, evaluator.public_key, "active", stamp)])
    entry = ExchangeKeyEntry(key_id=version, status="active", created_at=stamp)
    save_registry(registry.model_copy(update={"exchange_keys": (*registry.exchange_keys, entry)}), reg_path)
    return version


def load_evaluators(settings: Settings) -> dict[str, Evaluator]:
    """Every active version's evaluator (service side only)."""
    folder = store_dir(settings)
    out: dict[str, Evaluator] = {}
    for v in read_public(public_path(folder)):
        if v.status != "active":
            continue
        try:
            seed = (folder / "seeds" / f"{v.key_version}.seed").read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"the seed of key version {v.key_version} is missing: {exc.strerror}",
                                     "restore it from the service's backup") from exc
        ev = Evaluator.from_seed(v.key_version, seed, KEY_INFO)
        if ev.public_key != v.public_key:
            raise ConfigurationError(f"key version {v.key_version}: the seed does not give the published key",
                                     "restore the matching seed")
        out[v.key_version] = ev
    if not out:
        raise ConfigurationError("the pseudonymiser has no active key version",
                                 "create one with `help-exchange pseudonymiser init-key`")
    return out


def destroy_key(settings: Settings, version: str, recorded: Callable[[str, dt.datetime], None], *,
                now: dt.datetime | None = None) -> None:
    """End of a version's overlap window: its seed is overwritten and deleted, the version is
    marked ``retired`` in public.json and in the registry (the correlator then refuses its
    pseudonyms), and the destruction is ``recorded`` (the service's log: the ledger's
    ``rotation_cle`` entry)."""
    from services.errors import InputError

    now = now or dt.datetime.now(dt.UTC)
    folder = store_dir(settings)
    versions = read_public(public_path(folder))
    if not any(v.key_version == version and v.status == "active" for v in versions):
        raise InputError(f"no active key version {version!r} at the pseudonymiser",
                         "see `help-exchange pseudonymiser keys`")
    if sum(v.status == "active" for v in versions) < 2:
        raise InputError(f"{version} is the only active key version: nothing could be pseudonymised after it",
                         "create the next one first (`help-exchange pseudonymiser init-key`)")
    seed = folder / "seeds" / f"{version}.seed"
    if seed.exists():
        with seed.open("r+b") as f:  # overwrite before unlinking (best effort on a plain file system)
            f.write(secrets.token_bytes(SEED_BYTES))
            f.flush()
        seed.unlink()
    stamp = format_timestamp(now)
    _write_public(folder, [PublicVersion(v.key_version, v.public_key, "retired", v.created_at)
                           if v.key_version == version else v for v in versions])
    reg_path = registry_path(settings.key_dir)
    registry = load_registry(reg_path)
    keys = tuple(k.model_copy(update={"status": "retired", "retired_at": k.retired_at or stamp})
                 if k.key_id == version else k for k in registry.exchange_keys)
    save_registry(registry.model_copy(update={"exchange_keys": keys}), reg_path)
    recorded(version, now)
