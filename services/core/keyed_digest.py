"""HMAC-SHA-256 under one fixed key, with the key's two padded blocks hashed once.

HMAC (RFC 2104) is ``H((K ^ opad) || H((K ^ ipad) || m))`` with ``K`` the key padded to the
hash's block (64 bytes for SHA-256; a longer key is hashed first). The two inner states after
``K ^ ipad`` and ``K ^ opad`` depend on the key alone: :class:`KeyedDigest` computes them once
and, per message, copies them (``hashlib``'s ``copy``), instead of ``hmac.digest`` setting
the key up again at every call. The worker computes several such digests per person
(changelog keys, objection markers, data-key subjects) under keys fixed for its life.

:meth:`KeyedDigest.digest` returns exactly ``hmac.digest(key, message, "sha256")``
(``tests/core/test_keyed_digest.py`` holds them together, short and long keys included).
"""

from __future__ import annotations

import hashlib

_BLOCK = 64  # SHA-256's block size, in bytes
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class KeyedDigest:
    """``hmac.digest(key, message, hashlib.sha256)`` for one ``key``, faster."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_BLOCK, b"\x00")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()
