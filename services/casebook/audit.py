"""Who looked at what, and why: every worklist view, export, case view and follow-up.

The casebook records these (:class:`~services.core.access.AccessEvent`) through one small
interface, :class:`AuditSink`. :class:`SqlAuditSink` writes ``casebook_access_log`` in the
casebook database. The command line and the web view get their sink from the composition
root (:func:`services.app.bootstrap.audit_sink`): a :class:`FanOutAuditSink` of the local
table and the ledger's tamper-evident log, in ONE transaction, so the local row and the
ledger entry commit together or not at all. :func:`local_audit_sink` is the local table
alone, for a casebook run without the ledger.
An event carries no personal payload: the user, role, fund, purpose, case number and the
situation's pseudonym (what the ledger keys entries on), never a category or a reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import sqlalchemy as sa

from services.casebook import tables as t
from services.core.access import AccessEvent
from services.platform.settings import Settings

#: Actions whose access-log row keeps no detail (the ledger's entry for them has none either).
MINIMAL_ACTIONS = frozenset({"suite_enregistree"})


@runtime_checkable
class AuditSink(Protocol):
    """Records one access event durably; raising means the access must not proceed. With
    ``connection``, in that connection's transaction."""

    def record(self, event: AccessEvent, connection: sa.Connection | None = None) -> None: ...


#: How the command line and the web view get their sink: (settings, casebook engine) → sink.
AuditSinkFactory = Callable[[Settings, sa.Engine], AuditSink]


class SqlAuditSink:
    """The default sink: one row per event in ``casebook_access_log``."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def record(self, event: AccessEvent, connection: sa.Connection | None = None) -> None:
        if connection is None:
            with self.engine.begin() as conn:
                self.record(event, conn)
            return
        # A follow-up's row keeps the ledger's minimal form: who, when, which case; not the
        # action and outcome (they are the person's data, erased with the case).
        detail = "" if event.action in MINIMAL_ACTIONS else event.detail[:200]
        connection.execute(sa.insert(t.access_log).values(
            at=event.at, user_id=event.user_id, role=event.role, fund=event.fund,
            action=event.action, purpose=event.purpose, case_number=event.case_number,
            detail=detail))


class FanOutAuditSink:
    """Every sink gets the event, all in one transaction: ``connection``'s, else one opened
    on ``engine``."""

    def __init__(self, sinks: Sequence[AuditSink], engine: sa.Engine) -> None:
        self.sinks = tuple(sinks)
        self.engine = engine

    def record(self, event: AccessEvent, connection: sa.Connection | None = None) -> None:
        if connection is None:
            with self.engine.begin() as conn:
                self.record(event, conn)
            return
        for sink in self.sinks:
            sink.record(event, connection=connection)


def local_audit_sink(settings: Settings, engine: sa.Engine) -> AuditSink:
    """The local table alone (a casebook without the ledger)."""
    return SqlAuditSink(engine)


def access_log(engine: sa.Engine) -> list[dict[str, object]]:
    """The local access log, oldest first (for the auditor and the tests)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.access_log).order_by(t.access_log.c.id))
        return [dict(r._mapping) for r in rows]
