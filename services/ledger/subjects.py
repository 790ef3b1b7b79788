"""Retention of ``ledger_signal_subjects``: the person of a signal whose receipt never came.

The audit sink keeps the pseudonym of every signal it reads until the signal's receipt is
entered (:mod:`services.ledger.sink`). A receipt that never comes would leave the row
forever: the purge removes rows read before the signals' period, and rows of a ledger
written before they were dated (``seen_at`` null).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from services.core.types import format_timestamp
from services.ledger import tables as t


def _stale(before: dt.datetime) -> sa.ColumnElement[bool]:
    seen_at = t.signal_subjects.c.seen_at
    return sa.or_(seen_at.is_(None), seen_at < format_timestamp(before))


def _present(conn: sa.Connection) -> bool:
    return sa.inspect(conn).has_table(t.signal_subjects.name)


def count_stale_subjects(conn: sa.Connection, before: dt.datetime) -> int:
    """How many rows a purge with this cut-off removes (a ledger not upgraded yet, whose
    rows are all undated: every row)."""
    if not _present(conn):
        return 0
    dated = "seen_at" in {c["name"] for c in sa.inspect(conn).get_columns(t.signal_subjects.name)}
    query = sa.select(sa.func.count()).select_from(t.signal_subjects)
    return int(conn.execute(query.where(_stale(before)) if dated else query).scalar_one())


def delete_stale_subjects(conn: sa.Connection, before: dt.datetime) -> int:
    """Delete them, in ``conn``'s transaction; returns how many went."""
    if not _present(conn):
        return 0
    return conn.execute(sa.delete(t.signal_subjects).where(_stale(before))).rowcount or 0
