"""The wiring: every collaborator one service gets from another, built here and nowhere else.

A service declares what it needs as a port of its own (a Protocol, or a small ``*Wiring``
record) and never imports another service; this module fills each port:

* the casebook's audit sink: its local access log AND the ledger, in one transaction
  (:func:`audit_sink`);
* the ledger's view of the casebook's cases: the person of a situation, the case of a
  number or of a reveal (:class:`~services.casebook.cases.CasebookCases`);
* the web view with the ledger's auditor pages mounted (:func:`web_app`);
* the pseudonymisation service's log: the ledger (:func:`pseudonymiser_log`).
* the key endpoint's log: the ledger (:func:`signal_keys_log`).

:func:`collaborators` hands them to the command line (:mod:`services.app.cli`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from services.casebook.audit import AuditSink, FanOutAuditSink, SqlAuditSink
from services.casebook.cases import CasebookCases
from services.casebook.wiring import CasebookWiring
from services.ledger.wiring import LedgerWiring
from services.platform.settings import Settings
from services.pseudonymiser.wiring import PseudonymiserWiring
from services.signalkeys.wiring import SignalKeysWiring

if TYPE_CHECKING:
    from fastapi import FastAPI

    from services.casebook.auth import Authenticator
    from services.casebook.web import WebExtension
    from services.pseudonymiser.service import ServiceLog
    from services.signalkeys.service import KeysLog

CASES = CasebookCases()


def audit_sink(settings: Settings, engine: sa.Engine) -> AuditSink:
    """The casebook's accesses to its local table and to the ledger (which shares the
    casebook's database and engine, migrated with it), in one transaction.
    No signing key is needed to append (heads are signed by `audit head` and the audit sink)."""
    from services.ledger.casebook import LedgerAuditSink
    from services.ledger.store import Ledger, ensure_ready

    ensure_ready(engine)
    return FanOutAuditSink([SqlAuditSink(engine), LedgerAuditSink(Ledger(engine), CASES)], engine)


def ledger_pages(app: FastAPI, engine: sa.Engine, **hooks: Any) -> None:
    """The auditor's pages of the ledger (``/audit``) in the casebook's web view."""
    from services.ledger.web import add_audit_routes

    add_audit_routes(app, engine, cases=CASES, **hooks)


WEB_EXTENSIONS: tuple[WebExtension, ...] = (ledger_pages,)


def web_app(settings: Settings, *, engine: sa.Engine | None = None, authenticator: Authenticator | None = None,
            audit: AuditSink | None = None, publish: bool = True, host: str = "127.0.0.1") -> FastAPI:
    """The web view as served: the casebook's pages, the ledger's, and the audit sink above."""
    from services.casebook.web import create_app
    from services.platform.db import open_engine

    engine = engine or open_engine(settings.database_url)
    return create_app(settings, engine=engine, audit=audit or audit_sink(settings, engine),
                      authenticator=authenticator, extensions=WEB_EXTENSIONS, publish=publish, host=host)


def pseudonymiser_log(settings: Settings) -> ServiceLog:
    """The pseudonymisation service's batches and key destructions, entered in the ledger."""
    from services.ledger.pseudonymisation import PseudonymiserLog
    from services.ledger.store import Ledger

    return PseudonymiserLog(Ledger.open(settings, sign=False))


def signal_keys_log(settings: Settings) -> KeysLog:
    """The key endpoint's batches, entered in the ledger."""
    from services.ledger.signalkeys import SignalKeysLog
    from services.ledger.store import Ledger

    return SignalKeysLog(Ledger.open(settings, sign=False))


def collaborators() -> dict[type[Any], Any]:
    """What the commands get, by the wiring record each service declares."""
    return {
        CasebookWiring: CasebookWiring(audit_sink=audit_sink, web_extensions=WEB_EXTENSIONS),
        LedgerWiring: LedgerWiring(cases=CASES),
        PseudonymiserWiring: PseudonymiserWiring(log=pseudonymiser_log),
        SignalKeysWiring: SignalKeysWiring(log=signal_keys_log),
    }
