"""What the ledger asks of the casebook about its cases: a port, filled by the casebook.

The ledger lives in the casebook's database. An entry about a case names the person (their
commitment), which only the casebook's row of the case holds; an auditor asks by the case
number the worklist prints. The ledger reads these through :class:`CaseDirectory`, which
:mod:`services.app.bootstrap` fills with :class:`services.casebook.cases.CasebookCases`; the
ledger never reads the casebook's tables itself. Every question is asked in the ledger's own
connection, so that an access-log row and its ledger entry commit together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import sqlalchemy as sa

from services.core.messages import Pseudonym


class CaseDirectory(Protocol):
    def person_of_situation(self, conn: sa.Connection, situation_id: str) -> Pseudonym | None:
        """The pseudonym of a situation (None: no such case, or no casebook here)."""
        ...

    def situation_of_case(self, conn: sa.Connection, case_number: str) -> str | None:
        """The situation id of the case number the worklist prints (None: no such case)."""
        ...

    def cases_by_number(self, conn: sa.Connection, case_numbers: Sequence[str]
                        ) -> dict[str, tuple[str, Pseudonym]]:
        """case number → (situation id, pseudonym), for the numbers the casebook holds."""
        ...

    def case_of_reveal(self, conn: sa.Connection, case_number: str | None, fund: str,
                       digest: str) -> tuple[str, Pseudonym] | None:
        """(situation id, pseudonym) of the case a reveal names, if that case holds a sealed
        reference of ``fund`` whose SHA-256 is ``digest``; else None."""
        ...


class NoCasebook:
    """A ledger with no casebook beside it: no case is known."""

    def person_of_situation(self, conn: sa.Connection, situation_id: str) -> Pseudonym | None:
        return None

    def situation_of_case(self, conn: sa.Connection, case_number: str) -> str | None:
        return None

    def cases_by_number(self, conn: sa.Connection, case_numbers: Sequence[str]
                        ) -> dict[str, tuple[str, Pseudonym]]:
        return {}

    def case_of_reveal(self, conn: sa.Connection, case_number: str | None, fund: str,
                       digest: str) -> tuple[str, Pseudonym] | None:
        return None
