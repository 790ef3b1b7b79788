"""Signatures over the RFC 8785 (JCS) canonical form of a message.

What is signed is the message as a JSON object *without* its ``signature`` member, in its
canonical form; so any client in any language can verify from the received bytes alone,
and whitespace or member order on the wire does not matter. The correlator verifies the
object it received, never a re-serialisation of its own model.
"""

from __future__ import annotations

import base64
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


def signing_input(message: dict[str, Any]) -> bytes:
    """The bytes that are signed: the canonical JSON of ``message`` minus ``signature``."""
    unsigned = {k: v for k, v in message.items() if k != "signature"}
    return rfc8785.dumps(unsigned)


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
    except (InvalidSignature, ValueError, rfc8785.CanonicalizationError):
        return False
    return True
