"""HMAC-SHA256 under a key fixed for many messages: the key's two padded blocks are hashed
once, and each message costs two hash copies (RFC 2104, as ``hmac.digest`` computes it).

``hmac.digest`` sets the key up again at every call (with OpenSSL 3, most of its cost for a
short message); the producer computes two HMACs per line of a file under the same keys
(``tests/core/test_keyed_hash.py`` proves the two equal)."""

from __future__ import annotations

import hashlib

_BLOCK = 64  # SHA-256's block size


class HmacSha256:
    """``hmac.digest(key, message, "sha256")`` for one ``key`` and many messages."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()
