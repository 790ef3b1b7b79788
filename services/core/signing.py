"""Signatures over the RFC 8785 (JCS) canonical form of a message.

What is signed is the message as a JSON object *without* its ``signature`` member, in its
canonical form; so any client in any language can verify from the received bytes alone,
and whitespace or member order on the wire does not matter. The correlator verifies the
object it received, never a re-serialisation of its own model.

Speed: the ``rfc8785`` package is pure Python (≈ 60-130 µs for a signal, as much as the
Ed25519 check itself). For the messages of this contract — objects, arrays, ASCII strings,
integers within ±(2**53 - 1), booleans and null, no floats — RFC 8785 is exactly
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, and so is
``orjson.dumps(option=OPT_SORT_KEYS)``, which :func:`canonical` uses (≈ 1 µs, the C ``json``
encoder ≈ 7 µs; the tests check all three agree): keys sort by
UTF-16 code units, which for ASCII is Python's own string order; string escaping is the same
table (``\\b \\f \\n \\r \\t``, ``\\u00xx`` in lower case for the other control characters,
``\\"`` and ``\\\\``, nothing else); integers in that range print the same. :func:`signing_input`
takes that path only when :func:`_plain` proves the object is of that kind, and
``rfc8785.dumps`` for anything else (a float, a non-ASCII string or key, a big integer, a
tuple or any other type). ``tests/correlator/test_fast_paths.py`` checks the equivalence
property-based against the ``rfc8785`` package.

Verification: ``cryptography``'s Ed25519 check (OpenSSL) costs ≈ 180 µs here and holds the
GIL; libsodium's (PyNaCl) ≈ 65 µs. :class:`VerifyingKey` asks libsodium first and, only when
libsodium refuses, lets ``cryptography`` decide, so the acceptance is exactly
``cryptography``'s as long as every signature libsodium accepts OpenSSL accepts too. Both
check the same cofactorless equation ``[s]B = R + [H(R‖A‖M)]A`` against the received ``R``
bytes and both refuse ``s ≥ L``; libsodium is stricter, never looser: it also refuses a
small-order or non-canonically encoded public key and a small-order ``R``. No compliant
signer produces those (a key is ``a·B`` with a clamped ``a``, ``R`` is ``r·B`` with ``r`` a
hash); a signature of that kind simply takes the slow path and gets ``cryptography``'s
answer. ``tests/correlator/test_fast_paths.py`` checks the two agree on valid signatures,
mutations of them and the small-order / non-canonical vectors. Without PyNaCl installed,
``cryptography`` alone is used.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.errors import ConfigurationError

_sodium_open: Callable[[bytes, bytes], bytes] | None
_SodiumError: type[Exception]
try:  # libsodium: the fast path of VerifyingKey (see the module docstring)
    from nacl.bindings import crypto_sign_open as _nacl_open
    from nacl.exceptions import CryptoError as _NaclError

    _sodium_open, _SodiumError = _nacl_open, _NaclError
except ImportError:  # pragma: no cover - without PyNaCl, cryptography alone (same answers)
    _sodium_open, _SodiumError = None, Exception

ALG = "Ed25519"


def b64u(data: bytes) -> str:
    """base64url without padding, as every binary value of the contract."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_INT_MAX = 2**53 - 1  # RFC 8785 (I-JSON): integers beyond this are not exact in a double
_SORTED = orjson.OPT_SORT_KEYS
#: The same form for plain values, for what orjson refuses to write (nesting over 254 levels).
_json_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                   check_circular=False, allow_nan=False).encode


def plain_members(value: Any) -> int:
    """The number of object members in ``value`` if it is JSON made only of dicts, lists,
    ASCII strings, safe ints, bools and null; -1 if it is anything else.

    (Leaves are tested inline, containers by recursion: a call per leaf was half the cost.
    The count serves the correlator's duplicate-member check, see ``checks.load_json``.)"""
    t = type(value)
    if t is dict:
        n = len(value)
        for k, v in value.items():
            if type(k) is not str or not k.isascii():
                return -1
            tv = type(v)
            if tv is str:
                if not v.isascii():
                    return -1
            elif tv is dict or tv is list:
                inner = plain_members(v)
                if inner < 0:
                    return -1
                n += inner
            elif tv is int:
                if not -_INT_MAX <= v <= _INT_MAX:
                    return -1
            elif v is not None and tv is not bool:
                return -1
        return n
    if t is list:
        n = 0
        for v in value:
            tv = type(v)
            if tv is str:
                if not v.isascii():
                    return -1
            elif tv is dict or tv is list:
                inner = plain_members(v)
                if inner < 0:
                    return -1
                n += inner
            elif tv is int:
                if not -_INT_MAX <= v <= _INT_MAX:
                    return -1
            elif v is not None and tv is not bool:
                return -1
        return n
    if t is str:
        return 0 if value.isascii() else -1
    if t is int:
        return 0 if -_INT_MAX <= value <= _INT_MAX else -1
    return 0 if value is None or t is bool else -1


def _plain(value: Any) -> bool:
    """True if ``value`` is JSON of the plain kind (see :func:`plain_members`)."""
    return plain_members(value) >= 0


def canonical(value: Any, *, plain: bool | None = None) -> bytes:
    """RFC 8785 (JCS) form of ``value``: ``orjson`` when provably equal, else rfc8785.

    ``plain=True`` says the caller has already established that ``value`` is plain (as
    :func:`plain_members` defines it); by default it is checked here."""
    try:
        if plain or (plain is None and _plain(value)):
            try:
                return orjson.dumps(value, option=_SORTED)
            except orjson.JSONEncodeError:  # deeper than orjson writes (254 levels)
                return _json_canonical(value).encode()
    except RecursionError:
        pass  # absurdly deep: let rfc8785 decide (it raises)
    return rfc8785.dumps(value)


def signing_input(message: dict[str, Any], *, plain: bool | None = None) -> bytes:
    """The bytes that are signed: the canonical JSON of ``message`` minus ``signature``
    (``plain``: as for :func:`canonical`, said of the whole message)."""
    unsigned = {k: v for k, v in message.items() if k != "signature"}
    return canonical(unsigned, plain=plain or None)


def sign(message: dict[str, Any], key: Ed25519PrivateKey, key_id: str) -> dict[str, Any]:
    """Return ``message`` with its ``signature`` member set."""
    value = key.sign(signing_input(message))
    return {**message, "signature": {"key_id": key_id, "alg": ALG, "value": b64u(value)}}


def load_private_key(path: Path, what: str, hint: str) -> Ed25519PrivateKey:
    """The Ed25519 private key of a PKCS#8 PEM file (no password), or one
    :class:`ConfigurationError` naming ``what`` and ``path``, with ``hint``."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"{what} {path} is unreadable: {exc}", hint) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{what} {path} is not an Ed25519 key", hint)
    return key


class VerifyingKey:
    """An Ed25519 public key checked by libsodium first, by ``cryptography`` when it refuses.

    Accepts exactly what ``key.verify`` accepts (see the module docstring), faster."""

    __slots__ = ("key", "raw")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key = key
        self.raw = key.public_bytes_raw()

    def verify(self, signature: bytes, data: bytes) -> None:
        """Return if valid, raise :class:`InvalidSignature` if not (as ``cryptography``)."""
        if _sodium_open is not None and len(signature) == 64:
            try:
                _sodium_open(signature + data, self.raw)
                return
            except _SodiumError:
                pass  # stricter than OpenSSL on odd encodings: let cryptography decide
        self.key.verify(signature, data)


def verify(message: dict[str, Any], key: Ed25519PublicKey | VerifyingKey, *,
           plain: bool | None = None) -> bool:
    """True if ``message['signature']`` is ``key``'s Ed25519 signature of the message
    (``plain=True``: the caller knows the message is plain JSON, see :func:`canonical`)."""
    sig = message.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != ALG or not isinstance(sig.get("value"), str):
        return False
    try:
        key.verify(b64u_decode(sig["value"]), signing_input(message, plain=plain))
    except (InvalidSignature, ValueError, RecursionError, rfc8785.CanonicalizationError):
        return False
    return True
