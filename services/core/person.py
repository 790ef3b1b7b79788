"""A person's correlation state, as pure functions over frozen models.

What the correlator keeps about one pseudonym, and nothing more: the accepted signals of
the correlation window (bounded in number, ageing out by observation date), the recent
signal ids (to drop replays), the purposes the person consented to, an objection flag, and
their shared situation (status, version, last event). An objection erases all of it but a
tombstone: the flag and the situation version reached, so that the situation's versions stay
monotonic if the person later consents again.

Consent is per purpose, in the order it was recorded: each purpose keeps its latest mark
(given or withdrawn, with the event's ``effective_at``, which our tools set to the time the
fund recorded it) and an event older than a purpose's mark changes nothing for that purpose
(a stale consent flushed late from an outbox does not undo a later withdrawal; a consent
recorded after a withdrawal, the same day or later, is honoured). A withdrawal erases only
what was exchanged under the purposes withdrawn: their signals, and the shared situation if
it showed one of them; signals for these purposes are then refused (``consentement_retire``)
until a later consent.

Time and ids are inputs; nothing here reads a clock, a broker or a database.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import operator
from typing import Annotated, Literal

from pydantic import Field

from services.core.messages import ConsentEvent, Frozen, Pseudonym, SealedRef, SituationEvent
from services.core.trusted import replace, trusted
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
    #: When the exchange took it, in Unix seconds (the batch's clock; an integer, not a
    #: timestamp: it is read and written with every state): a purge erases what it
    #: received before the purge was issued, and only that (None: a state written before).
    received_s: Int | None = None


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


class ConsentMark(Frozen):
    """The latest consent event recorded for one purpose: given or withdrawn, and when."""

    purpose: Purpose
    given: bool
    at: Timestamp


class Parked(Frozen):
    """A record held back while the person's state comes from its previous pseudonym's
    partition (a key rotation: contract §4.3); processed, in order, when it has come."""

    #: The record's original position (its receipt and dead letter name it).
    topic: Annotated[str, Field(max_length=200)]
    partition: Annotated[Int, Field(ge=0)]
    offset: Annotated[Int, Field(ge=0)]
    timestamp_ms: Int
    #: The record value, base64.
    value: str
    #: The person key it was re-keyed to, if it came forwarded from a moved pseudonym.
    rekey: str | None = None

    @property
    def source(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


class PersonState(Frozen):
    pseudonym: Pseudonym
    signals: tuple[SignalEntry, ...] = ()
    seen: tuple[Seen, ...] = ()
    #: Purposes consented to (the marks say when; a state written before marks has none).
    consents: tuple[Purpose, ...] = ()
    #: Latest mark per purpose (at most one per purpose).
    marks: tuple[ConsentMark, ...] = ()
    opposed_at: Timestamp | None = None
    situation: SituationState | None = None
    #: Highest situation version ever published for this person (kept across an erasure).
    version_floor: Annotated[Int, Field(ge=0)] = 0
    #: Key rotation (contract §4.3). ``moved_to``: the person now lives under this newer
    #: pseudonym; what is kept here is what was handed over (answered again if asked again),
    #: and records for this pseudonym are forwarded there.
    moved_to: Pseudonym | None = None
    #: The previous pseudonym whose state was asked for; records wait in ``parked`` meanwhile.
    awaiting: Pseudonym | None = None
    parked: tuple[Parked, ...] = ()
    #: The records last released from ``parked``: answered again if the same hand-over is read
    #: again (a crash after the state was written, before the outputs were).
    released: tuple[Parked, ...] = ()
    #: Previous pseudonyms whose state joined this one (a link to them is followed once).
    merged_from: tuple[Pseudonym, ...] = ()
    #: A chained hand-over (two rotations inside a window, or a rotation during a migration):
    #: the newer pseudonym that asked for this state while it was itself ``awaiting`` its
    #: previous one's. It is answered once that has come and the records held here are
    #: processed, so the chain resolves in order (contract §4.3).
    successor: Pseudonym | None = None

    @property
    def opposed(self) -> bool:
        return self.opposed_at is not None

    def withdrawn(self, purpose: Purpose) -> bool:
        """Whether the latest consent event for ``purpose`` withdrew it."""
        for m in self.marks:
            if m.purpose == purpose:
                return not m.given
        return False

    def mark(self, purpose: Purpose) -> ConsentMark | None:
        for m in self.marks:
            if m.purpose == purpose:
                return m
        return None


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


def hand_over(old: PersonState | None, previous: Pseudonym,
              pseudonym: Pseudonym) -> tuple[PersonState | None, PersonState]:
    """The state under ``previous`` handed over to ``pseudonym``: (what moves, what stays).

    What stays is a pointer (``moved_to``) keeping what was handed over, so that the same
    request answered again gives the same answer. A state already handed over to another
    pseudonym gives nothing (a person has one successor)."""
    if old is None:
        return None, new_person(previous).model_copy(update={"moved_to": pseudonym})
    if old.moved_to is None:
        return old, old.model_copy(update={"moved_to": pseudonym})
    if old.moved_to == pseudonym:
        return old.model_copy(update={"moved_to": None}), old
    return None, old


def merge_moved(current: PersonState | None, moved: PersonState | None,
                pseudonym: Pseudonym) -> tuple[PersonState, str | None]:
    """The person under ``pseudonym`` once the state of its previous pseudonym (``moved``)
    has joined: one history, one situation (the previous one's, so the situation id, and
    the case at the casebook, go on). Consent marks: the latest per purpose; an objection
    on either side not lifted by a later consent erases both sides, as
    :func:`apply_consent` would have. Returns the state and the id of a situation to
    tombstone (erased by such an objection), or None."""
    cur = current if current is not None else new_person(pseudonym)
    if moved is None:
        return cur, None
    by_id = {s.signal_id: s for s in (*moved.signals, *cur.signals)}
    signals = tuple(sorted(by_id.values(), key=lambda s: (s.observed_on, s.signal_id)))
    seen_ids = {s.signal_id for s in cur.seen}
    seen = (*(s for s in moved.seen if s.signal_id not in seen_ids), *cur.seen)[-SEEN_MAX:]
    marks: dict[Purpose, ConsentMark] = {}
    for m in (*moved.marks, *cur.marks):
        held = marks.get(m.purpose)
        if held is None or m.at > held.at or (m.at == held.at and not m.given):
            marks[m.purpose] = m
    consents = tuple(p for p in Purpose if (p in cur.consents or p in moved.consents)
                     and (p not in marks or marks[p].given))
    opposed = [t for t in (cur.opposed_at, moved.opposed_at) if t is not None]
    opposed_at = max(opposed) if opposed else None
    if opposed_at is not None and any(m.given and m.at > opposed_at for m in marks.values()):
        opposed_at = None  # a consent recorded after the objection lifted it
    sit = moved.situation if moved.situation is not None else cur.situation
    floor = max(cur.version_floor, moved.version_floor)
    if opposed_at is not None:
        erased = sit.situation_id if sit is not None else None
        floor = max(floor, sit.version if sit is not None else 0)
        return PersonState(pseudonym=pseudonym, opposed_at=opposed_at, version_floor=floor,
                           merged_from=cur.merged_from), erased
    return cur.model_copy(update={
        "signals": signals, "seen": seen, "consents": consents,
        "marks": tuple(marks[p] for p in Purpose if p in marks), "opposed_at": None,
        "situation": sit, "version_floor": floor}), None


def consent_on_record(state: PersonState | None, purpose: Purpose) -> bool:
    return state is not None and not state.opposed and purpose in state.consents


def add_signal(state: PersonState, entry: SignalEntry, *, today: dt.date, window_days: int,
               max_signals: int, fast: bool = False) -> PersonState:
    """Record an accepted signal, then age the window out and keep it bounded (newest kept).

    ``fast``: the same state built without validating again what ``entry`` holds
    (:mod:`services.core.trusted`)."""
    if fast:
        mark = trusted(Seen, {"signal_id": entry.signal_id, "source": entry.source})
    else:
        mark = Seen(signal_id=entry.signal_id, source=entry.source)
    seen = (*state.seen, mark)[-SEEN_MAX:]
    signals = age_out((*state.signals, entry), today=today, window_days=window_days,
                      max_signals=max_signals)
    update = {"signals": signals, "seen": seen}
    return replace(state, update) if fast else state.model_copy(update=update)


def age_out(signals: tuple[SignalEntry, ...], *, today: dt.date, window_days: int,
            max_signals: int) -> tuple[SignalEntry, ...]:
    """The signals observed within the window, oldest first (by date, then id), the newest
    ``max_signals`` of them."""
    oldest = _window_start(today, window_days)
    kept = [s for s in signals if s.observed_on >= oldest]
    kept.sort(key=_SIGNAL_ORDER)
    return tuple(kept[-max_signals:]) if max_signals > 0 else ()


#: A signal's place in a person's window: ``(observed_on, signal_id)``.
_SIGNAL_ORDER = operator.attrgetter("observed_on", "signal_id")


@functools.lru_cache(maxsize=64)
def _window_start(today: dt.date, window_days: int) -> dt.date:
    # (every signal of a batch asks for the same day's)
    return today - dt.timedelta(days=window_days)


def sweep_person(state: PersonState, *, today: dt.date, window_days: int,
                 max_signals: int) -> PersonState | None:
    """The retention sweep: the state without its signals older than the window, or None if
    nothing is to change. A person who gets no further signal keeps nothing of a signal
    beyond the window (the next signal would have aged it out too); the shared situation
    follows the casebook's retention (the purge's erasure command)."""
    kept = age_out(state.signals, today=today, window_days=window_days, max_signals=max_signals)
    if len(kept) == len(state.signals):
        return None
    return state.model_copy(update={"signals": kept})


def purge_person(state: PersonState, issued_at: dt.datetime | None = None) -> PersonState:
    """The retention purge reached the person: forget the signals received before the purge
    was issued (``issued_at``; None: all of them) and the shared situation unless it was
    built only on signals received since (a redelivered command, read again after signals
    that came after it, must not erase them).

    Kept: the consent marks and an objection (what the person said still holds), the seen
    signal ids (a replay of a purged signal stays a duplicate and cannot bring it back),
    and the version floor (a later situation gets higher versions)."""
    signals = () if issued_at is None else tuple(
        s for s in state.signals if s.received_s is not None and s.received_s > issued_at.timestamp())
    sit = state.situation
    kept_refs = {s.sealed_ref.value for s in signals}
    if sit is not None and sit.last_event.refs and all(r.sealed_ref.value in kept_refs
                                                         for r in sit.last_event.refs):
        floor = state.version_floor  # the situation stays: its versions go on from it
    else:
        sit = None
        floor = max(state.version_floor, state.situation.version if state.situation else 0)
    if signals == state.signals and sit == state.situation and floor == state.version_floor:
        return state
    return state.model_copy(update={"signals": signals, "situation": sit, "version_floor": floor})


def apply_consent(state: PersonState | None, event: ConsentEvent) -> tuple[PersonState, bool]:
    """Apply a consent event; returns the new state and whether the person's shared situation
    must be erased everywhere (a tombstone on the situations topic).

    ``consentement_donne`` gives its purposes (and lifts an earlier objection if it is later);
    ``consentement_retire`` withdraws its purposes only (see the module docstring);
    ``opposition`` erases everything but the tombstone. For each purpose, an event not later
    than the purpose's mark changes nothing, except that the same withdrawal read again
    answers "erase" again (a redelivery must re-send the tombstone it may have lost).
    """
    current = state if state is not None else new_person(event.pseudonym)
    at = event.effective_at
    if event.kind == "opposition":
        floor = max(current.version_floor, current.situation.version if current.situation else 0)
        erased = PersonState(pseudonym=current.pseudonym, opposed_at=at, version_floor=floor)
        return erased, current.situation is not None or (current.opposed_at == at and floor > 0)
    if current.opposed_at is not None and (at <= current.opposed_at or event.kind != "consentement_donne"):
        return current, False  # an older event does not undo a later objection (a withdrawal adds nothing)
    chosen = [p for p in event.purposes
              if (m := current.mark(p)) is None or at > m.at or (at == m.at and not m.given)]
    given = event.kind == "consentement_donne"
    marks = {m.purpose: m for m in current.marks}
    for p in chosen:
        marks[p] = ConsentMark(purpose=p, given=given, at=at)
    new_marks = tuple(marks[p] for p in Purpose if p in marks)
    if given:
        purposes = tuple(p for p in Purpose if p in current.consents or p in chosen)
        return current.model_copy(update={"consents": purposes, "marks": new_marks,
                                          "opposed_at": None}), False
    gone = set(chosen)
    purposes = tuple(p for p in current.consents if p not in gone)
    signals = tuple(s for s in current.signals if s.purpose not in gone)
    update: dict[str, object] = {"consents": purposes, "marks": new_marks, "signals": signals}
    sit = current.situation
    replay = bool(gone) and all(current.mark(p) == marks[p] for p in gone)
    if sit is not None and gone & set(sit.last_event.purposes):
        update["situation"] = None
        update["version_floor"] = max(current.version_floor, sit.version)
        return current.model_copy(update=update), True
    return current.model_copy(update=update), replay and sit is None and current.version_floor > 0
