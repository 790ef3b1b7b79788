"""Casebook commands: ``casebook sink|migrate|outbox``, ``worklist``, ``followup record``,
``users add``, ``serve``. Registered by :mod:`services.app.cli` through :func:`register`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from services.casebook.wiring import CasebookWiring
from services.errors import HelpExchangeError, InputError
from services.platform.cli import provided, settings_from
from services.platform.clitypes import OutputFile
from services.platform.settings import Settings


def _ctx_settings(ctx: click.Context) -> Settings:
    return settings_from(ctx)


def _wiring(ctx: click.Context) -> CasebookWiring:
    return provided(ctx, CasebookWiring)


def register(cli: click.Group) -> None:
    cli.add_command(casebook)
    cli.add_command(worklist)
    cli.add_command(followup)
    cli.add_command(users)
    cli.add_command(serve)


@click.group()
def casebook() -> None:
    """The casebook store: sink from Kafka into SQL, migrations, follow-up outbox."""


@casebook.command("migrate")
@click.pass_context
def casebook_migrate(ctx: click.Context) -> None:
    """Create or upgrade every table of HELP_DATABASE_URL (casebook, ledger, consumer
    offsets: one Alembic history, see docs/architecture.md)."""
    from services.platform.db import open_engine

    settings = _ctx_settings(ctx)
    open_engine(settings.database_url).dispose()
    click.echo(f"database schema up to date in {settings.database_url.split('@')[-1]}")


@casebook.command("sink")
@click.option("--group", default="help-casebook", show_default=True, help="Kafka consumer group.")
@click.option("--batch", default=2000, show_default=True, type=click.IntRange(1, 50_000),
              help="Records per database transaction.")
@click.pass_context
def casebook_sink(ctx: click.Context, group: str, batch: int) -> None:
    """Read situations, follow-ups and consents into the casebook until Ctrl-C."""
    from services.casebook.sink import CasebookSink
    from services.platform import metrics
    from services.platform.broker import resolve_bootstrap
    from services.platform.db import open_engine
    from services.platform.stopping import Deadline, stop_on_signals

    settings = _ctx_settings(ctx)
    engine = open_engine(settings.database_url)
    bootstrap = resolve_bootstrap(settings)
    sink = CasebookSink(settings, engine, bootstrap, group=group, batch_max=batch)
    metrics.serve(settings, "casebook sink")

    async def main() -> None:
        # SIGTERM or SIGINT: the batch in flight commits, then the sink stops (exit 0), within
        # HELP_DRAIN_TIMEOUT_S (services.platform.stopping).
        stop = asyncio.Event()
        stop_on_signals(stop, Deadline(settings.drain_timeout_s, "casebook sink"))
        click.echo(f"casebook sink reading from {bootstrap} (group {group}); Ctrl-C stops it", err=True)
        await sink.run(stop)

    try:
        asyncio.run(main())
    finally:
        engine.dispose()
    click.echo(f"{sink.records} records read; {sink.total.situations} situations and "
               f"{sink.total.followups} follow-ups written, {sink.total.erased} erased", err=True)


@casebook.command("outbox")
@click.pass_context
def casebook_outbox(ctx: click.Context) -> None:
    """Publish the follow-ups still waiting in the outbox."""
    from services.casebook.followups import flush_outbox
    from services.platform.broker import resolve_bootstrap
    from services.platform.db import open_engine

    settings = _ctx_settings(ctx)
    engine = open_engine(settings.database_url)
    try:
        sent = asyncio.run(flush_outbox(settings, engine, resolve_bootstrap(settings)))
    finally:
        engine.dispose()
    click.echo(f"{sent} follow-up(s) published")


@click.command("worklist")
@click.option("--month", required=True, help="Month under review, AAAA-MM (e.g. 2026-11).")
@click.option("--territory", required=True, help="Département code (e.g. 35).")
@click.option("--format", "fmt", type=click.Choice(["html", "csv", "pdf", "json"]), default="html",
              show_default=True)
@click.option("--out", required=True, type=OutputFile())
@click.option("--fund", default=None, help="Only what this fund may see (caf, cpam, urssaf, carsat, msa).")
@click.option("--user", default="cli", show_default=True, help="Who exports (for the access log).")
@click.pass_context
def worklist(ctx: click.Context, month: str, territory: str, fmt: str, out: Path, fund: str | None,
             user: str) -> None:
    """Write the month's worklist for the joint review (HTML, CSV, PDF or JSON)."""
    from services.casebook.model import Month, check_fund, check_territory
    from services.casebook.render import render, write_atomic
    from services.casebook.worklist import Labels, load_worklist
    from services.core.access import AccessEvent
    from services.platform.db import open_engine
    from services.platform.runtime import paused_gc

    m = Month.parse(month)
    check_territory(territory)
    fund_code = check_fund(fund).value if fund else None
    settings = _ctx_settings(ctx)
    engine = open_engine(settings.database_url)
    try:
        labels = Labels.for_rules(settings.taxonomy, settings.rules)
        with paused_gc():  # many small acyclic objects: services.platform.runtime
            wl = load_worklist(engine, settings.taxonomy, month=m, territory=territory, fund=fund_code,
                               close_after_months=settings.casebook_close_after_months, labels=labels)
            data = render(wl, fmt)
        _wiring(ctx).audit_sink(settings, engine).record(AccessEvent(
            user_id=user, role="cli", fund=fund_code, action="export",
            detail=f"{fmt} {m} territoire {territory} : {len(wl.cases)} dossiers",
            cases=tuple(c.case_number for c in wl.cases)))
        write_atomic(out, data)
    finally:
        engine.dispose()
    click.echo(f"{out}: {len(wl.cases)} dossier(s), {len(wl.reported)} suite(s) rapportée(s) ({fmt})")


@click.group("followup")
def followup() -> None:
    """Follow-ups ("suites données") of the funds."""


@followup.command("record")
@click.option("--case", "case_number", required=True, help="Case number, e.g. 35-2026-11-0042.")
@click.option("--fund", required=True)
@click.option("--action", required=True, help="One of the fund's suites (schemas/taxonomy.yaml).")
@click.option("--outcome", required=True,
              help="propose, accepte, refuse, accorde, non_eligible or sans_suite.")
@click.option("--user", required=True, help="Who records it (identifier, no name).")
@click.pass_context
def followup_record(ctx: click.Context, case_number: str, fund: str, action: str, outcome: str,
                    user: str) -> None:
    """Record a fund's follow-up and publish it on help.followups.v1."""
    from services.casebook.followups import flush_outbox, record_followup
    from services.core.access import AccessEvent
    from services.platform.broker import resolve_bootstrap
    from services.platform.db import open_engine

    settings = _ctx_settings(ctx)
    engine = open_engine(settings.database_url)
    try:
        event = record_followup(engine, settings.taxonomy, case_number=case_number, fund=fund, action=action,
                                outcome=outcome, user=user)
        _wiring(ctx).audit_sink(settings, engine).record(AccessEvent(
            user_id=user, role="cli", fund=fund, action="suite_enregistree", case_number=case_number,
            situation_id=event.situation_id, detail=f"{action} {outcome}"))
        click.echo(f"follow-up {event.event_id} recorded for {case_number} ({fund}: {action}, {outcome})")
        try:
            sent = asyncio.run(flush_outbox(settings, engine, resolve_bootstrap(settings)))
            click.echo(f"published on help.followups.v1 ({sent} message(s))")
        except HelpExchangeError as exc:
            click.echo(f"not published yet ({exc.what}); kept in the outbox: "
                       "`help-exchange casebook outbox` or the running sink publishes it", err=True)
    finally:
        engine.dispose()


@click.group("users")
def users() -> None:
    """Users of the web view (file of scrypt-hashed secrets)."""


@users.command("add")
@click.option("--id", "user_id", required=True)
@click.option("--role", required=True, type=click.Choice(["agent", "secretaire_seance", "auditeur"]))
@click.option("--territory", required=True)
@click.option("--fund", default=None, help="Required for an agent.")
@click.option("--password-stdin", "from_stdin", is_flag=True,
              help="Read the password from the first line of standard input (for scripts); "
                   "otherwise it is asked twice, hidden. Never on the command line.")
@click.pass_context
def users_add(ctx: click.Context, user_id: str, role: str, territory: str, fund: str | None,
              from_stdin: bool) -> None:
    """Add (or replace) a user of the web view. The password must be hard to guess (checked
    by a strength estimator, zxcvbn: a long passphrase of unrelated words does)."""
    from services.casebook.auth import UserFile
    from services.casebook.config import users_path

    settings = _ctx_settings(ctx)
    password = _read_password(from_stdin)
    path = users_path(settings)
    UserFile(path).add(user_id, role=role, territory=territory, fund=fund, secret=password)
    click.echo(f"user {user_id} ({role}) saved in {path}")


@users.command("sign-ins")
@click.option("--user", "user_id", default=None, help="Only this identifier's attempts.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.pass_context
def users_sign_ins(ctx: click.Context, user_id: str | None, limit: int) -> None:
    """Print the web view's sign-in log, newest first: when (UTC), identifier, client address,
    outcome (succes, echec, limite, verrouille, deconnexion)."""
    from services.casebook.sessions import sign_ins
    from services.platform.db import open_engine

    settings = _ctx_settings(ctx)
    engine = open_engine(settings.database_url)
    try:
        rows = list(sign_ins(engine, user_id=user_id, limit=limit))
    finally:
        engine.dispose()
    for row in rows:
        at = row["at"]
        when = at.strftime("%Y-%m-%d %H:%M:%S") if hasattr(at, "strftime") else str(at)
        click.echo(f"{when}  {row['user_id']:<32} {row['address']:<40} {row['outcome']}")
    click.echo(f"{len(rows)} tentative(s) de connexion", err=True)


def _read_password(from_stdin: bool) -> str:
    """The new password: the first line of stdin, or asked twice without echo."""
    import sys

    if from_stdin:
        line = sys.stdin.readline()
        if not line.strip():
            raise InputError("aucun mot de passe sur l'entrée standard",
                             "écrivez-le sur la première ligne, par exemple : printf '%s\\n' \"$MDP\" | "
                             "help-exchange users add ... --password-stdin")
        return line.rstrip("\r\n")
    try:
        password: str = click.prompt("Mot de passe", hide_input=True, confirmation_prompt="Confirmez-le",
                                     err=True)
    except click.Abort:
        raise InputError("aucun mot de passe saisi",
                         "saisissez-le à l'invite, ou donnez-le sur l'entrée standard avec --password-stdin"
                         ) from None
    return password


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.pass_context
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve the web view of the monthly review (French, server-rendered)."""
    import uvicorn

    from services.casebook.web import create_app
    from services.platform import metrics
    from services.platform.db import open_engine

    settings = _ctx_settings(ctx)
    wiring = _wiring(ctx)
    engine = open_engine(settings.database_url)
    app = create_app(settings, engine=engine, audit=wiring.audit_sink(settings, engine),
                     extensions=wiring.web_extensions, host=host)
    if not app.state.authenticator.has_users() and not settings.casebook_oidc_issuer:
        raise InputError("aucun utilisateur n'est défini pour la vue web",
                         "ajoutez-en un : help-exchange users add --id ... --role ... --territory ...")
    click.echo(f"casebook web view on http://{host}:{port}/ (Ctrl-C stops it)", err=True)
    metrics.serve(settings, "web")  # (the process's own metrics: CPU, memory, files)
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False, server_header=False)
