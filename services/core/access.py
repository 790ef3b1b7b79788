"""Who looked at what, and why: one access event of the casebook (a view, an export, a
follow-up recorded), as the casebook records it and the ledger enters it.

It carries no personal payload: the user, role, fund, purpose, case number and the
situation's pseudonym, never a category or a reference.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

AccessAction = Literal["consultation_liste", "export", "consultation_dossier", "suite_enregistree"]
DEFAULT_PURPOSE = "revue_mensuelle"


@dataclass(frozen=True)
class AccessEvent:
    user_id: str
    role: str
    fund: str | None
    action: AccessAction
    purpose: str = DEFAULT_PURPOSE
    case_number: str | None = None
    situation_id: str | None = None
    pseudonym: str | None = None
    detail: str = ""
    at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    #: The case numbers a list view or an export showed (the ledger enters one per case).
    cases: tuple[str, ...] = ()
