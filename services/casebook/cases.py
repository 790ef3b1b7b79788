"""The casebook's answers about its cases, for the ledger (its :class:`~services.ledger.cases.CaseDirectory`).

Read in the caller's connection: the ledger shares the casebook's database. A database with
no casebook tables answers "no such case".
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from services.casebook import tables as ct
from services.core.messages import Pseudonym, sealed_digest

_CHUNK = 500


def _has_casebook(conn: sa.Connection) -> bool:
    return sa.inspect(conn).has_table(ct.situations.name)


class CasebookCases:
    def person_of_situation(self, conn: sa.Connection, situation_id: str) -> Pseudonym | None:
        if not _has_casebook(conn):
            return None
        s = ct.situations.c
        row = conn.execute(sa.select(s.pseudonym_key_id, s.pseudonym)
                           .where(s.situation_id == situation_id)).first()
        return None if row is None else Pseudonym(key_id=row.pseudonym_key_id, value=row.pseudonym)

    def situation_of_case(self, conn: sa.Connection, case_number: str) -> str | None:
        if not _has_casebook(conn):
            return None
        s = ct.situations.c
        found = conn.execute(sa.select(s.situation_id).where(s.case_number == case_number)).scalar()
        return None if found is None else str(found)

    def cases_by_number(self, conn: sa.Connection, case_numbers: Sequence[str]
                        ) -> dict[str, tuple[str, Pseudonym]]:
        s = ct.situations.c
        found: dict[str, tuple[str, Pseudonym]] = {}
        numbers = list(dict.fromkeys(case_numbers))
        for start in range(0, len(numbers), _CHUNK):
            rows = conn.execute(sa.select(s.case_number, s.situation_id, s.pseudonym_key_id, s.pseudonym)
                                .where(s.case_number.in_(numbers[start : start + _CHUNK])))
            for row in rows:
                found[row.case_number] = (row.situation_id,
                                          Pseudonym(key_id=row.pseudonym_key_id, value=row.pseudonym))
        return found

    def case_of_reveal(self, conn: sa.Connection, case_number: str | None, fund: str,
                       digest: str) -> tuple[str, Pseudonym] | None:
        """A case purged since, or a token attributed to the wrong case: None (the ledger's
        entry then names no case)."""
        if case_number is None or not _has_casebook(conn):
            return None
        s = ct.situations.c
        row = conn.execute(sa.select(s.situation_id, s.pseudonym_key_id, s.pseudonym, s.detail)
                           .where(s.case_number == case_number)).first()
        if row is None:
            return None
        for ref in (row.detail or {}).get("refs", ()):
            sealed = ref.get("sealed_ref") or {}
            if ref.get("fund") == fund and sealed_digest(str(sealed.get("value", ""))) == digest:
                return row.situation_id, Pseudonym(key_id=row.pseudonym_key_id, value=row.pseudonym)
        return None
