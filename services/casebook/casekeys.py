"""Each case's data key, and the follow-ups sealed under it (crypto-shredding).

``help.followups.v1`` is kept without limit and no broker erases a record from the middle
of a log: an erased case's follow-ups would stay readable there, in every segment, replica
and backup. So what a follow-up says was done for the person (``action``, ``outcome``) goes
on the topic sealed under a key of its case (:class:`~services.core.messages.SealedFollowupEvent`),
held in ``casebook_case_keys`` and deleted in the transaction that erases the case
(objection, consent withdrawal, purge: :func:`services.casebook.store._forget_cases`).
Once the key is gone every copy is unreadable at once; the casebook's SQLite file zeroes
the deleted page (``secure_delete``). What the ledger enters (who, when, which fund and
case) stays readable: the audit sink needs no key, and its entry is written even if the
case was erased before it read the follow-up.

Sealing: AES-256-GCM, a random 12-byte nonce, the key 32 random bytes made when the
case's first follow-up is recorded; plaintext the RFC 8785 form of ``{"action", "outcome"}``;
associated data ``"help-exchange/followup/v1" 0x00 event_id 0x00 situation_id`` (a sealed
detail moved to another event or case no longer opens).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.casebook import tables as t
from services.core.messages import FollowupEvent, SealedDetail, SealedFollowupEvent
from services.core.signing import b64u, b64u_decode
from services.core.types import Outcome

_AAD = b"help-exchange/followup/v1\x00"
NONCE_BYTES = 12
_CHUNK = 500


def _aad(event_id: str, situation_id: str) -> bytes:
    return _AAD + event_id.encode() + b"\x00" + situation_id.encode()


def case_key(conn: sa.Connection, situation_id: str, now: dt.datetime) -> bytes:
    """The case's key, made now if it has none (in the caller's transaction)."""
    found = conn.execute(sa.select(t.case_keys.c.key).where(t.case_keys.c.situation_id == situation_id)
                         ).scalar_one_or_none()
    if found is not None:
        return bytes(found)
    key = AESGCM.generate_key(bit_length=256)
    conn.execute(sa.insert(t.case_keys).values(situation_id=situation_id, key=key, created_at=now))
    return key


def case_keys(conn: sa.Connection, situation_ids: Iterable[str]) -> dict[str, bytes]:
    """The keys the cases still have (an erased case has none)."""
    ids = sorted(set(situation_ids))
    found: dict[str, bytes] = {}
    for i in range(0, len(ids), _CHUNK):
        c = t.case_keys.c
        found.update((sid, bytes(key)) for sid, key in conn.execute(
            sa.select(c.situation_id, c.key).where(c.situation_id.in_(ids[i:i + _CHUNK]))))
    return found


def destroy_keys(conn: sa.Connection, situation_ids: Sequence[str]) -> None:
    """Delete the cases' keys: their follow-ups on the topic can no longer be read."""
    for i in range(0, len(situation_ids), _CHUNK):
        conn.execute(sa.delete(t.case_keys).where(t.case_keys.c.situation_id.in_(situation_ids[i:i + _CHUNK])))


def seal_followup(event: FollowupEvent, key: bytes) -> SealedFollowupEvent:
    detail = json.dumps({"action": event.action, "outcome": event.outcome.value},
                        sort_keys=True, separators=(",", ":")).encode()
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, detail, _aad(event.event_id, event.situation_id))
    return SealedFollowupEvent(
        schema_version=event.schema_version, event_id=event.event_id, situation_id=event.situation_id,
        territory=event.territory, fund=event.fund, recorded_at=event.recorded_at,
        recorded_by=event.recorded_by, sealed=SealedDetail(alg="A256GCM", value=b64u(nonce + sealed)))


def open_followup(event: SealedFollowupEvent, key: bytes) -> FollowupEvent | None:
    """The follow-up, or None if ``key`` does not open it (not its case's, or altered)."""
    raw = b64u_decode(event.sealed.value)
    try:
        detail = json.loads(AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                                _aad(event.event_id, event.situation_id)))
        return FollowupEvent(
            schema_version=event.schema_version, event_id=event.event_id, situation_id=event.situation_id,
            territory=event.territory, fund=event.fund, action=detail["action"],
            outcome=Outcome(detail["outcome"]), recorded_at=event.recorded_at, recorded_by=event.recorded_by)
    except (InvalidTag, ValueError, KeyError, TypeError):
        return None
