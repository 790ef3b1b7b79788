"""The fast keyed digest (pads hashed once) against the standard library's HMAC."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.keyed_digest import KeyedDigest
from services.correlator.engine import MARKER_PREFIX, Engine
from services.platform.datakeys import DIGESTED, KeyRing, changelog_key, changelog_keys, subject_of
from tests.correlator.core_fixtures import context
from tests.support.signals import Funds


@settings(max_examples=500, deadline=None)
@given(key=st.binary(min_size=0, max_size=200), messages=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_equals_hmac_digest(key: bytes, messages: list[bytes]) -> None:
    keyed = KeyedDigest(key)
    for message in messages:  # (the same object again: its pads are copied, never consumed)
        assert keyed.digest(message) == hmac.digest(key, message, hashlib.sha256)


def test_keys_at_the_block_edges() -> None:
    for size in (0, 1, 31, 32, 63, 64, 65, 128):
        key = bytes(range(size))
        assert KeyedDigest(key).digest(b"m") == hmac.digest(key, b"m", hashlib.sha256), size


@settings(max_examples=200, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), key=st.binary(max_size=120))
def test_changelog_keys_and_subjects(secret: bytes, key: bytes) -> None:
    if key.startswith(DIGESTED):  # a changelog key already (an erasure command's): as it is
        assert changelog_keys(secret)(key) == key[len(DIGESTED):]
        key = key[len(DIGESTED):] or b"x"
        assert changelog_keys(secret)(DIGESTED + changelog_key(secret, key)) == changelog_key(secret, key)
    else:
        assert changelog_keys(secret)(key) == changelog_key(secret, key)
    ring = KeyRing(store=None, secret=secret)  # type: ignore[arg-type]  # (subject needs no store)
    assert ring.subject(key) == subject_of(secret, key)


@settings(max_examples=50, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32),
       keys=st.lists(st.binary(max_size=40).filter(lambda k: not k.startswith(DIGESTED)), min_size=1, max_size=60))
def test_remembered_changelog_keys_past_their_bound(secret: bytes, keys: list[bytes]) -> None:
    # Asked again (a person's read, then its write), and past the bound (forgotten, made again).
    of = changelog_keys(secret, remember=7)
    for key in keys + keys[::-1] + keys:
        assert of(key) == changelog_key(secret, key)


@settings(max_examples=100, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), key=st.binary(max_size=120))
def test_engine_marker_keys(secret: bytes, key: bytes) -> None:
    engine = Engine(context(), _REGISTRY, marker_secret=secret)
    assert engine.marker_key(key) == MARKER_PREFIX + hmac.digest(secret, key, hashlib.sha256)[:16].hex().encode()


_REGISTRY = Funds().registry()
