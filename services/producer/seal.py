"""The sealed file reference and the deterministic signal id, both keyed by the fund alone.

Sealing
    AES-256-GCM under the fund's current sealing key, random 12-byte nonce. Wire value:
    ``b64url(nonce || ciphertext || tag)``.

    *What binds the seal.* The associated data is ``fund`` and the sealing ``key_id``: a
    seal moved to another fund's message, or relabelled with another key id, no longer
    opens. The binding to the **pseudonym** is carried *inside* the ciphertext: the
    plaintext is ``SHA-256(pseudonym key_id ":" value)[:8] || reference``. Why not put the
    pseudonym in the associated data? Because worklist exports render a sealed reference as
    the bare token ``scelle:<key_id>:<value>`` (see :func:`token`), and ``reveal`` must open
    it from the token alone; with the pseudonym in the AAD it could not. With the binding
    inside, the token is enough to open, and whoever knows which pseudonym the reference
    should belong to (the SDK, the casebook, a reveal over an export that carries the
    pseudonym) checks it with ``open_sealed(..., pseudonym=...)``; a seal cut from one
    person's signal and pasted onto another's is then detected. Nobody but the fund can
    read or forge the binding, since it is under the fund's key.

Signal id
    ``HMAC-SHA256(K_id, fund | reference | category | observed_on)[:16]`` in hex, where
    ``K_id = HMAC-SHA256(first sealing key, "help-exchange/signal-id/v1")``. Deterministic,
    so re-running a file publishes nothing twice (the outbox and the correlator dedup by
    it); keyed, so the id reveals nothing about the reference (a plain hash of a file
    number could be brute-forced). The first sealing key is used so a rotation keeps ids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.core.keyed_digest import KeyedDigest
from services.core.reasons import Reason
from services.core.signing import b64u, b64u_decode
from services.core.types import KEY_ID_PATTERN, SEALED_VALUE_PATTERN, Fund
from services.errors import CryptoError, Rejected

REFERENCE_PATTERN = re.compile(r"^[A-Za-z0-9/_.-]{2,64}$")
NONCE_BYTES = 12
BINDING_BYTES = 8
_AAD_PREFIX = b"help-exchange/sealed-ref/v1\x00"
_ID_LABEL = b"help-exchange/signal-id/v1"
TOKEN_PREFIX = "scelle"
#: a sealed reference as worklist exports render it
def _inner(pattern: str) -> str:
    """A contract pattern without anchors and with its groups made non-capturing."""
    return re.sub(r"\((?!\?)", "(?:", pattern.strip("^$"))


TOKEN_RE = re.compile(
    rf"{TOKEN_PREFIX}:(?P<key_id>{_inner(KEY_ID_PATTERN)}):(?P<value>{_inner(SEALED_VALUE_PATTERN)})"
    r"(?![A-Za-z0-9_-])"
)
_SEALED_RE = re.compile(SEALED_VALUE_PATTERN)


#: The file reference's column in the extracts.
F_REF = "reference_dossier"


def _aad(fund: Fund, key_id: str) -> bytes:
    return _AAD_PREFIX + fund.value.encode() + b"\x00" + key_id.encode()


def _binding(pseudonym: dict[str, str]) -> bytes:
    return hashlib.sha256(f"{pseudonym['key_id']}:{pseudonym['value']}".encode()).digest()[:BINDING_BYTES]


class Sealer:
    """Seals one fund's references (keeps the AEAD object: one per fund, not per line)."""

    def __init__(self, fund: Fund, key_id: str, key: bytes, *,
                 nonces: Callable[[int], bytes] = os.urandom) -> None:
        """``nonces(n)`` gives each seal's nonce: random bytes, always; only the test vectors
        (``tests/contract/make_vectors.py``) pass a fixed one, to publish reproducible seals."""
        self.fund = fund
        self.key_id = key_id
        self._aead = AESGCM(key)
        self._aad = _aad(fund, key_id)
        self._nonces = nonces

    def seal(self, reference: str, pseudonym: dict[str, str]) -> dict[str, str]:
        """The ``sealed_ref`` member of a signal, bound to ``pseudonym`` (the signal's)."""
        if not REFERENCE_PATTERN.fullmatch(reference):
            # Not sealable (only 2-64 characters of A-Z a-z 0-9 / _ . -); never quoted.
            raise Rejected(Reason.REFERENCE_INVALIDE, F_REF)
        nonce = self._nonces(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a seal's nonce is {NONCE_BYTES} bytes")
        sealed = self._aead.encrypt(nonce, _binding(pseudonym) + reference.encode("ascii"), self._aad)
        return {"key_id": self.key_id, "value": b64u(nonce + sealed)}


def open_sealed(fund: Fund, keys: dict[str, bytes], key_id: str, value: str,
                *, pseudonym: dict[str, str] | None = None) -> str:
    """The clear reference of a seal made by ``fund`` under one of ``keys`` (by key id).

    Raises :class:`CryptoError` if the key is not the fund's, the seal does not verify, or
    ``pseudonym`` is given and is not the one the reference was sealed for."""
    key = keys.get(key_id)
    if key is None:
        raise CryptoError(Reason.CLE_SIGNATURE_INCONNUE, f"sealing key {key_id} is not one of {fund.value}'s",
                          "only the fund that sealed a reference can open it")
    if not _SEALED_RE.fullmatch(value):
        raise CryptoError(Reason.SCHEMA_INVALIDE, "malformed sealed value", "")
    raw = b64u_decode(value)
    try:
        plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(fund, key_id))
    except InvalidTag as exc:
        raise CryptoError(Reason.SIGNATURE_INVALIDE, "the sealed reference does not verify",
                          "it was altered, or sealed by another fund or under another key") from exc
    if pseudonym is not None and not hmac.compare_digest(plain[:BINDING_BYTES], _binding(pseudonym)):
        raise CryptoError(Reason.SIGNATURE_INVALIDE, "the sealed reference belongs to another person",
                          "a seal was moved from one signal to another")
    return plain[BINDING_BYTES:].decode("ascii")


def token(key_id: str, value: str) -> str:
    """How exports render a sealed reference: ``scelle:<key_id>:<value>``."""
    return f"{TOKEN_PREFIX}:{key_id}:{value}"


class SignalIds:
    """Deterministic, keyed signal ids for one fund."""

    def __init__(self, fund: Fund, id_root: bytes) -> None:
        self._prefix = fund.value.encode() + b"\x00"
        self._mac = KeyedDigest(hmac.digest(id_root, _ID_LABEL, hashlib.sha256))

    def signal_id(self, reference: str, category: str, observed_on: dt.date) -> str:
        msg = self._prefix + f"{reference}\x00{category}\x00{observed_on.isoformat()}".encode()
        return self._mac.digest(msg)[:16].hex()
