"""A signal's person members sealed by the fund (contract §2.1), so that erasure reaches
every copy of the signal topics.

The exchange keeps one random *data key* per person and epoch (``exchange_data_keys``,
:mod:`services.platform.datakeys`); erasure (objection, withdrawal, purge) destroys it. A
fund never receives it: the key endpoint hands it the key *derived* for that fund,
``HKDF-SHA256(ikm = data key, salt = none, info = "help-exchange/signal-key/v1" 0x00
<fund code>, 32 bytes)``, which opens that fund's signals and nothing else. The fund seals
the canonical JSON (RFC 8785) of ``{category, observed_on, sealed_ref, territory}`` under
it with AES-256-GCM, a fresh 12-byte nonce, and the associated data

    "help-exchange/signal/v1" 0x00 topic 0x00 signal_id 0x00 subject (16 bytes) epoch (4, big endian)

so that a sealed member moved to another topic, signal or person does not open; then it
signs the whole message, so the signature covers the sealed form. The exchange derives the
same key from its table to open it. Once the data key is destroyed, neither side can.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import ValidationError

from services.core.codec import canonical
from services.core.messages import SealedMembers, SealedSignal, Signal, SignalContent
from services.core.signing import b64u, b64u_decode
from services.core.types import Fund

KEY_INFO = b"help-exchange/signal-key/v1\x00"
AAD_LABEL = b"help-exchange/signal/v1\x00"
NONCE_BYTES = 12
#: The members of a clear signal that a sealed one carries in ``sealed``.
SEALED_MEMBERS = ("category", "observed_on", "territory", "sealed_ref")


def fund_key(data_key: bytes, fund: Fund | str) -> bytes:
    """The key a fund seals a person's signals with, derived from the person's data key."""
    code = fund.value if isinstance(fund, Fund) else fund
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=KEY_INFO + code.encode("ascii")).derive(data_key)


def associated_data(topic: str, signal_id: str, subject: bytes, epoch: int) -> bytes:
    return (AAD_LABEL + topic.encode("ascii") + b"\x00" + signal_id.encode("ascii") + b"\x00"
            + subject + struct.pack(">I", epoch))


def plaintext(content: dict[str, object]) -> bytes:
    """The bytes sealed: the RFC 8785 form of the four members (as JSON values)."""
    return canonical({k: content[k] for k in SEALED_MEMBERS})


def seal_members(key: bytes | AESGCM, topic: str, signal_id: str, subject: bytes, epoch: int,
                 content: dict[str, object], *, nonce: bytes | None = None) -> dict[str, object]:
    """The ``sealed`` member (as JSON values) of ``content`` under the fund's ``key``.
    ``nonce``: only for the test vectors; never reuse one."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    cipher = AESGCM(key) if isinstance(key, bytes) else key
    sealed = cipher.encrypt(nonce, plaintext(content), associated_data(topic, signal_id, subject, epoch))
    return {"alg": "A256GCM", "subject": subject.hex(), "epoch": epoch, "value": b64u(nonce + sealed)}


def seal_message(key: bytes | AESGCM, topic: str, subject: bytes, epoch: int, message: dict[str, object],
                 *, nonce: bytes | None = None) -> dict[str, object]:
    """A clear signal's members (unsigned, as JSON values) with its person members sealed,
    in the contract's member order (``sealed`` just before ``signature``)."""
    sealed = seal_members(key, topic, str(message["signal_id"]), subject, epoch, message, nonce=nonce)
    out = {k: v for k, v in message.items() if k not in SEALED_MEMBERS and k != "signature"}
    out["sealed"] = sealed
    if "signature" in message:
        out["signature"] = message["signature"]
    return out


def open_members(key: bytes, topic: str, signal_id: str, sealed: SealedMembers) -> SignalContent | None:
    """The person members, or None if the fund's ``key`` does not open them (another key,
    another topic or signal, altered) or what opens is not the four members."""
    return _open(key, topic, signal_id, (sealed.subject, sealed.epoch, sealed.value))


def open_sealed(data_key: bytes, fund: Fund, topic: str, signal_id: str,
                sealed: tuple[str, int, str]) -> SignalContent | None:
    """What the exchange opens: ``sealed`` = (subject hex, epoch, value) of a signal of
    ``fund``, under the person's ``data_key`` of that epoch."""
    return _open(fund_key(data_key, fund), topic, signal_id, sealed)


def _open(key: bytes, topic: str, signal_id: str, sealed: tuple[str, int, str]) -> SignalContent | None:
    subject, epoch, value = sealed
    try:
        raw = b64u_decode(value)
    except ValueError:
        return None
    aad = associated_data(topic, signal_id, bytes.fromhex(subject), epoch)
    try:
        clear = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        return None
    try:
        return SignalContent.model_validate_json(clear)
    except ValidationError:
        return None


def opened(signal: SealedSignal, content: SignalContent) -> Signal:
    """The clear signal a sealed one stands for, once opened (its signature kept as it was:
    it covers the sealed form)."""
    members = signal.model_dump(exclude={"sealed"}, exclude_none=True)
    members.update(content.model_dump())
    return Signal.model_validate(members, strict=False)
