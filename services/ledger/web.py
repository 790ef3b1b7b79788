"""The auditor's page of the web view (``/audit``): the ledger's checkpoints and their
cosignatures, a query by case number, month or action, and each entry's inclusion proof
to download (JSON, checked by `audit check-proof` or Go's sumdb/tlog: docs/audit.md §5).

Only the ``auditeur`` role reads it (anyone else: 403). A query by case is itself recorded
(``consultation_dossier``, purpose ``controle``). Mounted in the casebook's web view by
:func:`services.app.bootstrap.web_app` through :func:`add_audit_routes`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from services.errors import InputError
from services.ledger.cases import CaseDirectory
from services.ledger.checkpoint import parse_note
from services.ledger.entries import Action
from services.ledger.export import display_row, flat_row, period_range
from services.ledger.proofs import inclusion_document
from services.ledger.store import Ledger, ensure_ready

_ID = re.compile(r"^[0-9a-f]{32}$")
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_LIMIT = 200
HEADERS = ("N°", "Quand", "Qui", "Quoi", "Dossier", "Pourquoi", "Base légale", "Preuve")


def add_audit_routes(app: FastAPI, engine: sa.Engine, *,
                     current: Callable[[Request], tuple[Any, str]],
                     page: Callable[..., Response],
                     record: Callable[..., None], cases: CaseDirectory) -> None:
    """Add ``/audit``, ``/audit/checkpoint`` and ``/audit/proof/{entry_id}`` to ``app``.
    ``current`` gives the signed-in user (raises 401), ``page`` renders a template,
    ``record`` enters an access event (the casebook's audit hook), ``cases`` finds a case
    number's situation."""
    ensure_ready(engine)
    ledger = Ledger(engine)

    def auditor(request: Request) -> tuple[Any, str]:
        user, csrf = current(request)
        if user.role != "auditeur":
            raise HTTPException(403, "Le journal d'audit est réservé au rôle auditeur.")
        return user, csrf

    @app.get("/audit", response_class=HTMLResponse, summary="Journal d'audit (auditeurs)")
    def audit_page(request: Request,
                   case: Annotated[str | None, Query(max_length=32)] = None,
                   period: Annotated[str | None, Query(max_length=7)] = None,
                   action: Annotated[str | None, Query(max_length=40)] = None) -> Response:
        user, csrf = auditor(request)
        case, period, action = (case or None), (period or None), (action or None)
        error = None
        rows: list[dict[str, Any]] = []
        case_id = None
        try:
            if period is not None and not _MONTH.fullmatch(period):
                raise InputError(f"« {period} » n'est pas un mois", "indiquez AAAA-MM")
            if action is not None and action not in {a.value for a in Action}:
                raise InputError(f"« {action} » n'est pas une action du journal",
                                 "choisissez-la dans la liste")
            if case is not None:
                try:
                    case_id = situation_of_case(engine, case, cases)
                except InputError:
                    raise InputError(f"Aucun dossier ne porte le numéro « {case} »",
                                     "indiquez le numéro imprimé sur la liste du mois "
                                     "(35-2026-11-0042) ou l'identifiant de situation") from None
                record(user, "consultation_dossier", case_number=None if _ID.fullmatch(case)
                       else case, situation_id=case_id, purpose="controle")
            if case_id or period or action:
                rows = [flat_row(i, d) for i, d in ledger.query(
                    case_id=case_id, action=action,
                    period=period_range(period) if period else None, limit=_LIMIT)]
        except InputError as exc:
            error = exc.one_line()
        return page("audit.html", user=user, csrf_token=csrf, nav="audit",
                    checkpoints=_checkpoints(ledger), headers=HEADERS,
                    rows=[(r, display_row(r)) for r in rows], limit=_LIMIT, error=error,
                    actions=[(a.value, a.label) for a in Action],
                    query={"case": case or "", "period": period or "", "action": action or ""},
                    status_code=400 if error else 200)

    @app.get("/audit/checkpoint", response_class=PlainTextResponse,
             summary="Dernier point de contrôle (note signée C2SP, avec ses cosignatures)")
    def audit_checkpoint(request: Request) -> Response:
        auditor(request)
        note = ledger.latest_checkpoint()
        if note is None:
            raise HTTPException(404, "Le journal n'a encore aucun point de contrôle.")
        return PlainTextResponse(note)

    @app.get("/audit/proof/{entry_id}", summary="Preuve d'inclusion d'une entrée (JSON)")
    def audit_proof(request: Request, entry_id: str) -> Response:
        auditor(request)
        if not _ID.fullmatch(entry_id):
            raise HTTPException(404, "Aucune entrée ne porte cet identifiant.")
        stored = ledger.get(entry_id)
        note = ledger.latest_checkpoint()
        if stored is None or note is None:
            raise HTTPException(404, "Aucune entrée ne porte cet identifiant, ou aucun point "
                                     "de contrôle ne la couvre encore.")
        size = int(parse_note(note).text.split("\n")[1])
        if stored.index >= size:
            raise HTTPException(404, "Cette entrée n'est pas encore couverte par un point de "
                                     "contrôle signé : réessayez dans quelques secondes.")
        _, _, path = ledger.inclusion(entry_id, size)
        document = inclusion_document(stored.data, stored.index, size, path, None, note)
        return Response(json.dumps(document, indent=2, ensure_ascii=False) + "\n",
                        media_type="application/json",
                        headers={"Content-Disposition":
                                 f'attachment; filename="preuve-{entry_id}.json"'})


def _checkpoints(ledger: Ledger, last: int = 20) -> list[dict[str, Any]]:
    out = []
    with ledger.engine.connect() as conn:
        from services.ledger import tables as t

        c = t.checkpoints.c
        rows = conn.execute(sa.select(c.tree_size, c.signed_at).order_by(c.tree_size.desc())
                            .limit(last)).all()
        cos: dict[int, list[str]] = {}
        for size, witness in conn.execute(sa.select(t.cosignatures.c.tree_size,
                                                    t.cosignatures.c.witness)):
            cos.setdefault(int(size), []).append(str(witness))
    for size, at in rows:
        out.append({"size": int(size), "signed_at": str(at)[:19].replace("T", " ") + " UTC",
                    "cosigners": sorted(cos.get(int(size), []))})
    return out


def situation_of_case(engine: sa.Engine, case: str, cases: CaseDirectory) -> str:
    """The situation id of ``case``: itself (32 hex digits), or that of the case number the
    worklist prints, from the casebook."""
    from services.core.types import CASE_NUMBER_PATTERN

    if _ID.fullmatch(case):
        return case
    if not re.fullmatch(CASE_NUMBER_PATTERN, case):
        raise InputError(f"--case {case!r} is neither a case number nor a situation id",
                         "give the number the worklist prints (35-2026-11-0042) or 32 hex digits")
    with engine.connect() as conn:
        found = cases.situation_of_case(conn, case)
    if found is None:
        raise InputError(f"no case {case} in the casebook (purged, or never opened)",
                         "check the number; a purged case's entries are found by its situation "
                         "id, as `audit export` lists it")
    return found
