"""The libsodium fast path of signature verification accepts exactly what ``cryptography`` does.

:class:`services.core.signing.VerifyingKey` asks libsodium (PyNaCl) first and lets
``cryptography`` (OpenSSL) decide whatever libsodium refuses; so its answers are
``cryptography``'s provided libsodium never accepts a signature OpenSSL refuses. Checked
here on valid signatures, on mutations of them (hypothesis), and on the edge cases where
Ed25519 implementations are known to differ ("Taming the many EdDSAs", Chalkias et al.,
2020): small-order public key, small-order ``R``, ``s ≥ L``, non-canonical encodings of the
key and of ``R``. On those, libsodium is stricter (it refuses what OpenSSL accepts): the
tests record it, and that the answer given is OpenSSL's.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

from services.core import signing

L = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19
IDENTITY = (1).to_bytes(32, "little")


def openssl_accepts(pub: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def sodium_accepts(pub: bytes, sig: bytes, msg: bytes) -> bool:
    if len(sig) != 64:
        return False
    try:
        crypto_sign_open(sig + msg, pub)
    except CryptoError:
        return False
    return True


def fast_accepts(pub: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(pub)
    except ValueError:
        return False
    try:
        signing.VerifyingKey(key).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def check(pub: bytes, sig: bytes, msg: bytes) -> tuple[bool, bool]:
    """(OpenSSL's answer, libsodium's answer); asserts the invariant and the fast path."""
    ssl, sodium = openssl_accepts(pub, sig, msg), sodium_accepts(pub, sig, msg)
    assert not (sodium and not ssl), "libsodium accepted a signature OpenSSL refuses"
    assert fast_accepts(pub, sig, msg) == ssl
    return ssl, sodium


def _scalar(seed: bytes) -> int:
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return int.from_bytes(h, "little")


def _k(r: bytes, pub: bytes, msg: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + pub + msg).digest(), "little") % L


KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key().public_bytes_raw()
SEED = KEY.private_bytes_raw()


def test_valid_signatures_take_the_fast_path_and_are_accepted() -> None:
    for n in range(50):
        msg = f"message {n}".encode() * (n % 7 + 1)
        assert check(PUB, KEY.sign(msg), msg) == (True, True)


@settings(max_examples=300, deadline=None)
@given(msg=st.binary(max_size=300), where=st.integers(0, 64 * 8 - 1), in_message=st.booleans())
def test_mutated_signatures_get_the_same_answer(msg: bytes, where: int, in_message: bool) -> None:
    sig = bytearray(KEY.sign(msg))
    data = bytearray(msg)
    if in_message and data:
        data[where // 8 % len(data)] ^= 1 << (where % 8)
    else:
        sig[where // 8] ^= 1 << (where % 8)
    check(PUB, bytes(sig), bytes(data))


@settings(max_examples=100, deadline=None)
@given(pub=st.binary(min_size=32, max_size=32), sig=st.binary(min_size=64, max_size=64),
       msg=st.binary(max_size=64))
def test_random_bytes_get_the_same_answer(pub: bytes, sig: bytes, msg: bytes) -> None:
    check(pub, sig, msg)


def test_s_not_reduced_is_refused_by_both() -> None:
    msg = b"s >= L"
    sig = KEY.sign(msg)
    s = int.from_bytes(sig[32:], "little")
    assert check(PUB, sig[:32] + (s + L).to_bytes(32, "little"), msg) == (False, False)


def test_small_order_key_with_identity_r_openssl_decides() -> None:
    # [0]B == R + k*A for A = R = identity, any message: cofactorless-valid. libsodium
    # refuses small-order keys; what counts is OpenSSL's answer.
    _, sodium = check(IDENTITY, IDENTITY + bytes(32), b"anything")
    assert not sodium


def test_small_order_r_with_a_real_key_openssl_decides() -> None:
    # R = identity and s = k*a: [s]B = k*A = R + k*A. libsodium refuses a small-order R.
    msg = b"small order R"
    s = _k(IDENTITY, PUB, msg) * _scalar(SEED) % L
    ssl, sodium = check(PUB, IDENTITY + s.to_bytes(32, "little"), msg)
    assert ssl and not sodium


@pytest.mark.parametrize("y", [P, P + 1, 2**255 - 1])
def test_non_canonical_key_and_r_encodings_openssl_decides(y: int) -> None:
    enc = y.to_bytes(32, "little")
    for pub, r in ((enc, IDENTITY), (IDENTITY, enc), (enc, enc), (PUB, enc)):
        check(pub, r + bytes(32), b"non-canonical")


def test_verify_accepts_a_verifying_key_like_a_public_key() -> None:
    funds_key = Ed25519PrivateKey.generate()
    message = signing.sign({"a": 1, "b": ["x"]}, funds_key, "k1")
    public = funds_key.public_key()
    assert signing.verify(message, public) and signing.verify(message, signing.VerifyingKey(public))
    tampered = {**message, "a": 2}
    assert not signing.verify(tampered, public)
    assert not signing.verify(tampered, signing.VerifyingKey(public))
