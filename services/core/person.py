"""A person's correlation state, as pure functions over frozen models.

What the correlator keeps about one pseudonym, and nothing more: the accepted signals of
the correlation window (bounded in number, ageing out by observation date), the recent
signal ids (to drop replays), the purposes the person consented to, an objection flag, and
their shared situation (status, version, last event). An objection or a consent withdrawal
erases all of it but a tombstone: the flag and the situation version reached, so that the
situation's versions stay monotonic if the person later consents again.

Time and ids are inputs; nothing here reads a clock, a broker or a database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Annotated, Literal

from pydantic import Field

from services.core.messages import ConsentEvent, Frozen, Pseudonym, SealedRef, SituationEvent
from services.core.types import Code, Date, Departement, Fund, Int, Purpose, SignalId, Timestamp

#: How many accepted signal ids a person remembers for dedup, beyond the window itself.
SEEN_MAX = 256


class SignalEntry(Frozen):
    """One accepted signal, reduced to what correlation needs (no raw bytes, no signature)."""

    signal_id: SignalId
    fund: Fund
    category: Code
    purpose: Purpose
    observed_on: Date
    territory: Departement
    sealed_ref: SealedRef
    #: "topic:partition:offset" where it was read: tells a redelivery (same position, after a
    #: crash before the offset commit) from a replay (same signal id published again).
    source: Annotated[str, Field(max_length=200)]


class Seen(Frozen):
    signal_id: SignalId
    source: Annotated[str, Field(max_length=200)]


class SituationState(Frozen):
    situation_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    version: Annotated[Int, Field(ge=1)]
    status: Literal["ouverte", "fermee"]
    closed_on: Date | None = None
    #: The last event published: re-sent as is on a redelivery, and the base of a closure.
    last_event: SituationEvent


class PersonState(Frozen):
    pseudonym: Pseudonym
    signals: tuple[SignalEntry, ...] = ()
    seen: tuple[Seen, ...] = ()
    consents: tuple[Purpose, ...] = ()
    opposed_at: Timestamp | None = None
    situation: SituationState | None = None
    #: Highest situation version ever published for this person (kept across an erasure).
    version_floor: Annotated[Int, Field(ge=0)] = 0

    @property
    def opposed(self) -> bool:
        return self.opposed_at is not None


def new_person(pseudonym: Pseudonym) -> PersonState:
    return PersonState(pseudonym=pseudonym)


def _hex32(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def situation_id_for(pseudonym: Pseudonym) -> str:
    """One situation per person, its id derived from the pseudonym: the same after any replay."""
    return _hex32(f"help-situation\x00{pseudonym.key_id}\x00{pseudonym.value}")


def event_id_for(situation_id: str, version: int) -> str:
    """The event id of a situation version: a replay produces the very same id."""
    return _hex32(f"help-situation-event\x00{situation_id}\x00{version}")


def seen_source(state: PersonState, signal_id: str) -> str | None:
    """Where ``signal_id`` was first accepted for this person, or None if never."""
    for s in state.seen:
        if s.signal_id == signal_id:
            return s.source
    return None


def consent_on_record(state: PersonState | None, purpose: Purpose) -> bool:
    return state is not None and not state.opposed and purpose in state.consents


def add_signal(state: PersonState, entry: SignalEntry, *, today: dt.date, window_days: int,
               max_signals: int) -> PersonState:
    """Record an accepted signal, then age the window out and keep it bounded (newest kept)."""
    seen = (*state.seen, Seen(signal_id=entry.signal_id, source=entry.source))[-SEEN_MAX:]
    signals = age_out((*state.signals, entry), today=today, window_days=window_days,
                      max_signals=max_signals)
    return state.model_copy(update={"signals": signals, "seen": seen})


def age_out(signals: tuple[SignalEntry, ...], *, today: dt.date, window_days: int,
            max_signals: int) -> tuple[SignalEntry, ...]:
    oldest = today - dt.timedelta(days=window_days)
    kept = sorted((s for s in signals if s.observed_on >= oldest),
                  key=lambda s: (s.observed_on, s.signal_id))
    return tuple(kept[-max_signals:]) if max_signals > 0 else ()


def apply_consent(state: PersonState | None, event: ConsentEvent) -> tuple[PersonState, bool]:
    """Apply a consent event; returns the new state and whether the person's data was erased.

    ``consentement_donne`` adds purposes (and lifts an earlier objection if it is later);
    ``consentement_retire`` and ``opposition`` erase everything but the tombstone.
    """
    current = state if state is not None else new_person(event.pseudonym)
    if event.kind == "consentement_donne":
        if current.opposed_at is not None and event.effective_at <= current.opposed_at:
            return current, False  # an older consent does not undo a later objection
        purposes = tuple(p for p in Purpose if p in current.consents or p in event.purposes)
        return current.model_copy(update={"consents": purposes, "opposed_at": None}), False
    floor = max(current.version_floor, current.situation.version if current.situation else 0)
    erased = PersonState(pseudonym=current.pseudonym, opposed_at=event.effective_at,
                         version_floor=floor)
    return erased, True
