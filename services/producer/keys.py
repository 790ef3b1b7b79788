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

import base64
import datetime as dt
import json
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
    fingerprint,
    fund_dir,
    load_registry,
    registry_path,
    save_registry,
    write_secret,
)
from services.core.signing import b64u, b64u_decode
from services.core.types import KEY_ID_PATTERN, Fund, format_timestamp
from services.errors import ConfigurationError, InputError

SECRET_BYTES = 32
__all__ = ["fund_dir", "registry_path"]  # re-exported: producers find their keys here


def exchange_dir(key_dir: Path) -> Path:
    return key_dir / "exchange"


def _new_key_id(prefix: str, now: dt.datetime) -> str:
    return f"{prefix}-{now:%Y%m%d}-{secrets.token_hex(2)}"


_write_secret = write_secret


def _read_secret(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror}",
                                 "create the keys with `help-exchange keys init` / `keys init-exchange`, "
                                 "or check HELP_KEY_DIR") from exc


def _registry_or_empty(key_dir: Path) -> Registry:
    path = registry_path(key_dir)
    return load_registry(path) if path.exists() else Registry(version=1)


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
    entry = PublicKeyEntry(key_id=sig_id, public_key=b64u(public), status="active",
                           registered_at=format_timestamp(now))
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
    stamp = format_timestamp(dt.datetime.now(dt.UTC))
    keys = tuple(k.model_copy(update={"status": "retired", "retired_at": k.retired_at or stamp})
                 if k.key_id == key_id else k for k in registry.exchange_keys)
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


# --------------------------------------------------------------------------- public keys made elsewhere
#: Raw Ed25519 public key size; a 64-byte value is the libsodium form of a *private* key.
RAW_PUBLIC_BYTES = 32
_REGISTER_HINT = ("send the Ed25519 public key as PEM (-----BEGIN PUBLIC KEY-----), raw 32 bytes, "
                  "base64url/base64 of the raw key, or a JWK {\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":…}; "
                  "with OpenSSL: openssl pkey -in private.pem -pubout -out public.pem")
_PRIVATE_HINT = ("the fund keeps its private key; ask it for the public part only "
                 "(openssl pkey -in private.pem -pubout -out public.pem)")


def _refuse(what: str, hint: str = _REGISTER_HINT) -> InputError:
    return InputError(what, hint)


def _from_loaded(key: object) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, rsa.RSAPublicKey):
        kind = f"RSA ({key.key_size} bits)"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kind = f"EC {key.curve.name} (P-256 / ECDSA family)" if key.curve.name == "secp256r1" \
            else f"EC {key.curve.name}"
    elif isinstance(key, ed448.Ed448PublicKey):
        kind = "Ed448"
    else:
        kind = type(key).__name__
    raise _refuse(f"clé publique refusée : c'est une clé {kind}, l'échange n'accepte que Ed25519 "
                  f"(not an Ed25519 key: {kind})",
                  "the fund must create an Ed25519 key pair (openssl genpkey -algorithm ed25519) "
                  "and send its public part")


def _private_given() -> InputError:
    return _refuse("clé refusée : c'est une clé PRIVÉE, jamais transmise à l'échange — elle n'est ni "
                   "enregistrée ni affichée (a private key was given; it is not stored or printed)",
                   _PRIVATE_HINT)


def parse_public_key(data: bytes) -> tuple[bytes, str | None]:
    """The raw 32-byte Ed25519 public key in ``data``, and the JWK ``kid`` if there is one.

    Accepts PEM (SubjectPublicKeyInfo), DER SubjectPublicKeyInfo, raw 32 bytes,
    base64url or base64 text of the raw key, a JWK ``{"kty":"OKP","crv":"Ed25519","x":…}``,
    and an OpenSSH ``ssh-ed25519 …`` line.
    Refuses (:class:`InputError`, exit 2) anything else, saying what it is — a private key
    given by mistake included, which is never echoed."""
    from cryptography.hazmat.primitives.serialization import load_der_private_key, load_der_public_key

    text = data.strip()
    if not text:
        raise _refuse("clé publique refusée : le fichier est vide (empty file)")
    if text.startswith(b"-----BEGIN"):
        header = text.split(b"\n", 1)[0]
        if b"PRIVATE" in header:
            raise _private_given()
        try:
            return _from_loaded(serialization.load_pem_public_key(text)), None
        except InputError:
            raise
        except (ValueError, TypeError) as exc:
            raise _refuse("clé publique refusée : PEM illisible (unreadable PEM public key)") from exc
    if text.startswith(b"{"):
        return _from_jwk(text)
    if text.startswith((b"ssh-", b"ecdsa-")):  # an OpenSSH public key line
        try:
            return _from_loaded(serialization.load_ssh_public_key(text)), None
        except InputError:
            raise
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise _refuse("clé publique refusée : ligne OpenSSH illisible (unreadable OpenSSH public key)") from exc
    printable = text.isascii() and all(32 < c < 127 or c in b"\r\n\t " for c in text)
    if len(data) == RAW_PUBLIC_BYTES and not printable:  # (32 random bytes all printable: ≈ 1e-13)
        return data, None
    if not printable:  # binary: DER?
        try:
            return _from_loaded(load_der_public_key(data)), None
        except InputError:
            raise
        except (ValueError, TypeError):
            pass
        try:
            load_der_private_key(data, password=None)
        except (ValueError, TypeError):
            pass
        else:
            raise _private_given()
        raise _refuse(f"clé publique refusée : {len(data)} octets qui ne sont ni une clé brute de "
                      f"{RAW_PUBLIC_BYTES} octets ni une clé DER (not a raw 32-byte key nor DER)")
    compact = b"".join(text.split())
    try:
        raw = base64.b64decode(compact.replace(b"-", b"+").replace(b"_", b"/") + b"=" * (-len(compact) % 4),
                               validate=True)
    except ValueError as exc:
        raise _refuse("clé publique refusée : format non reconnu (neither PEM, JWK, raw bytes nor "
                      "base64 of the raw key)") from exc
    if len(raw) == 2 * RAW_PUBLIC_BYTES:
        raise _private_given()  # libsodium's secret key: seed and public key, 64 bytes
    if len(raw) != RAW_PUBLIC_BYTES:
        raise _refuse(f"clé publique refusée : {len(raw)} octets une fois décodée, une clé Ed25519 en a "
                      f"{RAW_PUBLIC_BYTES} (wrong length: {len(raw)} bytes, Ed25519 needs 32)")
    return raw, None


def _from_jwk(text: bytes) -> tuple[bytes, str | None]:
    try:
        jwk = json.loads(text)
    except ValueError as exc:
        raise _refuse("clé publique refusée : JSON illisible (unreadable JWK)") from exc
    if not isinstance(jwk, dict):
        raise _refuse("clé publique refusée : un JWK est un objet JSON (a JWK is a JSON object)")
    if "d" in jwk:
        raise _private_given()
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty != "OKP" or crv != "Ed25519":
        kind = f"kty={kty!s:.10} crv={crv!s:.10}" if isinstance(kty, str) else "sans kty"
        raise _refuse(f"clé publique refusée : JWK {kind}, l'échange n'accepte que kty=OKP crv=Ed25519 "
                      f"(not an Ed25519 JWK)",
                      "the fund must create an Ed25519 key pair and send its public JWK")
    x = jwk.get("x")
    if not isinstance(x, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", x):
        raise _refuse("clé publique refusée : le membre x du JWK manque ou n'est pas en base64url "
                      "(JWK member x missing or not base64url)")
    raw = b64u_decode(x)
    if len(raw) != RAW_PUBLIC_BYTES:
        raise _refuse(f"clé publique refusée : x fait {len(raw)} octets, une clé Ed25519 en a {RAW_PUBLIC_BYTES} "
                      f"(wrong length)")
    kid = jwk.get("kid")
    return raw, kid if isinstance(kid, str) else None


@dataclass(frozen=True)
class Registered:
    """What ``keys register`` did: the key id, its fingerprint, and whether it was new."""

    key_id: str
    fingerprint: str
    new: bool
    status: str = "active"


def register_signing_key(key_dir: Path, fund: Fund, data: bytes, *, key_id: str | None = None,
                         now: dt.datetime | None = None) -> Registered:
    """Add ``fund``'s Ed25519 public key made elsewhere (``data``: see :func:`parse_public_key`).

    The key id: ``key_id``, else the JWK's ``kid``, else ``<fund>-sig-<yyyymmdd>-<4 hex>``.
    The same key under the same id again does nothing; an id already taken by another key,
    or the same key under another id or fund, is refused."""
    now = now or dt.datetime.now(dt.UTC)
    raw, kid = parse_public_key(data)
    chosen = key_id or kid or _new_key_id(f"{fund.value}-sig", now)
    origin = "--key-id" if key_id else "le kid du JWK" if kid else "l'identifiant"
    if not re.fullmatch(KEY_ID_PATTERN, chosen):
        raise InputError(f"identifiant de clé refusé ({origin}) : {chosen[:40]!r} ne suit pas le format "
                         f"des identifiants (key id format {KEY_ID_PATTERN})",
                         f"use e.g. --key-id {fund.value}-sig-{now:%Y%m%d}-a1b2 (lower-case segments "
                         "of letters and digits joined by '-')")
    public = b64u(raw)
    registry = _registry_or_empty(key_dir)
    for other_fund, keys in registry.funds.items():
        for entry in keys.signing_keys:
            if entry.public_key == public and (other_fund is not fund or entry.key_id != chosen):
                raise InputError(
                    f"cette clé est déjà enregistrée pour {other_fund.value} sous {entry.key_id} "
                    f"(the same public key is already registered)",
                    "a key belongs to one fund under one id; ask the fund for a new key pair")
    existing = registry.signing_key_entry(fund, chosen)
    if existing is not None:
        if existing.public_key != public:
            raise InputError(
                f"l'identifiant {chosen} est déjà celui d'une autre clé de {fund.value} "
                f"({fingerprint(existing.raw())}) (key id already taken by another key)",
                "choose another --key-id; a key id never changes key (receipts and audits name it)")
        return Registered(chosen, fingerprint(raw), new=False, status=existing.status)
    entry = PublicKeyEntry(key_id=chosen, public_key=public, status="active",
                           registered_at=format_timestamp(now))
    keys = registry.funds.get(fund, FundKeys())
    funds = {**registry.funds, fund: FundKeys(signing_keys=(*keys.signing_keys, entry))}
    save_registry(registry.model_copy(update={"funds": funds}), registry_path(key_dir))
    return Registered(chosen, fingerprint(raw), new=True)


def retire_signing_key(key_dir: Path, fund: Fund, key_id: str, *, force: bool = False,
                       now: dt.datetime | None = None) -> bool:
    """Mark ``fund``'s signing key ``key_id`` retired (the correlator then refuses it with
    ``cle_signature_retiree``). False if it already was.

    Refused, unless ``force``, for the fund's last active key (nothing it signs would be
    accepted any more) and for its current key here (``current.json``: what ``publish``
    signs with — rotate first)."""
    now = now or dt.datetime.now(dt.UTC)
    registry = load_registry(registry_path(key_dir))
    entry = registry.signing_key_entry(fund, key_id)
    if entry is None:
        raise InputError(f"{fund.value} n'a pas de clé de signature {key_id!r} dans le registre "
                         "(no such signing key)", "see `help-exchange keys list`")
    if entry.status == "retired":
        return False
    if not force:
        active = [e for e in registry.funds[fund].signing_keys if e.status == "active"]
        if len(active) <= 1:
            raise InputError(
                f"{key_id} est la dernière clé de signature active de {fund.value} : plus aucun de ses "
                "signalements ne serait accepté (last active key of the fund)",
                f"register or create the new key first (`keys register` / `keys init --fund {fund.value} "
                "--rotate`), then retire this one; or add --force if the key is compromised")
        current = read_current(key_dir, fund)
        if current is not None and current.signing == key_id:
            raise InputError(
                f"{key_id} est la clé en vigueur de {fund.value} ici ({_current_path(key_dir, fund)}) : "
                "publish signe encore avec elle (the fund's current key)",
                f"rotate first: `help-exchange keys init --fund {fund.value} --rotate`; or add --force")
    keys = tuple(e.model_copy(update={"status": "retired", "retired_at": format_timestamp(now)})
                 if e.key_id == key_id else e for e in registry.funds[fund].signing_keys)
    funds = {**registry.funds, fund: FundKeys(signing_keys=keys)}
    save_registry(registry.model_copy(update={"funds": funds}), registry_path(key_dir))
    return True


def sign_registry(key_dir: Path) -> None:
    """Write the registry again as it is, signed (a registry from before signatures, or one
    the operator edited by hand on purpose): it must parse; the registry key is made if need be."""
    save_registry(load_registry(registry_path(key_dir)), registry_path(key_dir))


def signing_key_warning(registry: Registry, fund: Fund, key_id: str) -> str | None:
    """Why signals signed by ``key_id`` would be refused, per this registry copy; None if active."""
    entry = registry.signing_key_entry(fund, key_id)
    if entry is None:
        return (f"la clé de signature {key_id} n'est pas dans le registre local : l'échange refusera "
                "ces signalements (cle_signature_inconnue) tant qu'elle n'y est pas enregistrée")
    if entry.status == "retired":
        return (f"la clé de signature {key_id} est retirée dans le registre local : l'échange refusera "
                "ces signalements (cle_signature_retiree)")
    return None
