"""Ledger entries: who did what, when, why, about which pseudonym — and nothing personal.

An entry is a frozen, strict pydantic model whose every field is an enum, a fixed-format
identifier or a timestamp: there is no field where a name, a NIR, a file number or free
text could slip in. So a retention purge never has to touch the ledger, and the Merkle
chain stays whole (docs/architecture.md, decision 8).

The leaf of the Merkle tree is the entry's canonical form (RFC 8785, JSON Canonicalization
Scheme) — :func:`canonical_bytes`. Every value of an entry is an ASCII string from a
pattern, an integer or null, and every key is ASCII; for such a document JCS is just
"keys sorted, no whitespace", which pydantic's own JSON output gives when the fields are
declared in alphabetical order (as they are): :func:`services.core.codec.canonical_model`.
The general ``rfc8785`` package stays the referee: a property test checks both agree, and
:func:`canonical_bytes_reference` is there for anyone who wants to re-check.

Entry ids are 32 hex digits, given by the caller or derived with :func:`entry_id_for` from
what makes the fact unique (for instance the action and the id of the message that caused
it), so that a redelivered message appends nothing twice.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from services.core.codec import canonical_model, canonical_reference
from services.core.messages import Pseudonym
from services.core.reasons import Reason
from services.core.types import (
    ACTOR_PATTERN,
    EMITTER_PATTERN,
    EventId,
    Fund,
    Timestamp,
)

LEDGER_SCHEMA_VERSION: Final = "1.0"

TRACE_ID_PATTERN = r"^[0-9a-f]{32}$"
TraceId = Annotated[str, Field(pattern=TRACE_ID_PATTERN)]

#: Who acted: a user or service (the contract's actor ids, e.g. ``agent.caf-35.0042``,
#: ``correlator``), a fund (``caf``) or one of its bodies (an emitter id, ``caf-35``).
LEDGER_ACTOR_PATTERN = f"^(?:{ACTOR_PATTERN[1:-1]})$|^(?:{EMITTER_PATTERN[1:-1]})$"
LedgerActor = Annotated[str, Field(pattern=LEDGER_ACTOR_PATTERN)]


class Action(StrEnum):
    """What happened. Codes are stable (auditors filter on them); labels are for people."""

    SIGNALEMENT_ACCEPTE = "signalement_accepte"
    SIGNALEMENT_REJETE = "signalement_rejete"
    SITUATION_OUVERTE = "situation_ouverte"
    SITUATION_MISE_A_JOUR = "situation_mise_a_jour"
    SITUATION_FERMEE = "situation_fermee"
    SITUATION_ROUVERTE = "situation_rouverte"
    LISTE_GENEREE = "liste_generee"
    LISTE_CONSULTEE = "liste_consultee"
    LISTE_EXPORTEE = "liste_exportee"
    DOSSIER_CONSULTE = "dossier_consulte"
    REFERENCE_REVELEE = "reference_revelee"
    SUITE_ENREGISTREE = "suite_enregistree"
    CONSENTEMENT_DONNE = "consentement_donne"
    CONSENTEMENT_RETIRE = "consentement_retire"
    OPPOSITION = "opposition"
    EFFACEMENT = "effacement"
    ROTATION_CLE = "rotation_cle"
    PURGE_CONSERVATION = "purge_conservation"
    PSEUDONYMES_CALCULES = "pseudonymes_calcules"  # a batch answered by the pseudonymisation service
    PSEUDONYMISATION_REFUSEE = "pseudonymisation_refusee"  # a batch it refused (reason)
    CLES_SIGNAL_REMISES = "cles_signal_remises"  # a batch of signal keys handed to a fund
    CLES_SIGNAL_REFUSEES = "cles_signal_refusees"  # a batch the key endpoint refused (reason)

    @property
    def label(self) -> str:
        return _ACTION_LABELS[self]


_ACTION_LABELS: dict[Action, str] = {
    Action.SIGNALEMENT_ACCEPTE: "Signalement accepté",
    Action.SIGNALEMENT_REJETE: "Signalement rejeté",
    Action.SITUATION_OUVERTE: "Situation ouverte",
    Action.SITUATION_MISE_A_JOUR: "Situation mise à jour",
    Action.SITUATION_FERMEE: "Situation clôturée",
    Action.SITUATION_ROUVERTE: "Situation rouverte",
    Action.LISTE_GENEREE: "Liste de travail générée",
    Action.LISTE_CONSULTEE: "Liste de travail consultée",
    Action.LISTE_EXPORTEE: "Liste de travail exportée",
    Action.DOSSIER_CONSULTE: "Dossier consulté",
    Action.REFERENCE_REVELEE: "Référence de dossier révélée",
    Action.SUITE_ENREGISTREE: "Suite donnée enregistrée",
    Action.CONSENTEMENT_DONNE: "Consentement recueilli",
    Action.CONSENTEMENT_RETIRE: "Consentement retiré",
    Action.OPPOSITION: "Opposition enregistrée",
    Action.EFFACEMENT: "Données effacées",
    Action.ROTATION_CLE: "Rotation de clé",
    Action.PURGE_CONSERVATION: "Purge (durée de conservation)",
    Action.PSEUDONYMES_CALCULES: "Pseudonymes calculés (lot)",
    Action.PSEUDONYMISATION_REFUSEE: "Pseudonymisation refusée",
    Action.CLES_SIGNAL_REMISES: "Clés de scellement remises (lot)",
    Action.CLES_SIGNAL_REFUSEES: "Clés de scellement refusées",
}


class LedgerPurpose(StrEnum):
    """Why: the purposes of the exchange (:class:`~services.core.types.Purpose`, same codes)
    plus the ledger's own duties."""

    ACCES_AUX_DROITS = "acces_aux_droits"
    PREVENTION_PERTE_AUTONOMIE = "prevention_perte_autonomie"
    EXERCICE_DES_DROITS = "exercice_des_droits"  # consent, objection, erasure (RGPD ch. III)
    LIMITATION_CONSERVATION = "limitation_conservation"  # retention purges (RGPD 5.1.e)
    SECURITE = "securite"  # key rotation, integrity of the exchange (RGPD 32)
    CONTROLE = "controle"  # audits by a DPO, the CNIL or an inspector

    @property
    def label(self) -> str:
        return _PURPOSE_LABELS[self]


_PURPOSE_LABELS: dict[LedgerPurpose, str] = {
    LedgerPurpose.ACCES_AUX_DROITS: "Accès aux droits",
    LedgerPurpose.PREVENTION_PERTE_AUTONOMIE: "Prévention de la perte d'autonomie",
    LedgerPurpose.EXERCICE_DES_DROITS: "Exercice des droits de la personne",
    LedgerPurpose.LIMITATION_CONSERVATION: "Limitation de la conservation",
    LedgerPurpose.SECURITE: "Sécurité du traitement",
    LedgerPurpose.CONTROLE: "Contrôle",
}


class LedgerLegalBasis(StrEnum):
    """On what legal ground."""

    L115_2_1 = "L115-2-1"  # article L115-2-1 du code de la sécurité sociale
    CONSENTEMENT = "consentement"  # the person's consent (HELP questionnaire route)
    RGPD_6_1_C = "rgpd_6_1_c"  # legal obligation (retention, security, audit)
    RGPD_6_1_E = "rgpd_6_1_e"  # task in the public interest
    RGPD_17 = "rgpd_17"  # right to erasure
    RGPD_21 = "rgpd_21"  # right to object

    @property
    def label(self) -> str:
        return _LEGAL_BASIS_LABELS[self]


_LEGAL_BASIS_LABELS: dict[LedgerLegalBasis, str] = {
    LedgerLegalBasis.L115_2_1: "Art. L115-2-1 CSS",
    LedgerLegalBasis.CONSENTEMENT: "Consentement de la personne",
    LedgerLegalBasis.RGPD_6_1_C: "Obligation légale (RGPD art. 6.1.c)",
    LedgerLegalBasis.RGPD_6_1_E: "Mission d'intérêt public (RGPD art. 6.1.e)",
    LedgerLegalBasis.RGPD_17: "Droit à l'effacement (RGPD art. 17)",
    LedgerLegalBasis.RGPD_21: "Droit d'opposition (RGPD art. 21)",
}


def _absent(value: object) -> bool:
    return value is None


COMMITMENT_PATTERN = r"^[A-Za-z0-9_-]{43}$"
_COMMITMENT_LABEL = b"help-exchange/ledger-subject/v1\x00"


def subject_commitment(pseudonym_value: str, entry_id: str) -> str:
    """Which person an entry is about, hidden from whoever reads the public tiles:
    b64url(HMAC-SHA256(key = the pseudonym's value (ASCII), message =
    "help-exchange/ledger-subject/v1" ‖ 0x00 ‖ entry id)). Different for every entry, so
    two entries about one person cannot be linked without the pseudonym; a fund, which
    computes the pseudonym from its own file, opens it (docs/audit.md §7)."""
    mac = hmac.new(pseudonym_value.encode("ascii"), _COMMITMENT_LABEL + entry_id.encode(),
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


class LedgerEntry(BaseModel):
    """One fact of the ledger. Frozen, strict, no unknown field, no personal payload.

    ``ref`` is the id of the message, event or export the action is about (a ``signal_id``,
    an ``event_id``, a worklist id); ``reason`` says why a signal was rejected; ``count`` is
    how many items a purge, an erasure or an export concerned; ``cut_off``, the date a
    purge counted its retention periods back from.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    # Fields are declared in alphabetical order ON PURPOSE: pydantic's compact JSON output
    # is then already the RFC 8785 form (see canonical_bytes). Keep it sorted.
    action: Action
    actor: LedgerActor
    case_id: EventId | None = None
    count: Annotated[int, Field(ge=0, le=10**12)] | None = None
    #: A purge's cut-off: the date its retention periods count back from (``--as-of``;
    #: the entry's ``time`` is when it ran). Written only when set.
    cut_off: Annotated[dt.date | None, Field(exclude_if=_absent)] = None
    entry_id: EventId
    # Written only when set (``exclude_if``), so entries without them keep their bytes.
    fund: Annotated[Fund | None, Field(exclude_if=_absent)] = None
    legal_basis: LedgerLegalBasis
    purpose: LedgerPurpose
    reason: Reason | None = None
    ref: EventId | None = None
    schema_version: Literal["1.0"] = LEDGER_SCHEMA_VERSION
    subject: Pseudonym | None = None  # its own fields (key_id, value) are sorted too
    subject_commitment: Annotated[str | None, Field(pattern=COMMITMENT_PATTERN,
                                                    exclude_if=_absent)] = None
    time: Timestamp
    trace_id: TraceId | None = None

    #: The person an entry with a ``subject_commitment`` is about: kept by the store in its
    #: private columns (for queries), never in the hashed bytes (the public tiles).
    _person: Pseudonym | None = PrivateAttr(default=None)

    def canonical(self) -> bytes:
        return canonical_bytes(self)

    def __eq__(self, other: object) -> bool:
        """Equal when the fields are (the privately kept person is not part of the fact)."""
        if not isinstance(other, LedgerEntry):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(canonical_bytes(self))

    @property
    def person(self) -> Pseudonym | None:
        """The person this entry is about: ``subject``, or the one its commitment hides."""
        return self.subject if self.subject is not None else self._person

    @property
    def time_text(self) -> str:
        """``format_timestamp(self.time)``, through the C ``isoformat`` (time is UTC)."""
        return self.time.isoformat(timespec="microseconds")[:26] + "Z"


def entry_id_for(*parts: str) -> str:
    """A deterministic entry id from what makes a fact unique, e.g.
    ``entry_id_for("signalement_accepte", signal_id)``."""
    if not parts:
        raise ValueError("entry_id_for needs at least one part")
    digest = hashlib.sha256("\x1f".join(("help-exchange.ledger", *parts)).encode()).hexdigest()
    return digest[:32]


def new_entry(
    *,
    action: Action,
    actor: str,
    purpose: LedgerPurpose,
    legal_basis: LedgerLegalBasis,
    time: dt.datetime,
    entry_id: str | None = None,
    natural_key: tuple[str, ...] = (),
    **fields: Any,
) -> LedgerEntry:
    """Build an entry; its id is ``entry_id`` or derived from ``(action, *natural_key)``."""
    if entry_id is None:
        if not natural_key:
            raise ValueError("give entry_id or natural_key, so a retry appends nothing twice")
        entry_id = entry_id_for(action.value, *natural_key)
    person = fields.pop("person", None)
    if person is not None:
        fields["subject_commitment"] = subject_commitment(person.value, entry_id)
    entry = LedgerEntry(
        entry_id=entry_id, time=time, actor=actor, action=action, purpose=purpose,
        legal_basis=legal_basis, **fields,
    )
    if person is not None:
        entry._person = person
    return entry


def is_about(entry: LedgerEntry, person: Pseudonym) -> bool:
    """True if ``entry`` names ``person``: its commitment opens with the person's pseudonym
    (or, written before commitments, its ``subject`` is the person)."""
    if entry.subject_commitment is not None:
        return entry.subject_commitment == subject_commitment(person.value, entry.entry_id)
    return entry.subject == person


def about(entry: LedgerEntry, person: Pseudonym) -> LedgerEntry:
    """``entry`` about ``person``: its commitment set (and the person kept privately)."""
    if entry.subject_commitment != subject_commitment(person.value, entry.entry_id):
        raise ValueError("the entry's commitment is not the one of this person")
    entry._person = person
    return entry


def entry_document(entry: LedgerEntry) -> dict[str, Any]:
    """The entry as a JSON-ready dict (every member present, ``null`` when absent)."""
    return entry.model_dump(mode="json")


def canonical_bytes(entry: LedgerEntry) -> bytes:
    """The RFC 8785 canonical form of ``entry``: the Merkle leaf data.

    pydantic-core writes compact JSON (no whitespace) in field declaration order, which is
    alphabetical, with every value an ASCII string, an integer or null: exactly JCS. A
    property test holds this against the ``rfc8785`` package for random entries."""
    return canonical_model(entry)


def canonical_bytes_reference(entry: LedgerEntry) -> bytes:
    """The same bytes through the general ``rfc8785`` implementation (slower)."""
    return canonical_reference(entry_document(entry))


def parse_entry(data: bytes | str) -> LedgerEntry:
    """Read an entry back from its canonical bytes (raises pydantic.ValidationError)."""
    return LedgerEntry.model_validate_json(data)
