"""What a dead letter keeps of a refused message (contract §11, docs/erasure.md).

A dead letter is kept 90 days on a topic that no erasure rewrites. So it keeps the message's
bytes only where an erasure can still reach them: sealed under the data key of the person a
verified signal names (``;raw_sealed``). A message refused before its checks (too large,
not JSON, bad signature, bad schema, unknown fund...) names no verified person: sealing it
under its pseudonym's key would let anyone who can write to a topic create keys at will, and
keeping it whole would keep, out of any erasure's reach, a pseudonym, categories and
references nobody verified. Such a message keeps no payload (``;raw_withheld``), only what
an operator needs to find it and the fund to fix it: the reason and the error's location,
the source position, the size and SHA-256 of the bytes (the fund's outbox holds the message
and can prove which it was), and the members of its envelope that say what kind of message
it was and who sent it (:class:`~services.core.messages.DeadLetterEnvelope`), never about
whom.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import TypeAdapter, ValidationError

from services.core.codec import load_json
from services.core.messages import DeadLetterEnvelope
from services.core.types import Emitter, Fund, Timestamp
from services.correlator.checks import MAX_MESSAGE_BYTES

_EMITTER: TypeAdapter[str] = TypeAdapter(Emitter)
_TIMESTAMP: TypeAdapter[Any] = TypeAdapter(Timestamp)
_FUNDS = {f.value: f for f in Fund}
_VERSION_CHARS = frozenset("0123456789.")


def digest(raw: bytes) -> tuple[int, str]:
    """(size, SHA-256 hex) of the bytes received."""
    return len(raw), hashlib.sha256(raw).hexdigest()


def envelope_of(raw: bytes) -> DeadLetterEnvelope | None:
    """The non-personal members of ``raw`` if it is a JSON object within the size limit,
    each one only if it has its contract form; None if it is no such object."""
    if not raw or len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        obj, _ = load_json(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # (DuplicateMember is a ValueError)
        return None
    if not isinstance(obj, dict):
        return None
    return DeadLetterEnvelope(schema_version=_version(obj.get("schema_version")),
                              fund=_FUNDS.get(obj["fund"]) if isinstance(obj.get("fund"), str) else None,
                              emitter=_valid(_EMITTER, obj.get("emitter")),
                              emitted_at=_valid(_TIMESTAMP, obj.get("emitted_at")))


def _version(value: object) -> str | None:
    """A version number as ``1.0`` or ``2.1`` (the schema's pattern), else None."""
    if not isinstance(value, str) or not 3 <= len(value) <= 7 or not set(value) <= _VERSION_CHARS:
        return None
    major, dot, minor = value.partition(".")
    ok = dot and major.isdigit() and minor.isdigit() and len(major) <= 3 and len(minor) <= 3
    return value if ok else None


def _valid(adapter: TypeAdapter[Any], value: object) -> Any:
    if not isinstance(value, str):
        return None
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None
