"""The ledger's audit sink of the casebook: every worklist view or export, case view and
follow-up as an entry.

:class:`LedgerAuditSink` receives each :class:`~services.core.access.AccessEvent` the casebook
records (wired by :func:`services.app.bootstrap.audit_sink`). The entry holds who (the
user id, or ``casebook`` for a scheduled job), what (the action), why (purpose and legal
basis), about which case (the situation id) and which person (the situation's pseudonym,
read from the casebook's own row through the :class:`~services.ledger.cases.CaseDirectory`),
how many cases a list held — and never a category, a reference or the text of the event's ``detail``.

When the casebook passes its connection (``record(event, connection=conn)``), the entry is
appended in that transaction: the access-log row and the ledger entry commit together or
not at all. Otherwise the append opens its own transaction on the casebook's engine (the
ledger lives in the casebook database). An append that fails raises, and the casebook then
refuses the access (see :class:`~services.casebook.audit.AuditSink`).
"""

from __future__ import annotations

import re
import uuid

import sqlalchemy as sa

from services.core.access import AccessEvent
from services.core.messages import Pseudonym
from services.core.types import Fund
from services.errors import InputError
from services.ledger.cases import CaseDirectory
from services.ledger.entries import (
    LEDGER_ACTOR_PATTERN,
    Action,
    LedgerEntry,
    LedgerLegalBasis,
    LedgerPurpose,
    about,
    subject_commitment,
)
from services.ledger.store import Ledger

#: The casebook's access actions, as ledger actions. ``revelation`` is there for a casebook
#: that reveals a sealed reference itself (today the fund does it offline, `reveal`).
ACTIONS: dict[str, Action] = {
    "generation_liste": Action.LISTE_GENEREE,
    "consultation_liste": Action.LISTE_CONSULTEE,
    "export": Action.LISTE_EXPORTEE,
    "consultation_dossier": Action.DOSSIER_CONSULTE,
    "suite_enregistree": Action.SUITE_ENREGISTREE,
    "revelation": Action.REFERENCE_REVELEE,
}
_ACTOR = re.compile(LEDGER_ACTOR_PATTERN)
_COUNT = re.compile(r"(\d+) dossiers?\b")
_SITUATION_ID = re.compile(r"^[0-9a-f]{32}$")
_FUNDS = frozenset(f.value for f in Fund)


def purpose_of(event: AccessEvent) -> LedgerPurpose:
    """The event's purpose: a ledger purpose if it names one; an auditor's reading is a
    control; the monthly review (``revue_mensuelle``) serves access to rights."""
    try:
        return LedgerPurpose(event.purpose)
    except ValueError:
        pass
    return LedgerPurpose.CONTROLE if event.role == "auditeur" else LedgerPurpose.ACCES_AUX_DROITS


def legal_basis_of(purpose: LedgerPurpose) -> LedgerLegalBasis:
    if purpose in (LedgerPurpose.ACCES_AUX_DROITS, LedgerPurpose.PREVENTION_PERTE_AUTONOMIE):
        return LedgerLegalBasis.L115_2_1
    return LedgerLegalBasis.RGPD_6_1_C


def entry_for(event: AccessEvent, subject: Pseudonym | None) -> LedgerEntry:
    """The ledger entry of one access event (a fresh id: every view is its own fact)."""
    action = ACTIONS.get(event.action)
    if action is None:
        raise InputError(f"the casebook recorded an unknown access action {event.action!r}",
                         "add it to services.ledger.casebook.ACTIONS")
    if not _ACTOR.fullmatch(event.user_id):
        raise InputError(f"the user id {event.user_id!r} cannot be written to the ledger",
                         "user ids look like agent.caf-35.0042 (no name, no e-mail)")
    purpose = purpose_of(event)
    found = _COUNT.search(event.detail)
    case_id = event.situation_id if event.situation_id and _SITUATION_ID.fullmatch(event.situation_id) \
        else None
    entry_id = uuid.uuid4().hex
    entry = LedgerEntry(
        entry_id=entry_id, time=event.at, actor=event.user_id, action=action,
        purpose=purpose, legal_basis=legal_basis_of(purpose), case_id=case_id,
        count=int(found.group(1)) if found else None,
        fund=Fund(event.fund) if event.fund in _FUNDS else None,
        subject_commitment=subject_commitment(subject.value, entry_id) if subject else None,
    )
    return about(entry, subject) if subject is not None else entry


class LedgerAuditSink:
    """Appends one ledger entry per access event (see the module docstring)."""

    def __init__(self, ledger: Ledger, cases: CaseDirectory) -> None:
        self.ledger = ledger
        self.cases = cases

    def record(self, event: AccessEvent, connection: sa.Connection | None = None) -> None:
        if connection is not None:
            self._record(event, connection)
            return
        with self.ledger.engine.begin() as conn:
            self._record(event, conn)

    def _record(self, event: AccessEvent, conn: sa.Connection) -> None:
        subject = self._subject(conn, event)
        entry = entry_for(event, subject)
        self.ledger.append([entry, *shown_entries(self.cases, conn, event, entry)], connection=conn)

    def _subject(self, conn: sa.Connection, event: AccessEvent) -> Pseudonym | None:
        """The situation's pseudonym (with its key id) from the casebook's own row."""
        if not event.situation_id:
            return None
        person = self.cases.person_of_situation(conn, event.situation_id)
        if person is None:
            return None
        if event.pseudonym is not None and event.pseudonym != person.value:
            raise InputError("the access event names another person than its situation",
                             "a casebook bug: the event and the situation disagree")
        return person


def shown_entries(cases: CaseDirectory, conn: sa.Connection, event: AccessEvent, listing: LedgerEntry
                  ) -> list[LedgerEntry]:
    """One entry per case a list view or an export showed (``event.cases``): same action,
    actor, fund, purpose and time as the list's entry (``ref`` = its id), with the case and
    the person's commitment — so "who saw my file" finds the lists too."""
    if not event.cases or listing.action not in (Action.LISTE_CONSULTEE, Action.LISTE_EXPORTEE):
        return []
    numbers = list(dict.fromkeys(event.cases))
    found = cases.cases_by_number(conn, numbers)
    entries = []
    for number in numbers:
        if number not in found:
            raise InputError(f"the list names case {number}, which the casebook does not hold",
                             "a casebook bug: lists show only stored cases")
        situation_id, person = found[number]
        entry_id = uuid.uuid4().hex
        entries.append(about(LedgerEntry(
            entry_id=entry_id, time=listing.time, actor=listing.actor, action=listing.action,
            purpose=listing.purpose, legal_basis=listing.legal_basis, case_id=situation_id,
            fund=listing.fund, ref=listing.entry_id,
            subject_commitment=subject_commitment(person.value, entry_id)), person))
    return entries
