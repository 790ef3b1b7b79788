"""``HmacSha256`` (the key's pads hashed once) against the standard library's HMAC."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from services.core.keyed_hash import HmacSha256


@given(key=st.binary(max_size=200), messages=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_equals_hmac_digest(key: bytes, messages: list[bytes]) -> None:
    """Keys shorter than, as long as and longer than a block (hashed first); one object, many messages."""
    mac = HmacSha256(key)
    for message in messages:
        assert mac.digest(message) == hmac.digest(key, message, hashlib.sha256)


def test_block_sized_and_longer_keys() -> None:
    for size in (63, 64, 65, 128):
        key = bytes(range(size))
        assert HmacSha256(key).digest(b"m") == hmac.digest(key, b"m", hashlib.sha256)
