"""One glossary: each concept has one English identifier in the code, one French code (the
key in ``schemas/*.yaml``, or the value on the wire) and one French label for people.

The data files and the wire keep their French codes (a jurist edits the YAML; producers in
other languages read the contract); the code names the same things in English. This table
is the one place where the two meet: the models of :mod:`services.core.taxonomy`,
:mod:`services.core.policy` and :mod:`services.core.rules` read their French keys from it
(:func:`code`), and ``docs/glossary.md`` shows it (``tests/core/test_glossary.py`` holds
the two together).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    identifier: str  #: English, in the code (a class, a field, an argument)
    code: str  #: French, in the data files and on the wire
    label: str  #: French, for people


TERMS: tuple[Term, ...] = (
    Term("fund", "organisme", "Organisme"),
    Term("funds", "organismes", "Organismes"),
    Term("Purpose, purpose", "finalite", "Finalité"),
    Term("purposes", "finalites", "Finalités"),
    Term("exchangeable", "echangeable", "Échangeable"),
    Term("category", "categorie", "Catégorie"),
    Term("territory", "departement", "Département"),
    Term("LedgerLegalBasis, legal_basis", "bases_legales", "Base légale"),
    Term("accepted", "accepte", "Accepté"),
    Term("Rejected, rejected", "rejete", "Rejeté"),
)

_CODES = {name.strip(): t.code for t in TERMS for name in t.identifier.split(",")}


def code(identifier: str) -> str:
    """The French code of an English identifier (``code("fund") == "organisme"``)."""
    return _CODES[identifier]
