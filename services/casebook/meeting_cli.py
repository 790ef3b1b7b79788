"""Meeting commands: ``meeting record|list`` and ``stats``. Registered by
:mod:`services.app.cli` through :func:`register`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from services.errors import InputError


def register(cli: click.Group) -> None:
    cli.add_command(meeting)
    cli.add_command(stats)


@click.group()
def meeting() -> None:
    """The monthly meetings: recorded (date, participants by fund), listed."""


def _participants(values: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for value in values:
        fund, sep, user = value.partition(":")
        if not sep or not fund or not user:
            raise InputError(f"participant invalide : {value!r}", "format attendu organisme:identifiant, "
                                                                  "par exemple caf:agent.caf35")
        out.setdefault(fund, []).append(user)
    return out


@meeting.command("record")
@click.option("--territory", required=True, help="Département code (e.g. 35).")
@click.option("--date", "held_on", required=True, help="Day of the meeting, AAAA-MM-JJ.")
@click.option("--participant", "participants", multiple=True, metavar="FUND:USER",
              help="A participant, e.g. caf:agent.caf35 (user ids, never names); repeat the option.")
@click.option("--user", default="secretaire.cli", show_default=True, help="Who records it.")
@click.pass_context
def meeting_record(ctx: click.Context, territory: str, held_on: str, participants: tuple[str, ...],
                   user: str) -> None:
    """Record a meeting held: the next worklist counts what changed since it."""
    from services.casebook.cli import _ctx_settings
    from services.casebook.records import record_meeting
    from services.platform.db import open_engine

    try:
        day = dt.date.fromisoformat(held_on) if len(held_on) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise InputError(f"date invalide : {held_on!r}", "format attendu AAAA-MM-JJ, par exemple 2026-11-25")
    settings = _ctx_settings(ctx)
    engine = open_engine(settings.database_url)
    try:
        done = record_meeting(engine, territory=territory, held_at=dt.datetime.combine(day, dt.time(9), dt.UTC),
                              participants=_participants(participants), recorded_by=user)
    finally:
        engine.dispose()
    count = sum(len(v) for v in done.participants.values())
    click.echo(f"réunion du {done.held_on} enregistrée (territoire {territory}, {count} participant(s))")


@meeting.command("list")
@click.option("--territory", required=True, help="Département code (e.g. 35).")
@click.pass_context
def meeting_list(ctx: click.Context, territory: str) -> None:
    """The latest meetings of a territory."""
    from services.casebook.cli import _ctx_settings
    from services.casebook.model import check_territory
    from services.casebook.records import meetings_before
    from services.platform.db import open_engine

    check_territory(territory)
    settings = _ctx_settings(ctx)
    engine = open_engine(settings.database_url)
    try:
        found = meetings_before(engine, territory, dt.datetime.now(dt.UTC) + dt.timedelta(days=2), limit=24)
    finally:
        engine.dispose()
    for m in found:
        who = "; ".join(f"{fund}: {', '.join(ids)}" for fund, ids in m.participants.items())
        click.echo(f"{m.held_on}  {who or '—'}  (par {m.recorded_by})")
    if not found:
        click.echo(f"aucune réunion enregistrée pour le territoire {territory}")


@click.command("stats")
@click.option("--month", required=True, help="An ended month, AAAA-MM (e.g. 2026-11).")
@click.option("--territory", required=True, help="Département code (e.g. 35).")
@click.option("--format", "fmt", type=click.Choice(["csv", "pdf"]), default="csv", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def stats(ctx: click.Context, month: str, territory: str, fmt: str, out: Path) -> None:
    """Write the month's statistics under statistical secrecy (and the month before).

    A month is published once ended, then frozen: the same figures every time after."""
    from services.casebook.cli import _ctx_settings
    from services.casebook.model import Month, check_territory
    from services.casebook.records import published_release
    from services.casebook.render import write_atomic
    from services.casebook.stats import render_csv, render_pdf
    from services.casebook.worklist import rule_titles
    from services.platform.db import open_engine

    m = Month.parse(month)
    check_territory(territory)
    now = dt.datetime.now(dt.UTC)
    if now < m.end:
        raise InputError(f"le mois {m} n'est pas clos", "les statistiques d'un mois sont publiées à partir du "
                                                        "1er du mois suivant")
    settings = _ctx_settings(ctx)
    engine = open_engine(settings.database_url)
    try:
        titles = rule_titles(settings.rules)
        releases = [r for r in (published_release(engine, settings.taxonomy, territory=territory, month=mm, now=now,
                                                  rule_titles=titles) for mm in (m, m.shift(-1))) if r is not None]
    finally:
        engine.dispose()
    write_atomic(out, render_csv(releases) if fmt == "csv" else render_pdf(releases))
    click.echo(f"{out}: statistiques {m} (et {m.shift(-1)}), territoire {territory} ({fmt})")
