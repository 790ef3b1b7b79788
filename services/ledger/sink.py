"""The audit sink: what happened on the exchange's topics, as ledger entries.

``help-exchange audit sink`` reads every fund's receipts (``help.receipts.<fund>.v1``),
``help.situations.v1``, ``help.followups.v1``, ``help.consents.v1``, ``help.reveals.v1`` and
the signal topics (for the person a receipt is about) and appends:

=====================================  =============================================  ===============
record                                 entry                                          natural key
=====================================  =============================================  ===============
receipt ``accepte`` (a signal)         ``signalement_accepte``, ref = signal id, fund, receipt id
                                       person (of the signal, see below)
receipt ``rejete``                     ``signalement_rejete`` + reason, fund, person   receipt id
signal (``help.signals.<fund>.v1``)    none: its person is kept (``ledger_signal_     —
                                       subjects``) until its receipt is entered
situation event                        ``situation_ouverte`` / ``_mise_a_jour`` /      event id
                                       ``_fermee`` / ``_rouverte``, case, person
situation tombstone (null value)       ``effacement`` (or ``purge_conservation`` when   topic position
                                       the purge sent it), case
follow-up                              ``suite_enregistree``, actor = who recorded it,  event id
                                       fund, case, person (from the casebook)
consent event (signature verified)     ``consentement_donne`` / ``_retire`` /          event id
                                       ``opposition``, person, fund
reveal event (signature verified)      ``reference_revelee``, actor = the fund's user,  event id
                                       purpose, case and pseudonym (see below)
=====================================  =============================================  ===============

"person" is the entry's ``subject_commitment`` (the pseudonym itself stays in the ledger's
private columns): see :func:`services.ledger.entries.subject_commitment` and docs/audit.md.

A reveal event names the case number its reference was listed under and the SHA-256 of the
seal; the entry gets that case's situation id and pseudonym (from the casebook, which shares
the database) only if the case holds this fund's seal with that digest — never a case the
event could not prove. A replayed reveal is entered as it was the first time (read back
from the ledger), even if the case was purged since.

A receipt accepting a *consent* (no signal id) adds nothing: the consent itself is entered
from its topic. A consent event whose signature does not verify against the key registry is
not entered (the correlator rejects it too, and its rejection receipt is entered).

Exactly once, whatever crashes where: entry ids are derived from the records' own ids
(:func:`~services.ledger.entries.entry_id_for`) and every field from the record (never
the clock), so a replay appends nothing; and the sink is a tracked consumer
(:mod:`services.platform.tracking`, consumer ``help-audit-sink``): :func:`apply_records`
runs in the transaction that stores the consumed positions, and on start or rebalance
every partition resumes at its stored position. A receipt whose signal has not been read
is *held*: its partition's position stays at it and it is read again.

"Caught up" is an empty fetch, not a comparison with the end offsets: the embedded broker
(Tansu 0.6) reports a partition's end wrongly (see :func:`services.producer.sdk.read_to_end`).
Each time it is caught up after appending, the sink signs a tree head (the auditor's index
is written with the entries). ``--until-idle S`` stops it after S seconds without a record
(the demo and the tests use it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from pydantic import ValidationError

from services.core import signing
from services.core.messages import (
    ConsentEvent,
    Pseudonym,
    Receipt,
    RevealEvent,
    SituationEvent,
    parse,
    parse_followup,
    parse_situation,
)
from services.core.registry import Registry, load_registry, registry_path
from services.core.types import Fund, format_timestamp
from services.ledger import tables as t
from services.ledger.cases import CaseDirectory, NoCasebook
from services.ledger.entries import (
    Action,
    LedgerEntry,
    LedgerLegalBasis,
    LedgerPurpose,
    entry_id_for,
    new_entry,
    parse_entry,
)
from services.ledger.store import Ledger
from services.platform.sealed_situations import open_situations
from services.platform.settings import Settings
from services.platform.topics import (
    CONSENTS_TOPIC,
    CUT_OFF_HEADER,
    FOLLOWUPS_TOPIC,
    ORIGIN_HEADER,
    ORIGIN_PURGE,
    REVEALS_TOPIC,
    SITUATIONS_TOPIC,
    fund_of_signal_topic,
    receipt_topic,
    signal_topic,
)
from services.platform.tracking import Batch, Processed, Record, TrackedConsumer

log = logging.getLogger("help_exchange.ledger.sink")

CONSUMER = "help-audit-sink"
__all__ = ["ORIGIN_HEADER", "ORIGIN_PURGE", "AuditSink"]

_SITUATION_ACTIONS = {
    "ouverte": Action.SITUATION_OUVERTE,
    "mise_a_jour": Action.SITUATION_MISE_A_JOUR,
    "fermee": Action.SITUATION_FERMEE,
    "rouverte": Action.SITUATION_ROUVERTE,
}
_CONSENT_ACTIONS = {
    "consentement_donne": (Action.CONSENTEMENT_DONNE, LedgerLegalBasis.CONSENTEMENT),
    "consentement_retire": (Action.CONSENTEMENT_RETIRE, LedgerLegalBasis.CONSENTEMENT),
    "opposition": (Action.OPPOSITION, LedgerLegalBasis.RGPD_21),
}


def sink_topics() -> list[str]:
    return [*(receipt_topic(f) for f in Fund), SITUATIONS_TOPIC, FOLLOWUPS_TOPIC, CONSENTS_TOPIC,
            REVEALS_TOPIC, *(signal_topic(f) for f in Fund)]


#: How long a receipt waits for its signal (read from the signal topics) before it is
#: entered without the person: the signal is published before its receipt, so this only
#: covers a sink reading the signal topics behind the receipt topics.
HOLD_S = 20.0


class Held(Exception):
    """A receipt whose signal (hence person) the sink has not read yet."""


@dataclass
class BatchResult:
    records: int = 0
    appended: int = 0
    already_present: int = 0
    skipped: int = 0
    tree_size: int = 0
    #: receipt partitions waiting for a signal: (topic, partition) -> the held offset
    held: dict[tuple[str, int], int] = field(default_factory=dict)

    def add(self, other: BatchResult) -> None:
        self.records += other.records
        self.appended += other.appended
        self.already_present += other.already_present
        self.skipped += other.skipped
        self.tree_size = other.tree_size


def _ledger_purpose(purpose: str) -> LedgerPurpose:
    return LedgerPurpose(purpose)


class EntryMaker:
    """Turns records into ledger entries: pure but for the key registry (consents and reveals
    are entered only if their signature verifies) and, for reveals, the ledger's database
    (``ledger``: the reveal's case, from the casebook; None enters reveals with no case)."""

    def __init__(self, registry: Registry | None, ledger: Ledger | None = None,
                 cases: CaseDirectory | None = None) -> None:
        self.registry = registry
        self.ledger = ledger
        self.cases: CaseDirectory = cases or NoCasebook()
        #: signal id -> person, for the receipts of signals read in this run (and, through
        #: ``ledger_signal_subjects``, in earlier runs)
        self.subjects: dict[str, Pseudonym] = {}
        self._held_since: dict[tuple[str, int, int], float] = {}
        self.used: set[str] = set()

    def signal_subject(self, r: Record) -> tuple[str, Pseudonym] | None:
        """(signal id, person) of a signal record, or None if it does not say."""
        import json

        try:
            doc = json.loads(r.value or b"")
            signal_id = doc["signal_id"]
            person = Pseudonym.model_validate(doc["pseudonym"])
        except (ValueError, TypeError, KeyError, ValidationError):
            return None
        if not isinstance(signal_id, str) or len(signal_id) != 32:
            return None
        self.subjects[signal_id] = person
        return signal_id, person

    def hold_expired(self, r: Record) -> bool:
        """True once receipt ``r`` has waited :data:`HOLD_S` for its signal."""
        key = (r.topic, r.partition, r.offset)
        first = self._held_since.setdefault(key, time.monotonic())
        if time.monotonic() - first < HOLD_S:
            return False
        del self._held_since[key]
        log.warning("receipt %s[%d]@%d: its signal was not read within %.0f s; entered "
                    "without the person", r.topic, r.partition, r.offset, HOLD_S)
        return True

    def _person_of_signal(self, signal_id: str) -> Pseudonym | None:
        found = self.subjects.get(signal_id)
        if found is None and self.ledger is not None:
            c = t.signal_subjects.c
            with self.ledger.engine.connect() as conn:
                row = conn.execute(sa.select(c.key_id, c.value)
                                   .where(c.signal_id == signal_id)).first()
            if row is not None:
                found = Pseudonym(key_id=row.key_id, value=row.value)
        return found

    def entries(self, r: Record) -> list[LedgerEntry]:
        """The entries of one record (empty if it is not one the ledger keeps); raises
        ``ValueError`` (pydantic's ``ValidationError``) for a record that does not parse."""
        if r.topic == SITUATIONS_TOPIC:
            return [self._tombstone(r)] if r.value is None else self._situation(r.value)
        if r.value is None:
            return []
        if r.topic == FOLLOWUPS_TOPIC:
            return self._followup(r.value)
        if r.topic == CONSENTS_TOPIC:
            return self._consent(r.value)
        if r.topic == REVEALS_TOPIC:
            return self._reveal(r.value)
        if fund_of_signal_topic(r.topic) is not None:
            return []  # a signal: only its person is kept, for its receipt (apply_records)
        return self._receipt(r.value)

    def receipt_without_person(self, r: Record) -> list[LedgerEntry]:
        """The entries of receipt ``r`` when its signal cannot be read."""
        assert r.value is not None
        return self._receipt(r.value, wait=False)

    def _receipt(self, value: bytes, *, wait: bool = True) -> list[LedgerEntry]:
        """A receipt, with the person of its signal (read from the signal topics): raises
        :class:`Held` while that signal has not been read. A replay is entered as it was."""
        rc = parse(Receipt, value)
        if rc.status == "accepte":
            if rc.signal_id is None:
                return []  # a consent acknowledged: entered from help.consents.v1
            action = Action.SIGNALEMENT_ACCEPTE
        else:
            action = Action.SIGNALEMENT_REJETE
        person = None
        if rc.signal_id is not None:
            if self.ledger is not None:
                stored = self.ledger.get(entry_id_for(action.value, rc.receipt_id))
                if stored is not None:
                    self.used.add(rc.signal_id)  # a replayed signal's row goes too
                    return [parse_entry(stored.data)]
            person = self._person_of_signal(rc.signal_id)
            if person is None and wait and self.ledger is not None:
                raise Held(rc.signal_id)
            if person is not None:
                self.used.add(rc.signal_id)
                self.subjects.pop(rc.signal_id, None)
        return [new_entry(action=action, actor="correlator", purpose=LedgerPurpose.ACCES_AUX_DROITS,
                          legal_basis=LedgerLegalBasis.L115_2_1, time=rc.processed_at,
                          natural_key=(rc.receipt_id,), ref=rc.signal_id, reason=rc.reason,
                          fund=rc.fund, person=person)]

    def _followup(self, value: bytes) -> list[LedgerEntry]:
        """A follow-up: the case, the fund that recorded it, and the person (their
        commitment), read from the casebook's row of the case when the ledger shares its
        database; a replay is entered as it was the first time (read back from the ledger),
        even if the case was purged since."""
        f = parse_followup(value)  # (sealed: the detail is not the ledger's)
        action = Action.SUITE_ENREGISTREE
        person = None
        if self.ledger is not None:
            stored = self.ledger.get(entry_id_for(action.value, f.event_id))
            if stored is not None:
                return [parse_entry(stored.data)]
            with self.ledger.engine.connect() as conn:
                person = self.cases.person_of_situation(conn, f.situation_id)
        return [new_entry(action=action, actor=f.recorded_by, purpose=LedgerPurpose.ACCES_AUX_DROITS,
                          legal_basis=LedgerLegalBasis.L115_2_1, time=f.recorded_at,
                          natural_key=(f.event_id,), case_id=f.situation_id, ref=f.event_id,
                          fund=f.fund, person=person)]

    def _situation(self, value: bytes) -> list[LedgerEntry]:
        """A situation event; a sealed one is opened with its person's data key (in the
        ledger's database): none whose key is gone (an erased person's: nothing of it is
        readable any more, the erasure is entered from its tombstone or consent)."""
        parsed = parse_situation(value)
        if isinstance(parsed, SituationEvent):
            s: SituationEvent | None = parsed
        elif self.ledger is None:
            return []
        else:
            with self.ledger.engine.connect() as conn:
                s = open_situations(conn, [parsed])[0]
        if s is None:
            return []
        return [new_entry(action=_SITUATION_ACTIONS[s.kind], actor="correlator",
                         purpose=_ledger_purpose(s.purposes[0].value), legal_basis=LedgerLegalBasis.L115_2_1,
                         time=s.occurred_at, natural_key=(s.event_id,), case_id=s.situation_id,
                         person=s.pseudonym, ref=s.event_id)]

    def _tombstone(self, r: Record) -> LedgerEntry:
        case_id = (r.key or b"").decode("ascii", "replace")
        at = dt.datetime.fromtimestamp(r.timestamp_ms / 1000, dt.UTC)
        position = (r.topic, str(r.partition), str(r.offset))
        headers = dict(r.headers)
        if headers.get(ORIGIN_HEADER) == ORIGIN_PURGE:
            return new_entry(action=Action.PURGE_CONSERVATION, actor="retention",
                             purpose=LedgerPurpose.LIMITATION_CONSERVATION,
                             legal_basis=LedgerLegalBasis.RGPD_6_1_C, time=at, natural_key=position,
                             case_id=case_id, count=1, cut_off=_cut_off(headers.get(CUT_OFF_HEADER)))
        return new_entry(action=Action.EFFACEMENT, actor="correlator",
                         purpose=LedgerPurpose.EXERCICE_DES_DROITS, legal_basis=LedgerLegalBasis.RGPD_17,
                         time=at, natural_key=position, case_id=case_id)

    def _consent(self, value: bytes) -> list[LedgerEntry]:
        c = parse(ConsentEvent, value)
        if not self._verified(c.fund, value):
            log.warning("consent event %s: signature not verified, not entered", c.event_id)
            return []
        action, basis = _CONSENT_ACTIONS[c.kind]
        return [new_entry(action=action, actor=c.emitter, purpose=LedgerPurpose.EXERCICE_DES_DROITS,
                          legal_basis=basis, time=c.effective_at, natural_key=(c.event_id,),
                          person=c.pseudonym, ref=c.event_id, fund=c.fund)]

    def _reveal(self, value: bytes) -> list[LedgerEntry]:
        v = parse(RevealEvent, value)
        if not self._verified(v.fund, value):
            log.warning("reveal event %s: signature not verified, not entered", v.event_id)
            return []
        action = Action.REFERENCE_REVELEE
        if self.ledger is None:
            case = None
        else:
            stored = self.ledger.get(entry_id_for(action.value, v.event_id))
            if stored is not None:  # a replay: the same entry, whatever the casebook says now
                return [parse_entry(stored.data)]
            with self.ledger.engine.connect() as conn:
                case = self.cases.case_of_reveal(conn, v.case_number, v.fund.value, v.sealed_digest)
        if case is None:
            log.warning("reveal event %s: case %s does not hold this seal of %s; entered without "
                        "a case", v.event_id, v.case_number, v.fund.value)
        return [new_entry(action=action, actor=v.actor, purpose=_ledger_purpose(v.purpose.value),
                          legal_basis=LedgerLegalBasis.L115_2_1, time=v.revealed_at,
                          natural_key=(v.event_id,), ref=v.event_id,
                          case_id=case[0] if case else None, person=case[1] if case else None,
                          fund=v.fund)]

    def _verified(self, fund: Fund, value: bytes) -> bool:
        import json

        if self.registry is None:
            return False
        obj = json.loads(value)
        key_id = (obj.get("signature") or {}).get("key_id")
        key = self.registry.signing_key(fund, key_id) if isinstance(key_id, str) else None
        return key is not None and signing.verify(obj, key)


#: A receipt sent again by a correlator restarted before its commit has the same id and
#: answer, and the time of its second pass: the ledger keeps the first (see Ledger.append).
RECEIPT_ACTIONS = frozenset({Action.SIGNALEMENT_ACCEPTE, Action.SIGNALEMENT_REJETE})


def apply_records(conn: sa.Connection, records: Batch, ledger: Ledger,
                  maker: EntryMaker) -> BatchResult:
    """Append the entries of ``records`` in the caller's transaction (the tracked consumer
    stores their positions in it); a receipt whose signal is not read yet is held."""
    result = BatchResult(records=len(records))
    entries: list[LedgerEntry] = []
    subjects: dict[str, Pseudonym] = {}
    for r in records:  # signals first: a receipt in the same batch finds its person
        if fund_of_signal_topic(r.topic) is not None:
            found = maker.signal_subject(r)
            if found is not None:
                subjects[found[0]] = found[1]
    maker.used.clear()
    for r in records:
        if fund_of_signal_topic(r.topic) is not None or records.is_held(r):
            continue  # after a held receipt, its partition waits (offsets stay in order)
        try:
            entries.extend(maker.entries(r))
        except Held:
            if maker.hold_expired(r):
                entries.extend(maker.receipt_without_person(r))
            else:
                records.hold(r)
        except (ValidationError, ValueError, KeyError) as exc:
            result.skipped += 1
            log.warning("skipped %s[%d]@%d: %s", r.topic, r.partition, r.offset, type(exc).__name__)
    _keep_subjects(conn, {k: v for k, v in subjects.items() if k not in maker.used})
    if maker.used:
        c = t.signal_subjects.c
        conn.execute(sa.delete(t.signal_subjects).where(c.signal_id.in_(sorted(maker.used))))
    done = ledger.append(entries, connection=conn, first_time_wins=RECEIPT_ACTIONS)
    result.appended, result.already_present = done.appended, done.already_present
    result.tree_size = done.tree_size
    result.held = dict(records.held)
    return result


def audit_tracker(ledger: Ledger, maker: EntryMaker, name: str = CONSUMER, *,
                  batch_max: int = 10_000) -> TrackedConsumer[BatchResult]:
    """The audit sink's tracked consumer: :func:`apply_records` on every topic it reads."""

    def apply(conn: sa.Connection, batch: Batch) -> BatchResult:
        return apply_records(conn, batch, ledger, maker)

    return TrackedConsumer(ledger.engine, name, sink_topics(), apply, batch_max=batch_max)


def _keep_subjects(conn: sa.Connection, subjects: dict[str, Pseudonym]) -> None:
    """Keep the person of each signal whose receipt has not come yet (a replayed signal
    is already there)."""
    if not subjects:
        return
    c = t.signal_subjects.c
    ids = sorted(subjects)
    present: set[str] = set()
    for start in range(0, len(ids), 500):
        present.update(conn.execute(sa.select(c.signal_id)
                                    .where(c.signal_id.in_(ids[start : start + 500]))).scalars())
    now = format_timestamp(dt.datetime.now(dt.UTC))
    rows = [{"signal_id": i, "key_id": subjects[i].key_id, "value": subjects[i].value, "seen_at": now}
            for i in ids if i not in present]
    if rows:
        conn.execute(sa.insert(t.signal_subjects), rows)


def _cut_off(header: bytes | None) -> dt.date | None:
    """The purge's cut-off date a tombstone carries (none from an earlier version, or unreadable)."""
    try:
        return dt.date.fromisoformat(header.decode()) if header else None
    except (UnicodeDecodeError, ValueError):
        return None


@dataclass
class AuditSink:
    """Runs until ``stop`` is set, or until ``until_idle`` seconds pass without a record."""

    settings: Settings
    ledger: Ledger
    bootstrap: str
    #: The casebook's cases, for the person of a follow-up and the case of a reveal (the
    #: casebook's :class:`~services.casebook.cases.CasebookCases`, wired by the app).
    cases: CaseDirectory | None = None
    consumer_name: str = CONSUMER
    #: Records per transaction at most: each commit writes the index pages it dirtied, so
    #: larger batches append faster (``bench/ledger.py``).
    batch_max: int = 10_000
    totals: BatchResult = field(default_factory=BatchResult)

    async def run(self, *, until_idle: float | None = None, stop: asyncio.Event | None = None,
                  on_batch: Callable[[BatchResult], None] | None = None) -> BatchResult:
        path = registry_path(self.settings.key_dir)
        maker = EntryMaker(load_registry(path) if path.exists() else None, self.ledger, self.cases)
        tracker = audit_tracker(self.ledger, maker, self.consumer_name, batch_max=self.batch_max)
        dirty = False
        last_due = time.monotonic()

        async def after_poll(done: Processed[BatchResult] | None) -> None:
            nonlocal dirty, last_due
            if done is not None:
                self.totals.add(done.result)
                dirty = dirty or done.result.appended > 0
                if on_batch is not None:
                    on_batch(done.result)
            elif dirty:  # caught up: an empty fetch
                await asyncio.to_thread(self._checkpoint)
                dirty = False
            elif time.monotonic() - last_due >= 1.0:
                # entries others appended (the casebook holds no key): covered within
                # HELP_LEDGER_CHECKPOINT_SECONDS (services.ledger.store.Ledger.checkpoint_if_due)
                last_due = time.monotonic()
                await asyncio.to_thread(self._checkpoint_if_due)

        await tracker.run(tracker.kafka_source(self.settings, self.bootstrap), stop=stop,
                          until_idle=until_idle, after_poll=after_poll,
                          monitor=tracker.monitor(self.settings, self.bootstrap))
        return self.totals

    def _checkpoint(self) -> None:
        if self.ledger.signer is not None:
            self.ledger.sign_head()
            self._witness()

    def _witness(self) -> None:
        """Have the new checkpoint cosigned when witnesses are configured (a witness that
        is away or refuses is logged; the next round retries)."""
        from services.ledger.witness import load_witnesses, witness_round

        path = (self.settings.ledger_witnesses_file
                or self.settings.key_dir / "ledger" / "witnesses.json")
        if not path.exists():
            return
        for result in witness_round(self.ledger, load_witnesses(path)):
            if not result.ok:
                log.warning("witness %s: %s", result.witness, result.detail)

    def _checkpoint_if_due(self) -> None:
        if self.ledger.signer is not None:
            self.ledger.checkpoint_if_due()
