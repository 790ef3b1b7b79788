"""Signatures over the RFC 8785 (JCS) canonical form of a message.

What is signed is the message as a JSON object *without* its ``signature`` member, in its
canonical form; so any client in any language can verify from the received bytes alone,
and whitespace or member order on the wire does not matter. The correlator verifies the
object it received, never a re-serialisation of its own model.

The canonical form is :func:`services.core.codec.canonical` (a fast path proved equal to
the ``rfc8785`` package, which decides whatever the fast path cannot prove plain).

Verification: ``cryptography``'s Ed25519 check (OpenSSL) holds the GIL and is the slower of
the two; libsodium's (PyNaCl) is the faster. :class:`VerifyingKey` asks libsodium first and,
only when libsodium refuses, lets ``cryptography`` decide, so the acceptance is exactly
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
import binascii
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.core.codec import canonical
from services.errors import ConfigurationError

_sodium_open: Callable[[bytes, bytes], bytes] | None
_sodium_sign: Callable[[bytes, bytes], bytes] | None
_sodium_keypair: Callable[[bytes], tuple[bytes, bytes]] | None
_SodiumError: type[Exception]
try:  # libsodium: the fast path of VerifyingKey and of signing_function (see the module docstring)
    from nacl.bindings import crypto_sign as _nacl_sign
    from nacl.bindings import crypto_sign_open as _nacl_open
    from nacl.bindings import crypto_sign_seed_keypair as _nacl_keypair
    from nacl.exceptions import CryptoError as _NaclError

    _sodium_open, _SodiumError = _nacl_open, _NaclError
    _sodium_sign, _sodium_keypair = _nacl_sign, _nacl_keypair
except ImportError:  # pragma: no cover - without PyNaCl, cryptography alone (same answers)
    _sodium_open, _SodiumError = None, Exception
    _sodium_sign = _sodium_keypair = None

ALG = "Ed25519"


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64u(data: bytes) -> str:
    """base64url without padding, as every binary value of the contract.

    (``base64.urlsafe_b64encode`` with one call less: a producer makes three a line.)"""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_input(message: dict[str, Any], *, plain: bool | None = None) -> bytes:
    """The bytes that are signed: the canonical JSON of ``message`` minus ``signature``
    (``plain``: as for :func:`canonical`, said of the whole message)."""
    unsigned = {k: v for k, v in message.items() if k != "signature"}
    return canonical(unsigned, plain=plain or None)


def sign(message: dict[str, Any], key: Ed25519PrivateKey, key_id: str) -> dict[str, Any]:
    """Return ``message`` with its ``signature`` member set."""
    value = key.sign(signing_input(message))
    return {**message, "signature": {"key_id": key_id, "alg": ALG, "value": b64u(value)}}


def signing_function(key: Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    """The 64-byte Ed25519 signature of some bytes under ``key``: libsodium's when PyNaCl is
    installed (it signs faster than OpenSSL here, and releases the GIL), else ``key.sign``.

    Ed25519 signing is deterministic (RFC 8032 §5.1.6: the nonce is a hash of the key and the
    message), so both give the same bytes; ``tests/core/test_signing_function.py`` checks it."""
    if _sodium_sign is None or _sodium_keypair is None:  # pragma: no cover - PyNaCl is a dependency
        return key.sign
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    _, secret = _sodium_keypair(seed)
    sodium_sign = _sodium_sign

    def sign_bytes(data: bytes) -> bytes:
        return sodium_sign(data, secret)[:64]  # libsodium returns signature || message

    return sign_bytes


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
