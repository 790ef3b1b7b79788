"""``help-exchange audit …``: the auditor's commands.

``head`` signs and prints the current tree head; ``verify`` recomputes everything and exits
1 naming the first bad entry; ``prove`` and ``consistency`` write proof files that
``check-proof`` checks offline (no database, only the ledger public key); ``query`` answers
"who saw this case, when and why" in a French table; ``export`` writes a month as JSON
Lines or CSV for a spreadsheet; ``reindex`` rebuilds the auditor's index from the entries.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from services.errors import InputError
from services.ledger.entries import Action
from services.ledger.store import Ledger
from services.platform.settings import Settings, load_settings

_ID = r"^[0-9a-f]{32}$"


def _settings(ctx: click.Context) -> Settings:
    """The settings in ``ctx.obj`` (as services.platform.cli puts them), else from the
    environment. Not imported from the platform CLI, which imports this module."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings()
    settings: Settings = obj["settings"]
    return settings


def _ledger(ctx: click.Context, *, sign: bool) -> Ledger:
    return Ledger.open(_settings(ctx), sign=sign)


def _write_json(document: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def register(cli: click.Group) -> None:
    cli.add_command(audit)
    cli.add_command(purge)


@click.group()
def audit() -> None:
    """The tamper-evident ledger (RFC 9162 Merkle log): heads, proofs, verification, queries."""


@audit.command("head")
@click.pass_context
def audit_head(ctx: click.Context) -> None:
    """Sign the current tree head, store it and print it as JSON."""
    head = _ledger(ctx, sign=True).sign_head()
    _write_json(head.document(), None)


@audit.command("verify")
@click.option("--deep", is_flag=True, help="Also re-validate every entry against the model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def audit_verify(ctx: click.Context, deep: bool, as_json: bool) -> None:
    """Recompute every leaf hash, the root, every head signature and every head's
    consistency with today's tree. Exit 1 naming the first bad entry on any alteration."""
    from services.ledger.heads import known_public_keys
    from services.ledger.verify import verify_ledger

    settings = _settings(ctx)
    ledger = _ledger(ctx, sign=False)
    report = verify_ledger(ledger.engine, known_public_keys(settings.key_dir), deep=deep)
    if as_json:
        _write_json(report.summary(), None)
    elif report.ok:
        click.echo(f"ok: {report.tree_size} entries, root {report.summary()['root_hash']}, "
                   f"{report.heads_checked} signed heads verified")
    if not report.ok:
        bad = report.first_bad_entry
        if bad is not None:
            click.secho(f"TAMPERED: first bad entry: {bad}", fg="red", err=True)
        else:
            click.secho(f"TAMPERED: {report.problems[0]}", fg="red", err=True)
        for problem in report.problems:
            click.echo(f"  - {problem}", err=True)
        if report.more_problems:
            click.echo(f"  … and {report.more_problems} more", err=True)
        ctx.exit(1)


@audit.command("prove")
@click.option("--entry", "entry_id", required=True, help="The entry id (32 hex digits).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.pass_context
def audit_prove(ctx: click.Context, entry_id: str, out: Path) -> None:
    """Write an inclusion proof of one entry, with a signed head, to FILE."""
    from services.ledger.proofs import inclusion_document

    ledger = _ledger(ctx, sign=True)
    head = ledger.latest_head()
    if head is None or head.tree_size != ledger.size():
        head = ledger.sign_head()
    stored, size, path = ledger.inclusion(entry_id, head.tree_size)
    _write_json(inclusion_document(stored.data, stored.index, size, path, head), out)
    click.echo(f"inclusion proof of entry {entry_id} (n° {stored.index} of {size}) "
               f"written to {out}")


@audit.command("check-proof")
@click.argument("proof_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--public-key", type=click.Path(path_type=Path, dir_okay=False),
              help="The ledger public key (<key_id>.pub.json or PEM). Default: the key of "
                   "the head, from HELP_KEY_DIR/ledger/.")
@click.pass_context
def audit_check_proof(ctx: click.Context, proof_file: Path, public_key: Path | None) -> None:
    """Check an inclusion or consistency proof offline (no database needed)."""
    from services.ledger.heads import known_public_keys, load_public_key_file
    from services.ledger.proofs import check_proof, load_proof

    document = load_proof(proof_file)
    if public_key is not None:
        key_id, key = load_public_key_file(public_key)
    else:
        head_key = _head_key_id(document)
        keys = known_public_keys(_settings(ctx).key_dir)
        if head_key not in keys:
            raise InputError(f"no ledger public key {head_key} in HELP_KEY_DIR/ledger/",
                             "give it with --public-key FILE")
        key_id, key = head_key, keys[head_key]
    result = check_proof(document, key, key_id)
    for line in result.lines:
        click.echo(line)
    if not result.ok:
        click.secho("proof REJECTED", fg="red", err=True)
        ctx.exit(1)
    click.echo("proof verified")


def _head_key_id(document: dict[str, Any]) -> str | None:
    heads = [document.get("signed_head")]
    for side in ("first", "second"):
        part = document.get(side)
        if isinstance(part, dict):
            heads.append(part.get("signed_head"))
    for head in heads:
        if isinstance(head, dict) and isinstance(head.get("signature"), dict):
            return str(head["signature"].get("key_id"))
    return None


@audit.command("consistency")
@click.option("--from", "first", type=click.IntRange(min=0), required=True)
@click.option("--to", "second", type=click.IntRange(min=0), required=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False))
@click.pass_context
def audit_consistency(ctx: click.Context, first: int, second: int, out: Path | None) -> None:
    """A consistency proof (RFC 9162) that the tree of N entries is a prefix of the tree of M."""
    from services.ledger.merkle import verify_consistency
    from services.ledger.proofs import consistency_document

    ledger = _ledger(ctx, sign=False)
    first_root, second_root, proof = ledger.consistency(first, second)
    heads = {h.tree_size: h for h in ledger.heads() if h.tree_size in (first, second)}
    document = consistency_document(first, second, first_root, second_root, proof,
                                    heads.get(first), heads.get(second))
    _write_json(document, out)
    if not verify_consistency(first, second, first_root, second_root, proof):  # pragma: no cover
        raise InputError("the ledger produced a consistency proof that does not verify",
                         "run `help-exchange audit verify`")
    if out is not None:
        click.echo(f"consistency proof {first} → {second} ({len(proof)} hashes) written to {out}")


@audit.command("query")
@click.option("--case", "case_id", help="A situation id (32 hex digits).")
@click.option("--pseudonym", help="A pseudonym value (base64url, 43 characters).")
@click.option("--actor", help="A fund, body, user or service id.")
@click.option("--action", type=click.Choice([a.value for a in Action]))
@click.option("--period", help="A month, YYYY-MM.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.pass_context
def audit_query(ctx: click.Context, case_id: str | None, pseudonym: str | None, actor: str | None,
                action: str | None, period: str | None, limit: int) -> None:
    """Who saw this case (or this person, or did this) — when, and why. Filters combine."""
    from rich.console import Console
    from rich.table import Table

    from services.ledger.export import DISPLAY_HEADERS, display_row, flat_row, period_range

    if not any((case_id, pseudonym, actor, action, period)):
        raise InputError("audit query needs a filter",
                         "give --case, --pseudonym, --actor, --action or --period")
    ledger = _ledger(ctx, sign=False)
    rows = [flat_row(i, data) for i, data in ledger.query(
        case_id=case_id, pseudonym=pseudonym, actor=actor, action=action,
        period=period_range(period) if period else None, limit=limit)]
    table = Table(title="Journal d'audit — qui a consulté, quand et pourquoi",
                  caption=f"{len(rows)} entrée(s)")
    for header in DISPLAY_HEADERS:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*display_row(row))
    Console(file=sys.stdout, width=200).print(table)


@audit.command("export")
@click.option("--period", required=True, help="A month, YYYY-MM.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.pass_context
def audit_export(ctx: click.Context, period: str, fmt: str, out: Path) -> None:
    """Export one month of the ledger (JSON Lines, or CSV with ';' and a BOM for spreadsheets)."""
    from services.ledger.export import export, flat_row, period_range

    ledger = _ledger(ctx, sign=False)
    rows = (flat_row(i, data) for i, data in ledger.query(period=period_range(period)))
    count = export(rows, out, fmt)
    click.echo(f"{count} entries of {period} written to {out}")


@audit.command("reindex")
@click.pass_context
def audit_reindex(ctx: click.Context) -> None:
    """Rebuild the auditor's index (what `audit query` looks through) from the entries, when
    `audit verify` reports it damaged. The entries, their hashes and the heads are untouched."""
    count = _ledger(ctx, sign=False).rebuild_index()
    click.echo(f"Index de l'auditeur reconstruit : {count} entrée(s).")


@audit.command("sink")
@click.option("--until-idle", type=click.FloatRange(min=0.5), default=None,
              help="Stop once no record came for this many seconds (caught up); default: run "
                   "until Ctrl-C.")
# default: AuditSink.batch_max, written out (the sink is imported only when it runs).
@click.option("--batch-max", type=click.IntRange(100, 100_000), default=10_000, show_default=True,
              help="Records per transaction at most.")
@click.pass_context
def audit_sink(ctx: click.Context, until_idle: float | None, batch_max: int) -> None:
    """Enter what happens on the topics in the ledger: receipts (signals accepted or rejected),
    situation events and tombstones, follow-ups, consents and objections.

    Idempotent (entry ids from the messages' ids; offsets stored with the entries): a
    restart or a replay appends nothing twice. Signs a tree head each time it catches up.
    """
    import asyncio

    from services.ledger.sink import AuditSink
    from services.platform.broker import resolve_bootstrap

    settings = _settings(ctx)
    sink = AuditSink(settings, _ledger(ctx, sign=True), resolve_bootstrap(settings),
                     batch_max=batch_max)
    try:
        totals = asyncio.run(sink.run(until_idle=until_idle))
    except KeyboardInterrupt:
        totals = sink.totals
    click.echo(f"audit sink: {totals.records} records read, {totals.appended} entries appended, "
               f"{totals.already_present} already present, {totals.skipped} unreadable; "
               f"ledger size {sink.ledger.size()}")


@click.command("purge")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--as-of", "as_of", default=None,
              help="Apply the periods as on this day (AAAA-MM-JJ, UTC midnight); default now.")
@click.pass_context
def purge(ctx: click.Context, dry_run: bool, as_of: str | None) -> None:
    """Apply the retention periods (HELP_RETENTION_*: 6 months for signals never correlated,
    12 after the last activity for situations, 18 after closing for closed cases).

    Sends the correlator an erasure command per person concerned (it forgets their signals
    and situation and publishes the tombstone on help.situations.v1: every consumer forgets
    it), deletes the situations and their follow-ups from the casebook and enters the run,
    with its counts and the time it ran, in the ledger. --as-of only moves the cut-off.
    """
    import asyncio
    import datetime as dt

    from services.casebook.db import open_store_engine
    from services.ledger.purge import (
        apply_purge,
        correlation_window_days,
        plan_purge,
        send_erasures,
    )

    settings = _settings(ctx)
    if as_of is None:
        moment = dt.datetime.now(dt.UTC)
    else:
        try:
            moment = dt.datetime.combine(dt.date.fromisoformat(as_of), dt.time(), dt.UTC)
        except ValueError:
            raise InputError(f"--as-of {as_of!r} is not a date", "give AAAA-MM-JJ") from None
    engine = open_store_engine(settings.database_url)
    try:
        plan = plan_purge(engine, settings, as_of=moment,
                          rules_window_days=correlation_window_days(settings))
        if not dry_run and plan.situation_ids:
            from services.platform.broker import resolve_bootstrap

            asyncio.run(send_erasures(settings, resolve_bootstrap(settings), plan))
        if not dry_run:
            from services.ledger.store import ensure_tables

            ensure_tables(engine)
            ledger = Ledger(engine)
            apply_purge(engine, ledger, plan)
    finally:
        engine.dispose()
    for line in plan.lines(dry_run=dry_run):
        click.echo(line)
