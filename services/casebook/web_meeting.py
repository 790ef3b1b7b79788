"""Web pages of the meeting itself: the meetings recorded (date, participants by fund) and
the statistics under statistical secrecy. Registered on the app by
:func:`services.casebook.web.create_app` through :func:`register`, with the app's own
session and CSRF helpers, so that the rules of access stay in one place. Statistics are
protected aggregates and meetings hold no personal data: neither enters the access log."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.casebook.auth import User
from services.casebook.model import Month
from services.casebook.records import meetings_before, published_release, record_meeting
from services.casebook.sessions import Session, SessionStore
from services.casebook.stats import DIMENSIONS, MEASURES, SECRECY_NOTE, Release, render_csv, render_pdf, shown
from services.casebook.worklist import Labels
from services.core.bounds import parse_day
from services.errors import InputError
from services.platform.settings import Settings

_SPLIT = re.compile(r"[\s,;]+")


def register(app: FastAPI, *, engine: sa.Engine, settings: Settings, labels: Labels,
             current: Callable[[Request], tuple[User, str]],
             current_session: Callable[[Request], tuple[User, Session]], sessions: SessionStore,
             check_csrf: Callable[[str, str], None],
             page: Callable[..., HTMLResponse],
             month_of: Callable[[str | None], Month], http_error: Callable[[int, str], Exception]) -> None:
    taxonomy = settings.taxonomy
    funds = [(f.value, info.libelle) for f, info in taxonomy.funds.items()]

    def meetings_page(user: User, csrf: str, status_code: int = 200, **extra: Any) -> HTMLResponse:
        recent = meetings_before(engine, user.territory, dt.datetime.now(dt.UTC) + dt.timedelta(days=2), limit=12)
        return page("meetings.html", status_code, user=user, csrf_token=csrf, nav="meetings", meetings=recent,
                    funds=funds, fund_label=dict(funds), today=dt.date.today().isoformat(),
                    can_record=user.role == "secretaire_seance", **extra)

    @app.get("/meetings", response_class=HTMLResponse, summary="Réunions enregistrées")
    def meetings(request: Request) -> Response:
        user, live = current_session(request)
        # the message is kept server-side (shown once): no address can make one up
        return meetings_page(user, live.csrf, message=sessions.pop_flash(live))

    @app.post("/meetings", summary="Enregistrer une réunion")
    async def meeting_post(request: Request, held_on: Annotated[str, Form(max_length=10)],
                           csrf_token: Annotated[str, Form(max_length=128)] = "") -> Response:
        user, live = current_session(request)
        csrf = live.csrf
        check_csrf(csrf, csrf_token)
        if user.role != "secretaire_seance":
            raise http_error(403, "Seul le secrétaire de séance enregistre une réunion.")
        form = await request.form()
        participants: dict[str, list[str]] = {}
        for code, _ in funds:
            raw = form.get(f"participants_{code}", "")
            text = raw if isinstance(raw, str) else ""
            if len(text) > 600:
                return meetings_page(user, csrf, 400, error=f"Participants {code} : 600 caractères au plus.")
            ids = [u for u in _SPLIT.split(text.strip()) if u]
            if ids:
                participants[code] = ids
        try:
            day = parse_day(held_on, what="date de la réunion")
            meeting = record_meeting(engine, territory=user.territory,
                                     held_at=dt.datetime.combine(day, dt.time(9), dt.UTC),
                                     participants=participants, recorded_by=user.user_id)
        except InputError as exc:
            return meetings_page(user, csrf, 400, error=exc.one_line())
        # no access-log entry: a meeting row names who recorded it, and holds no personal data
        del meeting
        sessions.set_flash(live, "Réunion enregistrée.")
        return RedirectResponse("/meetings", status_code=303)

    def releases_for(user: User, m: Month) -> list[Release]:
        now = dt.datetime.now(dt.UTC)
        out = []
        for month in (m, m.shift(-1)):
            rel = published_release(engine, taxonomy, territory=user.territory, month=month, now=now,
                                    rule_titles=labels.rule_titles)
            if rel is not None:
                out.append(rel)
        return out

    def default_month(text: str | None) -> Month:
        if text:
            return month_of(text)
        now = dt.datetime.now(dt.UTC)
        return Month(now.year, now.month).shift(-1)  # the last month ended

    @app.get("/statistics", response_class=HTMLResponse, summary="Statistiques (secret statistique)")
    def statistics(request: Request, month: Annotated[str | None, Query(max_length=16)] = None) -> Response:
        user, csrf = current(request)
        m = default_month(month)
        releases = releases_for(user, m)
        return page("statistics.html", user=user, csrf_token=csrf, nav="statistics", month=m, releases=releases,
                    measures=MEASURES, dimensions=DIMENSIONS, shown=shown, note=SECRECY_NOTE)

    @app.get("/statistics/export", summary="Export des statistiques (csv, pdf)")
    def statistics_export(request: Request, month: Annotated[str | None, Query(max_length=16)] = None,
                          format: Annotated[str, Query(pattern="^(csv|pdf)$")] = "csv") -> Response:
        user, _ = current(request)
        m = default_month(month)
        releases = releases_for(user, m)
        if not releases:
            raise http_error(404, f"Aucune statistique publiée pour {m.label} : un mois est publié une fois clos.")
        data = render_csv(releases) if format == "csv" else render_pdf(releases)
        media = "text/csv; charset=utf-8" if format == "csv" else "application/pdf"
        return Response(data, media_type=media, headers={
            "Content-Disposition": f'attachment; filename="statistiques-{user.territory}-{m}.{format}"'})


