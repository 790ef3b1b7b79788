"""The web view of the monthly review (``help-exchange serve``): FastAPI, server-rendered
French HTML in the look of the state design system (DSFR).

Pages: login, the month's worklist (and its exports), a case page, the follow-up form.
What a user sees comes from :mod:`services.casebook.worklist`, filtered by the user's fund
(agents) and territory (everyone: another territory's case is a 404, as is a case the
agent's fund is not involved in). Auditors read only: recording is a 403.
Every view, export and follow-up goes to the audit sink (user, purpose, case).

Sessions are server-side (:mod:`services.casebook.sessions`): the cookie (HttpOnly,
SameSite=Strict, Secure unless bound to loopback) holds a random token; logout and an idle
timeout end the session for real, a sign-in always opens a new one. Sign-ins are throttled
per account and per client address (growing delays, then a temporary lock) and every
attempt is logged for the auditors (``/audit/connexions``). Every form carries the
session's CSRF token back; the follow-up form also carries a one-time token (a double
submit records one follow-up); messages after a redirect are kept server-side. Bad input is a
4xx with a French reason, never a 5xx. The OpenAPI description is at /openapi.json for
signed-in auditors only; there is no /docs nor /redoc (no asset from elsewhere).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Protocol

import sqlalchemy as sa
from fastapi import BackgroundTasks, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.casebook import store, web_meeting
from services.casebook.audit import AuditSink
from services.casebook.auth import Authenticator, FileAuthenticator, User
from services.casebook.config import session_secret, users_path
from services.casebook.followups import flush_outbox, record_followup
from services.casebook.meeting import followup_actions
from services.casebook.model import CASE_NUMBER, Month, Situation
from services.casebook.oidc import Attempt, OidcClient, SignInRefused
from services.casebook.records import meeting_context
from services.casebook.render import MEDIA_TYPES, environment, render, render_html
from services.casebook.sessions import OUTCOME_LABELS, Session, SessionStore, SignInGuard, same_token, sign_ins
from services.casebook.worklist import Labels, Worklist, case_view, load_worklist
from services.core.access import AccessEvent
from services.core.bounds import MONTH_SPAN
from services.errors import HelpExchangeError, InputError
from services.platform.runtime import paused_gc
from services.platform.settings import Settings

log = logging.getLogger("help_exchange.casebook.web")
COOKIE = "help_session"
LOGIN_COOKIE = "help_login"
LOGIN_FORM_MAX_AGE_S = 3600
OIDC_COOKIE = "help_oidc"
OIDC_ATTEMPT_MAX_AGE_S = 600


class HTTPError(StarletteHTTPException):
    """An HTTP error with a French reason for people."""


def _page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = environment().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code)


TITLES = {400: "Demande invalide", 401: "Connexion requise", 403: "Action non autorisée",
          404: "Page introuvable", 405: "Méthode non autorisée", 422: "Demande invalide",
          500: "Erreur interne"}


def is_loopback(host: str) -> bool:
    """Whether ``serve --host`` keeps the web view on this machine (no HTTPS needed there)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WebExtension(Protocol):
    """Pages another part mounts in the web view (the ledger's ``/audit``, wired by
    :mod:`services.app.bootstrap`): ``current`` gives the signed-in user (raises 401),
    ``page`` renders a template, ``record`` enters an access event in the audit sink."""

    def __call__(self, app: FastAPI, engine: sa.Engine, *, current: Callable[[Request], tuple[Any, str]],
                 page: Callable[..., Response], record: Callable[..., None]) -> None: ...


def create_app(settings: Settings, *, engine: sa.Engine, audit: AuditSink,
               authenticator: Authenticator | None = None, extensions: Sequence[WebExtension] = (),
               publish: bool = True, host: str = "127.0.0.1") -> FastAPI:
    """The web view over ``engine``; every view, export and follow-up goes to ``audit``.
    The app as served, with the ledger's pages, is :func:`services.app.bootstrap.web_app`."""
    auth: Authenticator = authenticator or FileAuthenticator(users_path(settings))
    sink = audit
    # Before sign-in, a signed cookie carries the login form's CSRF token only; after it, the
    # cookie is the random token of a server-side session (services.casebook.sessions).
    signer = URLSafeTimedSerializer(session_secret(settings), salt="help-casebook-login")
    sessions = SessionStore(engine, settings)
    guard = SignInGuard(engine, settings)
    oidc = OidcClient(settings) if settings.casebook_oidc_issuer else None
    oidc_signer = URLSafeTimedSerializer(session_secret(settings), salt="help-casebook-oidc")
    taxonomy = settings.taxonomy
    labels = Labels.for_rules(taxonomy, settings.rules)

    # Behind anything but loopback, cookies go over HTTPS only and browsers are told to keep to
    # HTTPS (HSTS); HELP_CASEBOOK_SECURE_COOKIES decides when it is set.
    secure = settings.casebook_secure_cookies
    if secure is None:
        secure = not is_loopback(host)
    # No /docs nor /redoc (they load Swagger from a CDN); /openapi.json is for signed-in auditors.
    app = FastAPI(title="HELP — revue de dossiers mensuelle",
                  description="Vue web de la revue de dossiers (casebook). Pages HTML en français.",
                  version="1.0", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.authenticator = auth
    app.state.engine = engine

    # ------------------------------------------------------------------ session helpers
    def login_csrf(request: Request) -> str:
        raw = request.cookies.get(LOGIN_COOKIE)
        if not raw or len(raw) > 512:
            return ""
        try:
            data = signer.loads(raw, max_age=LOGIN_FORM_MAX_AGE_S)
        except BadSignature:
            return ""
        return str(data.get("c", "")) if isinstance(data, dict) else ""

    def set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", secure=secure, path="/")

    def set_login_cookie(response: Response, csrf: str) -> None:
        set_cookie(response, LOGIN_COOKIE, signer.dumps({"c": csrf}), LOGIN_FORM_MAX_AGE_S)

    def current_session(request: Request) -> tuple[User, Session]:
        live = sessions.find(request.cookies.get(COOKIE))
        user = (live.user or auth.user(live.user_id)) if live is not None else None
        if user is None or live is None:
            raise HTTPError(401, "Vous devez vous connecter pour accéder à cette page.")
        return user, live

    def current(request: Request) -> tuple[User, str]:
        user, live = current_session(request)
        return user, live.csrf

    def check_csrf(expected: str, given: str) -> None:
        if not same_token(expected, given):
            raise HTTPError(403, "Jeton de sécurité du formulaire invalide ou expiré : rechargez la page.")

    def ctx(user: User | None, csrf: str, **extra: Any) -> dict[str, Any]:
        return {"user": user, "csrf_token": csrf, "oidc_label": settings.casebook_oidc_label if oidc else None,
                **extra}

    def audit_event(user: User, action: str, **kw: Any) -> None:
        sink.record(AccessEvent(user_id=user.user_id, role=user.role, fund=user.fund,
                                action=action, **kw))  # type: ignore[arg-type]

    def visible_case(user: User, case_number: str) -> Situation:
        if not CASE_NUMBER.fullmatch(case_number):
            raise HTTPError(400, "Numéro de dossier invalide : format attendu département-année-mois-numéro, "
                                 "par exemple 35-2026-11-0042.")
        with engine.connect() as conn:
            sit = store.situation_by_case(conn, case_number)
        if sit is None or sit.territory != user.territory or (
                user.view_fund is not None and user.view_fund not in sit.funds):
            raise HTTPError(404, f"Aucun dossier ne porte le numéro « {case_number} » dans votre périmètre.")
        return sit

    def projection_for(user: User, vue: str | None) -> bool:
        """The shared screen's view: asked by the secretary, always the auditor's (the
        consolidated sheet is the secretary's); agents read their fund's view."""
        return user.view_fund is None and (vue == "projection" or user.role == "auditeur")

    def meeting_worklist(user: User, m: Month, vue: str | None) -> Worklist:
        """The month's worklist as ``user`` may read it, with what changed since the previous
        meeting and the participants of the month's meeting (for the minutes)."""
        held, previous = meeting_context(engine, user.territory, m)
        wl = load_worklist(engine, taxonomy, month=m, territory=user.territory, fund=user.view_fund,
                           close_after_months=settings.casebook_close_after_months, labels=labels,
                           projection=projection_for(user, vue), since=previous.held_at if previous else None)
        return dataclasses.replace(wl, participants=held.participants) if held else wl

    def month_of(text: str | None) -> Month:
        if not text:
            now = dt.datetime.now(dt.UTC)
            return Month(now.year, now.month)
        try:
            return Month.parse(text)
        except InputError as exc:
            raise HTTPError(400, f"Mois invalide : utilisez le format AAAA-MM, de {MONTH_SPAN}, "
                                 "par exemple 2026-11.") from exc

    # ------------------------------------------------------------------ error pages
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 401 and request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        reason = exc.detail if isinstance(exc, HTTPError) else TITLES.get(exc.status_code, "Erreur")
        if exc.status_code == 404 and not isinstance(exc, HTTPError):
            reason = "Cette page n'existe pas."
        if exc.status_code == 405:
            reason = "Cette méthode n'est pas acceptée pour cette adresse."
        return _page("error.html", exc.status_code, user=None, csrf_token="", status=exc.status_code,
                     title=TITLES.get(exc.status_code, "Erreur"), reason=reason)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        fields = sorted({str(e.get("loc", ["", "?"])[-1]) for e in exc.errors()})
        return _page("error.html", 400, user=None, csrf_token="", status=400, title=TITLES[400],
                     reason="Champ manquant ou invalide : " + ", ".join(fields) + ".")

    @app.exception_handler(HelpExchangeError)
    async def domain_error(request: Request, exc: HelpExchangeError) -> Response:
        return _page("error.html", 400, user=None, csrf_token="", status=400, title=TITLES[400],
                     reason=exc.one_line())

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        if secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        return response

    # ------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/worklist", status_code=303)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> Response:
        user, _ = current(request)
        if user.role != "auditeur":
            raise HTTPError(404, "Cette page n'existe pas.")
        return JSONResponse(app.openapi())

    @app.get("/login", response_class=HTMLResponse, summary="Page de connexion")
    def login_form(request: Request) -> Response:
        csrf = login_csrf(request) or secrets.token_urlsafe(24)
        response = _page("login.html", **ctx(None, csrf))
        set_login_cookie(response, csrf)
        return response

    @app.post("/login", response_class=HTMLResponse, summary="Connexion")
    def login(request: Request, user_id: Annotated[str, Form(max_length=64)],
              password: Annotated[str, Form(max_length=256)],
              csrf_token: Annotated[str, Form(max_length=128)] = "") -> Response:
        check_csrf(login_csrf(request), csrf_token)
        address = request.client.host if request.client else "?"
        csrf = secrets.token_urlsafe(24)
        refusal = guard.begin(user_id, address)
        if refusal is not None:
            page = _page("login.html", 429, **ctx(None, csrf, error=refusal.message, user_id=user_id))
            page.headers["Retry-After"] = str(refusal.retry_after_s)
            set_login_cookie(page, csrf)
            return page
        user = auth.authenticate(user_id, password)
        if user is None:
            guard.failed(user_id, address)
            page = _page("login.html", 401, **ctx(None, csrf, error="Identifiant ou mot de passe incorrect.",
                                                  user_id=user_id))
            set_login_cookie(page, csrf)
            return page
        guard.succeeded(user.user_id, address)
        token, _ = start_session(request, user, from_claims=False)
        return hand_session(RedirectResponse("/worklist", status_code=303), token)

    def start_session(request: Request, user: User, *, from_claims: bool) -> tuple[str, Session]:
        previous = sessions.find(request.cookies.get(COOKIE))
        if previous is not None:
            sessions.close(previous)
        return sessions.open(user.user_id, user if from_claims else None)  # always a new token

    def hand_session(response: Response, token: str) -> Response:
        set_cookie(response, COOKIE, token, settings.casebook_session_max_age_s)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    @app.get("/login/oidc", include_in_schema=False)
    def oidc_start() -> Response:
        if oidc is None:
            raise HTTPError(404, "Cette page n'existe pas.")
        attempt = Attempt()
        response = RedirectResponse(oidc.authorization_url(attempt), status_code=303)
        # Lax, not Strict: the provider sends the browser back with a cross-site GET
        response.set_cookie(OIDC_COOKIE, oidc_signer.dumps({"s": attempt.state, "n": attempt.nonce,
                                                            "v": attempt.verifier}),
                            max_age=OIDC_ATTEMPT_MAX_AGE_S, httponly=True, samesite="lax", secure=secure,
                            path="/login/oidc")
        return response

    @app.get("/login/oidc/callback", include_in_schema=False)
    def oidc_callback(request: Request, code: Annotated[str | None, Query(max_length=2048)] = None,
                      state: Annotated[str | None, Query(max_length=256)] = None,
                      error: Annotated[str | None, Query(max_length=256)] = None) -> Response:
        if oidc is None:
            raise HTTPError(404, "Cette page n'existe pas.")
        address = request.client.host if request.client else "?"

        def refuse(reason: str, status: int = 400) -> Response:
            guard.failed("oidc", address)
            csrf = secrets.token_urlsafe(24)
            page = _page("login.html", status, **ctx(None, csrf, error=reason))
            set_login_cookie(page, csrf)
            page.delete_cookie(OIDC_COOKIE, path="/login/oidc")
            return page

        raw = request.cookies.get(OIDC_COOKIE, "")
        try:
            kept = oidc_signer.loads(raw, max_age=OIDC_ATTEMPT_MAX_AGE_S) if 0 < len(raw) < 2048 else None
        except BadSignature:
            kept = None
        if not isinstance(kept, dict):
            return refuse("Connexion expirée ou déjà terminée : recommencez.")
        if error:
            return refuse("Le fournisseur d'identité n'a pas confirmé votre identité : recommencez.", 401)
        if not code or not same_token(str(kept.get("s", "")), state or ""):
            return refuse("Retour de connexion invalide (state) : recommencez.")
        attempt = Attempt(state=str(kept["s"]), nonce=str(kept["n"]), verifier=str(kept["v"]))
        try:
            claims = oidc.claims(oidc.exchange(code, attempt), attempt.nonce)
            user = oidc.user(claims)
        except SignInRefused as exc:
            return refuse(f"Connexion refusée : {exc.one_line()}.", 401)
        guard.succeeded(user.user_id, address)
        # A page of ours, not a redirect, leads on: the session cookie is SameSite=Strict and
        # a browser does not send it at the end of a redirect chain that started elsewhere.
        token, live = start_session(request, user, from_claims=True)
        page = hand_session(_page("signed_in.html", **ctx(user, live.csrf)), token)
        page.delete_cookie(OIDC_COOKIE, path="/login/oidc")
        return page

    @app.post("/logout", summary="Déconnexion")
    def logout(request: Request, csrf_token: Annotated[str, Form(max_length=128)] = "") -> Response:
        user, live = current_session(request)
        check_csrf(live.csrf, csrf_token)
        sessions.close(live)  # the cookie is worth nothing from now on, wherever a copy is
        guard.signed_out(user.user_id, request.client.host if request.client else "?")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/audit/connexions", response_class=HTMLResponse, summary="Journal des connexions (auditeurs)")
    def sign_in_log(request: Request, user_id: Annotated[str | None, Query(max_length=64)] = None) -> Response:
        user, csrf = current(request)
        if user.role != "auditeur":
            raise HTTPError(404, "Cette page n'existe pas.")
        rows = list(sign_ins(engine, user_id=user_id or None, limit=500))
        return _page("signins.html", **ctx(user, csrf, rows=rows, labels=OUTCOME_LABELS, user_filter=user_id or "",
                                             nav="connexions"))

    @app.get("/worklist", response_class=HTMLResponse, summary="Liste du mois")
    def worklist_page(request: Request, month: Annotated[str | None, Query(max_length=16)] = None,
                      vue: Annotated[str | None, Query(pattern="^(projection|consolidee)$")] = None) -> Response:
        user, csrf = current(request)
        m = month_of(month)
        with paused_gc():  # many small acyclic objects: services.platform.runtime
            wl = meeting_worklist(user, m, vue)
        audit_event(user, "consultation_liste", detail=f"{m} : {len(wl.cases)} dossiers ({wl.view})",
                    cases=tuple(c.case_number for c in wl.cases))
        with paused_gc():
            return HTMLResponse(render_html(wl, web=True, user=user, csrf_token=csrf))

    @app.get("/worklist/export", summary="Export de la liste du mois (csv, pdf, json, html)")
    def export(request: Request, month: Annotated[str | None, Query(max_length=16)] = None,
               format: Annotated[str, Query(pattern="^(html|csv|pdf|json)$")] = "csv",
               vue: Annotated[str | None, Query(pattern="^(projection|consolidee)$")] = None) -> Response:
        user, _ = current(request)
        m = month_of(month)
        with paused_gc():
            wl = meeting_worklist(user, m, vue)
            data = render(wl, format)
        audit_event(user, "export", detail=f"{format} {m} : {len(wl.cases)} dossiers ({wl.view})",
                    cases=tuple(c.case_number for c in wl.cases))
        name = f"revue-{user.territory}-{m}{'-' + user.view_fund if user.view_fund else ''}.{format}"
        return Response(data, media_type=MEDIA_TYPES[format],
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/cases/{case_number}", response_class=HTMLResponse, summary="Page d'un dossier")
    def case_page(request: Request, case_number: str) -> Response:
        user, live = current_session(request)
        csrf = live.csrf
        sit = visible_case(user, case_number)
        message = sessions.pop_flash(live)  # kept server-side: no URL can make one up
        with engine.connect() as conn:
            fus = store.followups_of(conn, sit.situation_id)
        view = case_view(labels, sit, fus, reason=None, fund=user.view_fund,
                         as_of=dt.datetime.now(dt.UTC), close_after_months=settings.casebook_close_after_months)
        audit_event(user, "consultation_dossier", case_number=sit.case_number, situation_id=sit.situation_id,
                    pseudonym=sit.pseudonym)
        return _page("case.html", **ctx(user, csrf, c=view, territory=sit.territory, can_record=user.can_record,
                                        message=message))

    def form_funds(user: User, sit: Situation) -> list[dict[str, Any]]:
        codes = [f for f in sit.funds if user.role != "agent" or f == user.fund]
        return [{"code": f, "label": labels.fund(f).label} for f in codes]

    def outcomes() -> list[dict[str, str]]:
        return [{"code": o.code.value, "label": o.libelle} for o in taxonomy.issues]

    def followup_page(user: User, live: Session, sit: Situation, fund: str | None, status_code: int = 200,
                      **extra: Any) -> Response:
        """The form offers the chosen fund's actions only, its suggested ones first; it carries
        a one-time token, so that a second submit of the same form records nothing."""
        funds = form_funds(user, sit)
        chosen = fund if any(f["code"] == fund for f in funds) else (funds[0]["code"] if len(funds) == 1 else None)
        view = case_view(labels, sit, [], reason=None, fund=user.view_fund, as_of=dt.datetime.now(dt.UTC),
                         close_after_months=settings.casebook_close_after_months)
        actions = followup_actions(labels, view, chosen) if chosen else []
        return _page("followup.html", status_code, **ctx(
            user, live.csrf, c=view, funds=funds, outcomes=outcomes(), chosen=chosen, actions=actions,
            chosen_label=labels.fund(chosen).label if chosen else "",
            form_token=sessions.issue_form_token(live, sit.case_number), **extra))

    @app.get("/cases/{case_number}/followup", response_class=HTMLResponse, summary="Formulaire de suite")
    def followup_form(request: Request, case_number: str,
                      fund: Annotated[str | None, Query(max_length=16)] = None) -> Response:
        user, live = current_session(request)
        sit = visible_case(user, case_number)
        if not user.can_record:
            raise HTTPError(403, "Votre rôle (auditeur) ne permet pas d'enregistrer une suite.")
        return followup_page(user, live, sit, fund or user.fund)

    @app.post("/cases/{case_number}/followup", summary="Enregistrer une suite")
    def followup_post(request: Request, background: BackgroundTasks, case_number: str,
                      fund: Annotated[str, Form(max_length=16)], action: Annotated[str, Form(max_length=64)],
                      outcome: Annotated[str, Form(max_length=32)],
                      csrf_token: Annotated[str, Form(max_length=128)] = "",
                      form_token: Annotated[str, Form(max_length=128)] = "") -> Response:
        user, live = current_session(request)
        csrf = live.csrf
        check_csrf(csrf, csrf_token)
        sit = visible_case(user, case_number)
        if not user.can_record:
            raise HTTPError(403, "Votre rôle (auditeur) ne permet pas d'enregistrer une suite.")
        if user.role == "agent" and fund != user.fund:
            raise HTTPError(403, "Un agent n'enregistre que les suites de son propre organisme.")
        if not sessions.use_form_token(live, sit.case_number, form_token):
            sessions.set_flash(live, "Ce formulaire a déjà été envoyé (ou a expiré) : rien de plus n'a été "
                                     "enregistré. Pour une autre suite, rouvrez le formulaire.")
            return RedirectResponse(f"/cases/{case_number}", status_code=303)
        try:
            event = record_followup(engine, taxonomy, case_number=case_number, fund=fund, action=action,
                                    outcome=outcome, user=user.user_id, territory=user.territory)
        except InputError as exc:
            return followup_page(user, live, sit, fund, 400, error=exc.one_line())
        audit_event(user, "suite_enregistree", case_number=case_number, situation_id=event.situation_id,
                    pseudonym=sit.pseudonym, detail=f"{fund} {action} {outcome}")
        if publish and settings.bootstrap_servers:
            background.add_task(_publish_quietly, settings, engine, settings.bootstrap_servers)
        sessions.set_flash(live, "Suite enregistrée.")
        return RedirectResponse(f"/cases/{case_number}", status_code=303)

    web_meeting.register(app, engine=engine, settings=settings, labels=labels, current=current,
                         current_session=current_session, sessions=sessions, check_csrf=check_csrf,
                         page=_page, month_of=month_of, http_error=HTTPError)

    for extension in extensions:
        extension(app, engine, current=current, page=_page, record=audit_event)
    return app


async def _publish_quietly(settings: Settings, engine: sa.Engine, bootstrap: str) -> None:
    """Publish the outbox after the response; on failure the running sink publishes it later."""
    try:
        await asyncio.wait_for(flush_outbox(settings, engine, bootstrap), timeout=10)
    except (HelpExchangeError, TimeoutError, OSError) as exc:
        log.warning("follow-up kept in the outbox: %s", exc)
