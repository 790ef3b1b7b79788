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
from services.ledger.cases import CaseDirectory
from services.ledger.entries import Action
from services.ledger.store import Ledger
from services.ledger.wiring import LedgerWiring
from services.platform.cli import provided, settings_from
from services.platform.clitypes import OutputFile
from services.platform.serving import serve_until_interrupted
from services.platform.settings import Settings
from services.platform.stopping import Deadline

_ID = r"^[0-9a-f]{32}$"


def _settings(ctx: click.Context) -> Settings:
    return settings_from(ctx)


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
    cli.add_command(witness)


@click.group()
def audit() -> None:
    """The tamper-evident ledger (RFC 9162 Merkle log): heads, proofs, verification, queries."""


@audit.command("head")
@click.pass_context
def audit_head(ctx: click.Context) -> None:
    """Sign the current tree head, store it and print it as JSON."""
    head = _ledger(ctx, sign=True).sign_head()
    _write_json(head.document(), None)


_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)
_DIR = click.Path(path_type=Path, file_okay=False, exists=True)


@audit.command("verify")
@click.option("--deep", is_flag=True, help="Also re-validate every entry against the model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--trusted", "trusted", type=_FILE, multiple=True,
              help="A checkpoint you kept from earlier (repeatable): the log must still be "
                   "consistent with it.")
@click.option("--kept-tiles", type=_DIR,
              help="A tile folder you exported earlier (`audit tiles`): names the rewritten "
                   "entry exactly.")
@click.option("--log-key", type=_FILE, multiple=True,
              help="The log's checkpoint key (.vkey). Default: HELP_KEY_DIR/ledger/*.vkey.")
@click.option("--witness", "witnesses", type=_FILE, multiple=True,
              help="A witness's cosignature key (.vkey, repeatable).")
@click.option("--quorum", type=click.IntRange(min=0, max=20), default=None,
              help="Cosignatures the newest checkpoint needs (default HELP_LEDGER_QUORUM "
                   "when witnesses are given).")
@click.pass_context
def audit_verify(ctx: click.Context, deep: bool, as_json: bool, trusted: tuple[Path, ...],
                 kept_tiles: Path | None, log_key: tuple[Path, ...],
                 witnesses: tuple[Path, ...], quorum: int | None) -> None:
    """Recompute every leaf hash, the root, every head and checkpoint signature and their
    consistency with today's tree, and with the checkpoints you kept (--trusted). Exit 1
    naming the first bad entry (or the smallest range) on any alteration; exit 3 when
    entries are under no signed checkpoint (how many, and since when)."""
    from services.ledger.heads import known_public_keys
    from services.ledger.verify import verify_ledger

    settings = _settings(ctx)
    pins = _pins(settings, trusted, kept_tiles, log_key, witnesses, quorum)
    ledger = _ledger(ctx, sign=False)
    report = verify_ledger(ledger.engine, known_public_keys(settings.key_dir), deep=deep,
                           pins=pins)
    quorum_short = (pins.quorum and report.tree_size
                    and (report.quorum_size or 0) < report.covered)
    if as_json:
        _write_json(report.summary(), None)
    elif report.ok:
        click.echo(f"{'ok' if not report.uncovered else 'checked'}: {report.tree_size} "
                   f"entries, root {report.summary()['root_hash']}, "
                   f"{report.heads_checked} signed heads verified, {report.checkpoints_checked}"
                   f" checkpoints, {report.trusted_checked} kept checkpoints")
    if report.ok and report.uncovered:
        click.secho(f"NOT COVERED: {report.uncovered} entries (n° {report.covered} on, since "
                    f"{report.uncovered_since}) are under no signed checkpoint: nothing "
                    "tells them from a rewrite (sign one with `help-exchange audit "
                    "checkpoint`)", fg="yellow", err=True)
        ctx.exit(3)
    if report.ok and quorum_short:
        click.secho(f"NOT WITNESSED: the newest checkpoint cosigned by {pins.quorum} witnesses "
                    f"covers {report.quorum_size} entries of {report.covered}", fg="yellow",
                    err=True)
        ctx.exit(3)
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


def _pins(settings: Settings, trusted: tuple[Path, ...], kept_tiles: Path | None,
          log_key: tuple[Path, ...], witnesses: tuple[Path, ...], quorum: int | None) -> Any:
    from services.ledger.checkpoint import NoteVerifier, open_checkpoint, parse_checkpoint_text, parse_note
    from services.ledger.heads import known_vkeys
    from services.ledger.tiles import directory_reader
    from services.ledger.verify import Pins

    keys = tuple(NoteVerifier.from_vkey(_read_text(p)) for p in log_key) or tuple(
        known_vkeys(settings.key_dir, settings.ledger_origin))
    wits = tuple(NoteVerifier.from_vkey(_read_text(p)) for p in witnesses)
    kept: Any = None
    if kept_tiles is not None:
        note = _read_text(kept_tiles / "checkpoint")
        kept = (directory_reader(kept_tiles),
                parse_checkpoint_text(parse_note(note).text)[1])
    pinned = []
    for path in trusted:
        text, why = _read_text(path), "no checkpoint key of the log"
        for key in keys:
            try:
                pinned.append(open_checkpoint(text, key))
                break
            except InputError as exc:
                why = exc.what
        else:
            raise InputError(f"the checkpoint {path} is refused: {why}",
                             "give a checkpoint of this log, unchanged, and its key (--log-key)")
    if quorum is None:
        quorum = settings.ledger_quorum if wits else 0
    return Pins(keys, tuple(pinned), kept, wits, quorum)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "give the file as it was written") from exc


@audit.command("checkpoint")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False))
@click.pass_context
def audit_checkpoint(ctx: click.Context, out: Path | None) -> None:
    """Print the checkpoint of the current tree (C2SP signed note, with its cosignatures),
    signing one if none covers it yet. Keep it: `audit verify --trusted FILE` checks the
    log never departs from it."""
    note = _ledger(ctx, sign=True).checkpoint()
    if out is None:
        click.echo(note, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(note, encoding="utf-8")
        click.echo(f"checkpoint written to {out}")


@audit.command("tiles")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.pass_context
def audit_tiles(ctx: click.Context, out: Path) -> None:
    """Export the log as C2SP tiles (and its checkpoint) into a folder: anyone verifies it
    from there without our database (`audit verify-tiles`, or Go's sumdb/tlog)."""
    from services.ledger.checkpoint import parse_checkpoint_text, parse_note
    from services.ledger.tiles import export_tiles

    ledger = _ledger(ctx, sign=True)
    note = ledger.checkpoint()
    size = parse_checkpoint_text(parse_note(note).text)[1]
    count = export_tiles(ledger, note, size, out)
    click.echo(f"{count} files written to {out} (tree of {size} entries)")


@audit.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1024, 65535), default=8081, show_default=True)
@click.pass_context
def audit_serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve the checkpoint and the tiles read-only over HTTP (GET /checkpoint,
    /tile/<L>/<N>[.p/<W>], /tile/entries/<N>[.p/<W>])."""
    from services.ledger.tiles import tile_server

    server = tile_server(_ledger(ctx, sign=False), host, port)
    click.echo(f"serving the ledger's tiles on http://{host}:{port}/ (Ctrl-C stops)")
    serve_until_interrupted(server, Deadline(_settings(ctx).drain_timeout_s, "tile server"))


@audit.command("verify-tiles")
@click.argument("source")
@click.option("--log-key", type=_FILE, multiple=True,
              help="The log's checkpoint key (.vkey). Default: HELP_KEY_DIR/ledger/*.vkey.")
@click.option("--trusted", "trusted", type=_FILE, multiple=True,
              help="A checkpoint you kept from earlier (repeatable).")
@click.option("--kept-tiles", type=_DIR, help="A tile folder you exported earlier.")
@click.option("--witness", "witnesses", type=_FILE, multiple=True,
              help="A witness's cosignature key (.vkey, repeatable).")
@click.option("--quorum", type=click.IntRange(min=0, max=20), default=None)
@click.pass_context
def audit_verify_tiles(ctx: click.Context, source: str, log_key: tuple[Path, ...],
                       trusted: tuple[Path, ...], kept_tiles: Path | None,
                       witnesses: tuple[Path, ...], quorum: int | None) -> None:
    """Verify the log from its tiles alone (SOURCE: a folder or an http(s) URL), no
    database: checkpoint signature and cosignatures, every entry against its tile, every
    level, the root, and consistency with the checkpoints you kept."""
    from services.ledger.checkpoint import open_checkpoint
    from services.ledger.tiles import directory_reader, http_reader, verify_from_tiles

    settings = _settings(ctx)
    pins = _pins(settings, trusted, kept_tiles, log_key, witnesses, quorum)
    read = (http_reader(source) if source.startswith(("http://", "https://"))
            else directory_reader(Path(source)))
    raw = read("checkpoint")
    if raw is None:
        raise InputError(f"{source} has no checkpoint", "give a tile folder or a log URL")
    checkpoint, why = None, "no checkpoint key of the log"
    for key in pins.log_keys:
        try:
            checkpoint = open_checkpoint(raw, key, witnesses={w.name: w for w in pins.witnesses})
            break
        except InputError as exc:
            why = exc.what
    if checkpoint is None:
        raise InputError(f"the checkpoint of {source} is refused: {why}",
                         "give the log's key with --log-key")
    if pins.quorum and len(checkpoint.cosigners) < pins.quorum:
        raise InputError(f"the checkpoint is cosigned by {len(checkpoint.cosigners)} "
                         f"witness(es) {list(checkpoint.cosigners)}, {pins.quorum} required",
                         "ask the exchange to collect cosignatures (`audit witness-round`)")
    for pin in pins.trusted:
        if pin.size > checkpoint.size:
            click.secho(f"TAMPERED: the log serves {checkpoint.size} entries, a checkpoint "
                        f"you kept says {pin.size}: rolled back", fg="red", err=True)
            ctx.exit(1)
    audit = verify_from_tiles(read, checkpoint, trusted=pins.trusted, kept=pins.kept_tiles)
    if audit.ok:
        click.echo(f"ok: {audit.size} entries verified from the tiles, root matches the "
                   f"checkpoint, cosigned by {list(checkpoint.cosigners)}")
        return
    first = audit.problems[0]
    click.secho(f"TAMPERED: {first}", fg="red", err=True)
    for problem in audit.problems[1:]:
        click.echo(f"  - {problem}", err=True)
    ctx.exit(1)


@audit.command("witness-round")
@click.option("--witnesses", "witnesses_file", type=_FILE,
              help="JSON list of {name, url, vkey}. Default: HELP_LEDGER_WITNESSES_FILE, "
                   "else HELP_KEY_DIR/ledger/witnesses.json.")
@click.pass_context
def audit_witness_round(ctx: click.Context, witnesses_file: Path | None) -> None:
    """Send the current checkpoint to every witness and keep their cosignatures with it.
    Exit 1 when fewer than HELP_LEDGER_QUORUM cosigned."""
    from services.ledger.witness import load_witnesses, witness_round

    settings = _settings(ctx)
    path = (witnesses_file or settings.ledger_witnesses_file
            or settings.key_dir / "ledger" / "witnesses.json")
    results = witness_round(_ledger(ctx, sign=True), load_witnesses(path))
    for result in results:
        click.echo(f"{'ok  ' if result.ok else 'FAIL'} {result.witness}: {result.detail}")
    done = sum(r.ok for r in results)
    if done < settings.ledger_quorum:
        click.secho(f"{done} cosignature(s), quorum {settings.ledger_quorum}: the checkpoint "
                    "is not witnessed", fg="red", err=True)
        ctx.exit(1)


@click.group()
def witness() -> None:
    """A fund's witness of the ledger: cosigns checkpoints consistent with the last it saw."""


_FUNDS = click.Choice(["urssaf", "cpam", "caf", "carsat"])


@witness.command("init")
@click.option("--fund", type=_FUNDS, required=True)
@click.option("--log-key", type=_FILE, required=True, help="The ledger's checkpoint key (.vkey).")
@click.pass_context
def witness_init(ctx: click.Context, fund: str, log_key: Path) -> None:
    """Create the fund's witness key (once) and follow the log of LOG_KEY; prints the
    cosignature key (.vkey) to give the exchange and the auditors."""
    from services.ledger.witness import Witness

    w = Witness.init(_settings(ctx).key_dir, fund, _read_text(log_key))
    click.echo(w.signer.verifier.vkey)


@witness.command("serve")
@click.option("--fund", type=_FUNDS, required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1024, 65535), default=8090, show_default=True)
@click.pass_context
def witness_serve(ctx: click.Context, fund: str, host: str, port: int) -> None:
    """Answer C2SP tlog-witness requests (POST /add-checkpoint) with the fund's key."""
    from services.ledger.witness import Witness, witness_server

    server = witness_server(Witness.load(_settings(ctx).key_dir, fund), host, port)
    click.echo(f"witness of {fund} on http://{host}:{port}/add-checkpoint (Ctrl-C stops)")
    serve_until_interrupted(server, Deadline(_settings(ctx).drain_timeout_s, "witness"))


@witness.command("cosign")
@click.option("--fund", type=_FUNDS, required=True)
@click.option("--request", "request_file", type=_FILE, required=True,
              help="An add-checkpoint request body (old N, proof lines, blank, checkpoint).")
@click.pass_context
def witness_cosign(ctx: click.Context, fund: str, request_file: Path) -> None:
    """Answer one add-checkpoint request offline: prints the cosignature line, or exits 1
    saying why the checkpoint is refused."""
    from services.ledger.witness import Witness

    answer = Witness.load(_settings(ctx).key_dir, fund).add_checkpoint(
        request_file.read_bytes())
    if answer.status != 200:
        click.secho(f"refused ({answer.status}): {answer.body.strip()}", fg="red", err=True)
        ctx.exit(1)
    click.echo(answer.body, nl=False)


@audit.command("prove")
@click.option("--entry", "entry_id", required=True, help="The entry id (32 hex digits).")
@click.option("--out", type=OutputFile(), required=True)
@click.pass_context
def audit_prove(ctx: click.Context, entry_id: str, out: Path) -> None:
    """Write an inclusion proof of one entry, with a signed head, to FILE."""
    from services.ledger.proofs import inclusion_document

    ledger = _ledger(ctx, sign=True)
    head = ledger.latest_head()
    if head is None or head.tree_size != ledger.size():
        head = ledger.sign_head()
    stored, size, path = ledger.inclusion(entry_id, head.tree_size)
    _write_json(inclusion_document(stored.data, stored.index, size, path, head,
                                   ledger.checkpoint_at(head.tree_size)), out)
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


@audit.command("check-checkpointed")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--log-key", type=_FILE, multiple=True,
              help="The log's checkpoint key (.vkey). Default: HELP_KEY_DIR/ledger/*.vkey.")
@click.option("--witness", "witnesses", type=_FILE, multiple=True,
              help="A witness's cosignature key (.vkey, repeatable).")
@click.option("--quorum", type=click.IntRange(min=0, max=20), default=None)
@click.pass_context
def audit_check_checkpointed(ctx: click.Context, files: tuple[Path, ...],
                             log_key: tuple[Path, ...], witnesses: tuple[Path, ...],
                             quorum: int | None) -> None:
    """Check proof files and access reports against the C2SP checkpoints they carry (the
    auditor page's downloads, `access-report`'s JSON), offline. Exit 1 if any fails."""
    from services.ledger.proofs import check_against_checkpoints

    pins = _pins(_settings(ctx), (), None, log_key, witnesses, quorum)
    failed = 0
    for path in files:
        try:
            document = json.loads(_read_text(path))
        except ValueError as exc:
            raise InputError(f"{path} is not JSON: {exc}", "give a proof file or a report") \
                from exc
        if not isinstance(document, dict):
            raise InputError(f"{path} is not a proof file", "give a proof file or a report")
        result = check_against_checkpoints(document, pins.log_keys, pins.witnesses,
                                           pins.quorum)
        for line in result.lines:
            click.echo(f"{path.name}: {line}")
        failed += not result.ok
    if failed:
        click.secho(f"{failed} file(s) REJECTED", fg="red", err=True)
        ctx.exit(1)
    click.echo(f"{len(files)} file(s) verified")


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
@click.option("--from", "first", type=click.IntRange(0, 2**53), required=True)
@click.option("--to", "second", type=click.IntRange(0, 2**53), required=True)
@click.option("--out", type=OutputFile())
@click.pass_context
def audit_consistency(ctx: click.Context, first: int, second: int, out: Path | None) -> None:
    """A consistency proof (RFC 9162) that the tree of N entries is a prefix of the tree of M."""
    from services.ledger.merkle import verify_consistency
    from services.ledger.proofs import consistency_document

    ledger = _ledger(ctx, sign=False)
    first_root, second_root, proof = ledger.consistency(first, second)
    heads = {h.tree_size: h for h in ledger.heads() if h.tree_size in (first, second)}
    document = consistency_document(first, second, first_root, second_root, proof,
                                    heads.get(first), heads.get(second),
                                    (ledger.checkpoint_at(first), ledger.checkpoint_at(second)))
    _write_json(document, out)
    if not verify_consistency(first, second, first_root, second_root, proof):  # pragma: no cover
        raise InputError("the ledger produced a consistency proof that does not verify",
                         "run `help-exchange audit verify`")
    if out is not None:
        click.echo(f"consistency proof {first} → {second} ({len(proof)} hashes) written to {out}")


@audit.command("query")
@click.option("--case", "case_id",
              help="A case number as the worklist prints it (35-2026-11-0042) or a situation "
                   "id (32 hex digits).")
@click.option("--pseudonym", help="A pseudonym value (base64url, 43 characters).")
@click.option("--actor", help="A fund, body, user or service id.")
@click.option("--action", type=click.Choice([a.value for a in Action]))
@click.option("--period", help="A month, YYYY-MM.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
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
    if case_id is not None:
        case_id = _situation_of(ledger, case_id, provided(ctx, LedgerWiring).cases)
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


def _situation_of(ledger: Ledger, case: str, cases: CaseDirectory) -> str:
    from services.ledger.web import situation_of_case

    return situation_of_case(ledger.engine, case, cases)


@audit.command("export")
@click.option("--period", required=True, help="A month, YYYY-MM.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)
@click.option("--out", type=OutputFile(), required=True)
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
    ledger = _ledger(ctx, sign=False)
    count = ledger.rebuild_index()
    click.echo(f"Index de l'auditeur reconstruit : {count} entrée(s).")
    click.echo(f"Hachés des tuiles reconstruits : {ledger.rebuild_tile_nodes()}.")


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

    from services.ledger.sink import AuditSink, BatchResult
    from services.platform import metrics
    from services.platform.broker import resolve_bootstrap
    from services.platform.stopping import Deadline, stop_on_signals

    settings = _settings(ctx)
    sink = AuditSink(settings, _ledger(ctx, sign=True), resolve_bootstrap(settings),
                     cases=provided(ctx, LedgerWiring).cases, batch_max=batch_max)
    metrics.serve(settings, "audit sink")

    async def main() -> BatchResult:
        # SIGTERM or SIGINT: the batch in flight commits, then the sink stops (exit 0), within
        # HELP_DRAIN_TIMEOUT_S (services.platform.stopping).
        stop = asyncio.Event()
        stop_on_signals(stop, Deadline(settings.drain_timeout_s, "audit sink"))
        click.echo(f"audit sink reading from {sink.bootstrap}; Ctrl-C stops it", err=True)
        return await sink.run(until_idle=until_idle, stop=stop)

    totals = asyncio.run(main())
    click.echo(f"audit sink: {totals.records} records read, {totals.appended} entries appended, "
               f"{totals.already_present} already present, {totals.skipped} unreadable; "
               f"ledger size {sink.ledger.size()}")
