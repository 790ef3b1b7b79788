"""Signatures over the RFC 8785 (JCS) canonical form of a message.

What is signed is the message as a JSON object *without* its ``signature`` member, in its
canonical form; so any client in any language can verify from the received bytes alone,
and whitespace or member order on the wire does not matter. The correlator verifies the
object it received, never a re-serialisation of its own model.

Speed: the ``rfc8785`` package is pure Python (≈ 60-130 µs for a signal, as much as the
Ed25519 check itself). For the messages of this contract — objects, arrays, ASCII strings,
integers within ±(2**53 - 1), booleans and null, no floats — RFC 8785 is exactly
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``: keys sort by
UTF-16 code units, which for ASCII is Python's own string order; string escaping is the same
table (``\\b \\f \\n \\r \\t``, ``\\u00xx`` in lower case for the other control characters,
``\\"`` and ``\\\\``, nothing else); integers in that range print the same. :func:`signing_input`
takes that path only when :func:`_plain` proves the object is of that kind, and
``rfc8785.dumps`` for anything else (a float, a non-ASCII string or key, a big integer, a
tuple or any other type). ``tests/correlator/test_fast_paths.py`` checks the equivalence
property-based against the ``rfc8785`` package.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG = "Ed25519"


def b64u(data: bytes) -> str:
    """base64url without padding, as every binary value of the contract."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_INT_MAX = 2**53 - 1  # RFC 8785 (I-JSON): integers beyond this are not exact in a double
_canonical_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                    check_circular=False, allow_nan=False).encode


def _plain(value: Any) -> bool:
    """True if ``value`` is JSON made only of dicts, lists, ASCII strings, safe ints, bools, null."""
    t = type(value)
    if t is str:
        return bool(value.isascii())
    if t is dict:
        return all(type(k) is str and k.isascii() and _plain(v) for k, v in value.items())
    if t is list:
        return all(_plain(v) for v in value)
    if t is int:
        return bool(-_INT_MAX <= value <= _INT_MAX)
    return value is None or t is bool


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) form of ``value``: the C ``json`` encoder when provably equal, else rfc8785."""
    try:
        if _plain(value):
            return _canonical_dumps(value).encode()
    except RecursionError:
        pass  # absurdly deep: let rfc8785 decide (it raises)
    return rfc8785.dumps(value)


def signing_input(message: dict[str, Any]) -> bytes:
    """The bytes that are signed: the canonical JSON of ``message`` minus ``signature``."""
    unsigned = {k: v for k, v in message.items() if k != "signature"}
    return canonical(unsigned)


def sign(message: dict[str, Any], key: Ed25519PrivateKey, key_id: str) -> dict[str, Any]:
    """Return ``message`` with its ``signature`` member set."""
    value = key.sign(signing_input(message))
    return {**message, "signature": {"key_id": key_id, "alg": ALG, "value": b64u(value)}}


def verify(message: dict[str, Any], key: Ed25519PublicKey) -> bool:
    """True if ``message['signature']`` is ``key``'s Ed25519 signature of the message."""
    sig = message.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != ALG or not isinstance(sig.get("value"), str):
        return False
    try:
        key.verify(b64u_decode(sig["value"]), signing_input(message))
    except (InvalidSignature, ValueError, RecursionError, rfc8785.CanonicalizationError):
        return False
    return True
