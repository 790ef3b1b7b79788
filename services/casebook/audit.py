"""Who looked at what, and why: every worklist view, export, case view and follow-up.

The casebook records these through one small interface, :class:`AuditSink`. The default,
:class:`SqlAuditSink`, writes ``casebook_access_log`` in the casebook database. The ledger
service plugs in by providing ``services/ledger/casebook.py`` with a function
``audit_sink(settings, engine) -> AuditSink``; :func:`default_audit_sink` then sends every
event to both (the ledger's tamper-evident log and the local table) in ONE transaction:
sinks whose ``record`` takes a ``connection`` keyword write in it, so the local row and
the ledger entry commit together or not at all.
An event carries no personal payload: the user, role, fund, purpose, case number and the
situation's pseudonym (what the ledger keys entries on), never a category or a reference.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import sqlalchemy as sa

from services.casebook import tables as t
from services.platform.settings import Settings

AccessAction = Literal["consultation_liste", "export", "consultation_dossier", "suite_enregistree"]
DEFAULT_PURPOSE = "revue_mensuelle"
#: Actions whose access-log row keeps no detail (the ledger's entry for them has none either).
MINIMAL_ACTIONS = frozenset({"suite_enregistree"})


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


@runtime_checkable
class AuditSink(Protocol):
    """Records one access event durably; raising means the access must not proceed."""

    def record(self, event: AccessEvent) -> None: ...


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


def _takes_connection(sink: AuditSink) -> bool:
    try:
        return "connection" in inspect.signature(sink.record).parameters
    except (TypeError, ValueError):
        return False


class FanOutAuditSink:
    """Every sink gets the event; with ``engine``, those that take a connection share one
    transaction (the others record on their own, after it commits)."""

    def __init__(self, sinks: Sequence[AuditSink], engine: sa.Engine | None = None) -> None:
        self.sinks = tuple(sinks)
        self.engine = engine

    def record(self, event: AccessEvent) -> None:
        shared = [s for s in self.sinks if self.engine is not None and _takes_connection(s)]
        if shared and self.engine is not None:
            with self.engine.begin() as conn:
                for sink in shared:
                    sink.record(event, connection=conn)  # type: ignore[call-arg]
        for sink in self.sinks:
            if sink not in shared:
                sink.record(event)


LEDGER_HOOK = "services.ledger.casebook"


def default_audit_sink(settings: Settings, engine: sa.Engine) -> AuditSink:
    """The local table, plus the ledger when ``services.ledger.casebook.audit_sink`` exists."""
    local = SqlAuditSink(engine)
    if importlib.util.find_spec("services.ledger") is None or importlib.util.find_spec(LEDGER_HOOK) is None:
        return local
    hook = getattr(importlib.import_module(LEDGER_HOOK), "audit_sink", None)
    if hook is None:
        return local
    ledger: AuditSink = hook(settings, engine)
    return FanOutAuditSink([local, ledger], engine)


def access_log(engine: sa.Engine) -> list[dict[str, object]]:
    """The local access log, oldest first (for the auditor and the tests)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.access_log).order_by(t.access_log.c.id))
        return [dict(r._mapping) for r in rows]
