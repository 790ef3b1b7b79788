"""Ledger entries for the tests: a cycle of actions, actors and purposes, two persons, one case."""

from __future__ import annotations

import datetime as dt

from services.core.messages import Pseudonym
from services.ledger.entries import Action, LedgerEntry, LedgerLegalBasis, LedgerPurpose, entry_id_for

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
PSEUDO = Pseudonym(key_id="xk-20261101-0a1b", value="-" + "A" * 42)
OTHER = Pseudonym(key_id="xk-20261101-0a1b", value="B" * 43)
CASE = "c" * 32

_CYCLE = (
    (Action.SIGNALEMENT_ACCEPTE, "correlator", LedgerPurpose.ACCES_AUX_DROITS, LedgerLegalBasis.L115_2_1),
    (Action.SITUATION_OUVERTE, "correlator", LedgerPurpose.ACCES_AUX_DROITS, LedgerLegalBasis.L115_2_1),
    (Action.LISTE_CONSULTEE, "agent.caf-35.0007", LedgerPurpose.ACCES_AUX_DROITS, LedgerLegalBasis.L115_2_1),
    (Action.REFERENCE_REVELEE, "cpam-35", LedgerPurpose.PREVENTION_PERTE_AUTONOMIE,
     LedgerLegalBasis.L115_2_1),
    (Action.SUITE_ENREGISTREE, "carsat-35", LedgerPurpose.PREVENTION_PERTE_AUTONOMIE,
     LedgerLegalBasis.L115_2_1),
    (Action.CONSENTEMENT_DONNE, "urssaf-35", LedgerPurpose.EXERCICE_DES_DROITS,
     LedgerLegalBasis.CONSENTEMENT),
)


def make_entry(i: int, **overrides: object) -> LedgerEntry:
    """Entry n° i of the test ledgers; ``minutes`` moves its time, other keys replace fields."""
    minutes = overrides.pop("minutes", i)
    assert isinstance(minutes, int)
    action, actor, purpose, basis = _CYCLE[i % len(_CYCLE)]
    fields: dict[str, object] = {
        "entry_id": entry_id_for("test", str(i)),
        "time": T0 + dt.timedelta(minutes=minutes),
        "actor": actor, "action": action, "purpose": purpose, "legal_basis": basis,
        "subject": PSEUDO if i % 2 == 0 else OTHER,
        "case_id": CASE if i % 3 == 0 else None,
        "trace_id": f"{i:032x}",
    }
    fields.update(overrides)
    return LedgerEntry(**fields)  # type: ignore[arg-type]
