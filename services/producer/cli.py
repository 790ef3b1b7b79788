"""The producer's commands: ``keys``, ``publish``, ``outbox``, ``receipts``, ``reveal``.

Registered on the ``help-exchange`` group by :func:`register`. Summaries for the funds'
operators are in French; errors go through the shared error tree (one line + a hint).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import click

from services.core.dates import PARIS as PARIS_TZ
from services.core.types import Fund, Purpose
from services.platform.settings import Settings

FUND = click.option("--fund", required=True, type=click.Choice([f.value for f in Fund]),
                    help="The emitting fund (organisme): urssaf, cpam, caf, carsat or msa.")


def _parse_since(text: str) -> dt.datetime | None:
    """An ISO 8601 time or date; without an offset, Paris time (the funds' clock)."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=PARIS_TZ)


class _ResendProgress:
    """A rich progress bar (re-sent / to re-send), or nothing when stderr is not a terminal."""

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        self._task: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]renvoi"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("signalements"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._bar.start()

    def update(self, done: int, total: int) -> None:
        if self._bar is None:
            return
        if self._task is None:
            self._task = self._bar.add_task("resend", total=max(total, 1))
        self._bar.update(self._task, completed=done, total=max(total, 1))

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _settings(ctx: click.Context) -> Settings:
    from services.platform.cli import settings_from

    return settings_from(ctx)


def _keys_group(cli: click.Group) -> click.Group:
    existing = cli.commands.get("keys")
    if isinstance(existing, click.Group):
        return existing

    @cli.group("keys")
    def keys() -> None:
        """Signing, sealing and exchange (pseudonymisation) keys, under HELP_KEY_DIR.

        Private files are created 0600; public keys and exchange key ids go to
        HELP_KEY_DIR/registry.json, the file the correlator trusts.
        """

    return keys


def register(cli: click.Group) -> None:
    keys = _keys_group(cli)

    @keys.command("init")
    @FUND
    @click.option("--rotate", "--force", "rotate", is_flag=True,
                  help="The fund already has keys: add a new generation and use it from now on. "
                       "Old keys are never deleted (references they sealed stay openable, "
                       "signatures stay verifiable until you retire them in the registry).")
    @click.pass_context
    def keys_init(ctx: click.Context, fund: str, rotate: bool) -> None:
        """Create a fund's Ed25519 signing key and its sealing key.

        Writes HELP_KEY_DIR/funds/<fund>/<fund>-sig-….pem and <fund>-seal-….key (0600) and
        publishes the public key in registry.json. Refuses if the fund already has keys,
        unless --rotate.
        """
        from services.producer.keys import init_fund_keys

        settings = _settings(ctx)
        ids = init_fund_keys(settings.key_dir, Fund(fund), rotate=rotate)
        click.echo(f"clés de {fund} créées : signature {ids.signing}, scellement {ids.sealing} "
                   f"(dans {settings.key_dir / 'funds' / fund}, clé publique ajoutée au registre)")

    @keys.command("init-exchange")
    @click.pass_context
    def keys_init_exchange(ctx: click.Context) -> None:
        """Create a new exchange (pseudonymisation) key and record it active.

        Each call adds a key (rotation): producers pseudonymise under the newest active key;
        the correlator accepts every active one. Distribute the file
        HELP_KEY_DIR/exchange/<key_id>.key to every producer, by a secure channel.
        """
        from services.producer.keys import init_exchange_key

        settings = _settings(ctx)
        key_id = init_exchange_key(settings.key_dir)
        click.echo(f"clé d'échange {key_id} créée et active (les producteurs l'utilisent désormais)")

    @keys.command("retire-exchange")
    @click.option("--key-id", required=True, help="The exchange key id to retire (see `keys list`).")
    @click.pass_context
    def keys_retire_exchange(ctx: click.Context, key_id: str) -> None:
        """Mark an exchange key retired: no longer used, no longer accepted by the correlator."""
        from services.producer.keys import retire_exchange_key

        retire_exchange_key(_settings(ctx).key_dir, key_id)
        click.echo(f"clé d'échange {key_id} retirée")

    @keys.command("register")
    @FUND
    @click.option("--public-key", "public_key", required=True,
                  type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="The fund's Ed25519 public key: PEM (SubjectPublicKeyInfo), raw 32 bytes, "
                       "base64url/base64 text of the raw key, a JWK (kty OKP, crv Ed25519) "
                       "or an OpenSSH ssh-ed25519 line.")
    @click.option("--key-id", default=None,
                  help="The key id (default: the JWK's kid, else <fund>-sig-<yyyymmdd>-<4 hex>).")
    @click.pass_context
    def keys_register(ctx: click.Context, fund: str, public_key: Path, key_id: str | None) -> None:
        """Register a fund's signing public key made elsewhere (exchange operator).

        The key is added active to HELP_KEY_DIR/registry.json (signed again); the running
        correlator takes it without a restart. Prints the key id and the SHA-256 fingerprint
        of the raw key: read it to the fund by another channel (telephone) and have it
        compare with its own before it publishes. A private key given by mistake is refused
        and never printed. The same key under the same id again changes nothing.
        See docs/keys.md.
        """
        from services.producer.keys import register_signing_key

        data = public_key.read_bytes()
        done = register_signing_key(_settings(ctx).key_dir, Fund(fund), data, key_id=key_id)
        if done.new:
            click.echo(f"clé de signature {done.key_id} de {fund} enregistrée, active")
        else:
            click.echo(f"clé de signature {done.key_id} de {fund} déjà enregistrée ({done.status}) : rien changé")
        click.echo(f"empreinte : {done.fingerprint}")
        click.echo("  à confirmer avec l'organisme par un autre canal (téléphone) avant qu'il publie")

    @keys.command("retire")
    @FUND
    @click.option("--key-id", required=True, help="The signing key id to retire (see `keys list`).")
    @click.option("--force", is_flag=True,
                  help="Retire even the fund's last active key or its current one (a compromised key).")
    @click.pass_context
    def keys_retire(ctx: click.Context, fund: str, key_id: str, force: bool) -> None:
        """Retire a fund's signing key: the correlator then refuses what it signs.

        Refusal reason cle_signature_retiree. The fund's `receipts` command re-signs such
        signals with its current key and queues them again. Refused for the fund's last
        active key, or its current key here (rotate first), unless --force.
        """
        from services.producer.keys import retire_signing_key

        if retire_signing_key(_settings(ctx).key_dir, Fund(fund), key_id, force=force):
            click.echo(f"clé de signature {key_id} de {fund} retirée : l'échange refuse désormais ce "
                       "qu'elle signe (cle_signature_retiree)")
        else:
            click.echo(f"clé de signature {key_id} de {fund} déjà retirée : rien changé")

    @keys.command("sign-registry")
    @click.pass_context
    def keys_sign_registry(ctx: click.Context) -> None:
        """Sign registry.json as it is (a registry from before signatures, or edited by hand).

        Every `keys` command signs the registry it writes; this is for the rest. It makes
        the registry key (HELP_KEY_DIR/exchange-admin/, 0600) and its public key
        HELP_KEY_DIR/registry-signer.pub if they do not exist yet.
        """
        from services.core.registry import signer_public_path
        from services.producer.keys import sign_registry

        key_dir = _settings(ctx).key_dir
        sign_registry(key_dir)
        click.echo(f"registre signé (clé publique de signature du registre : {signer_public_path(key_dir)})")

    @keys.command("list")
    @click.pass_context
    def keys_list(ctx: click.Context) -> None:
        """List the keys of the registry (public keys and exchange key ids; no secret)."""
        from services.core.registry import fingerprint, load_registry
        from services.producer.keys import registry_path

        registry = load_registry(registry_path(_settings(ctx).key_dir))
        current = registry.current_exchange_key_id()
        click.echo("clés d'échange (pseudonymisation) :")
        for k in registry.exchange_keys:
            mark = "  ← utilisée par les producteurs" if k.key_id == current else ""
            click.echo(f"  {k.key_id:<28} {k.status:<8} créée {k.created_at}{mark}")
        for fund, fk in registry.funds.items():
            click.echo(f"{fund.value} — clés de signature :")
            for e in fk.signing_keys:
                when = (f" enregistrée {e.registered_at}" if e.registered_at else "") + (
                    f" retirée {e.retired_at}" if e.retired_at else "")
                click.echo(f"  {e.key_id:<28} {e.status:<8} {fingerprint(e.raw())}{when}")

    @cli.command("publish")
    @FUND
    @click.option("--input", "input_path", required=True,
                  type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Extract file: CSV (';', UTF-8 with or without BOM) or JSONL.")
    @click.option("--reject-report", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Where to write the rejected lines (CSV ';', UTF-8 BOM). "
                       "Default: <input>.rejets.csv next to the input.")
    @click.option("--workers", type=click.IntRange(0, 16), default=None,
                  help="Processes that build and sign the signals beside the sending one. "
                       "Default: 2 for files over 2 MB, else 0 (all in one process).")
    @click.pass_context
    def publish(ctx: click.Context, fund: str, input_path: Path, reject_report: Path | None,
                workers: int | None) -> None:
        """Publish an extract file of signals for a fund.

        \b
        CSV header: nir;categorie;date_observation;departement;reference_dossier
                    [;consentement][;finalite]   (other columns are ignored, never sent)
        Dates: AAAA-MM-JJ or JJ/MM/AAAA, not in the future, at most 2 years old.

        Each valid line is pseudonymised, its file reference sealed, signed, kept in the
        outbox (HELP_VAR_DIR/outbox/<fund>.db) and sent to help.signals.<fund>.v1; the
        invalid ones go to the reject report (NIR masked). Re-running the same file
        publishes nothing twice.

        \b
        Exit status: 0 every line published; 2 some lines rejected;
                     1 failure (file unusable, or signals left waiting in the outbox
                       because the broker did not answer: `outbox flush` sends them;
                       or signed with a key the local registry copy does not list
                       or marks retired: the exchange would refuse them).
        """
        from services.producer.publish import publish_file

        settings = _settings(ctx)
        report = reject_report or input_path.with_name(input_path.name + ".rejets.csv")
        summary = asyncio.run(publish_file(settings, Fund(fund), input_path, report,
                                           progress=sys.stderr.isatty(), workers=workers))
        for line in summary.lines():
            click.echo(line)
        ctx.exit(summary.exit_code)

    @cli.group("outbox")
    def outbox() -> None:
        """The durable outbox of a fund: signals built but not yet acknowledged by Kafka."""

    @outbox.command("status")
    @FUND
    @click.option("--prometheus", is_flag=True,
                  help="Print the outbox depth as Prometheus metrics (help_producer_outbox_rows) instead; exit 0.")
    @click.option("--textfile", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Also write those metrics to this file, replaced atomically (node_exporter's textfile "
                       "collector: a name ending in .prom in its directory).")
    @click.pass_context
    def outbox_status(ctx: click.Context, fund: str, prometheus: bool, textfile: Path | None) -> None:
        """How many signals wait in the outbox (exit 1 if some do)."""
        from services.producer.outbox import Outbox

        settings = _settings(ctx)
        with Outbox.for_fund(settings.var_dir, Fund(fund)) as box:
            st = box.status()
        if prometheus or textfile is not None:
            from services.platform.metrics import outbox_exposition, write_textfile

            text = outbox_exposition({(fund, "pending"): st.pending, (fund, "awaiting_receipt"): st.awaiting_receipt})
            if textfile is not None:
                write_textfile(textfile, text)
            if prometheus:
                click.echo(text, nl=False)
                return
        click.echo(f"boîte d'envoi {fund} : {st.pending} en attente, {st.sent} déjà publiés"
                   + (f" (plus ancien en attente : {st.oldest_pending})" if st.oldest_pending else ""))
        click.echo(f"  accusés : {st.accepted} acceptés, {st.refused} refusés définitivement, "
                   f"{st.awaiting_receipt} sans accusé rapproché (help-exchange receipts --fund {fund})")
        ctx.exit(1 if st.pending else 0)

    @outbox.command("flush")
    @FUND
    @click.option("--reveals", is_flag=True,
                  help="The fund's reveal records (`reveal`) instead of its signals.")
    @click.pass_context
    def outbox_flush(ctx: click.Context, fund: str, reveals: bool) -> None:
        """Send every signal waiting in the outbox (exit 1 if some could not be sent).

        \b
        Before it sends, the receipts of earlier sends are read and settled as `receipts`
        does (docs/keys.md): a signal refused because the exchange replaced the person's
        key since it was sealed is sealed again under the current key and sent now; one
        refused for good (objection, withdrawal) keeps its reason and is not sent again."""
        from services.producer.reveal import RevealPublisher
        from services.producer.sdk import Publisher, flush_outbox

        settings = _settings(ctx)
        publisher = RevealPublisher(settings, Fund(fund)) if reveals else Publisher(settings, Fund(fund))
        sent, left, error = asyncio.run(flush_outbox(publisher))
        what = "révélations" if reveals else "signalements"
        click.echo(f"boîte d'envoi {fund} : {sent} {what} publiés, {left} restant en attente")
        settled = publisher.reconciled
        if settled is not None and (settled.accepted or settled.anything):
            for line in settled.lines():
                click.echo(line)
        if error:
            click.echo(f"Le courtier Kafka ne répond pas : {error}", err=True)
        ctx.exit(1 if left else 0)

    @outbox.command("resend")
    @FUND
    @click.option("--since", "since", required=True, metavar="HORODATAGE",
                  help="ISO 8601 time (2026-12-07T14:30, 2026-12-07T13:30Z, or a date for its midnight); "
                       "without an offset, Paris time.")
    @click.pass_context
    def outbox_resend(ctx: click.Context, fund: str, since: str) -> None:
        """Send again the signals sent since a time, after a broker lost what it had acknowledged.

        \b
        For a broker (or a whole cluster) that lost messages after acknowledging them: a
        disk wiped, a topic re-created, an embedded broker restarted without its data.
        Every signal of the fund sent at or after --since whose bytes the outbox still
        keeps goes back to the queue and is sent to the broker now answering, with the
        same signal id. The outbox keeps an accepted signal's bytes
        HELP_OUTBOX_KEEP_SENT_DAYS days after its sending (default 7); older ones cannot
        be re-sent from here (publish the extract file again into an empty outbox).
        Signals refused for their content are not re-sent.

        \b
        The correlator builds nothing twice: a signal id it had already accepted is
        answered "doublon" (receipts count it as accepted) and changes no situation.

        \b
        Exit status: 0 all re-sent; 1 the broker did not answer (nothing was put back),
                     or some signals still wait in the outbox (`outbox flush` sends them);
                     2 the time is not understood.
        """
        from services.producer.sdk import Publisher, resend_outbox

        settings = _settings(ctx)
        moment = _parse_since(since)
        if moment is None:
            click.echo(f"--since : horodatage illisible « {since} » ; attendu par exemple 2026-12-07T14:30 "
                       "(heure de Paris), 2026-12-07T13:30Z ou 2026-12-07", err=True)
            ctx.exit(2)
            return
        bar = _ResendProgress(enabled=sys.stderr.isatty())
        try:
            result = asyncio.run(resend_outbox(Publisher(settings, Fund(fund)), moment, progress=bar.update))
        finally:
            bar.stop()
        click.echo(f"boîte d'envoi {fund} : {result.queued} signalements envoyés depuis le "
                   f"{moment.astimezone(PARIS_TZ).strftime('%d/%m/%Y %H:%M')} (heure de Paris) remis en file, "
                   f"{result.sent} renvoyés et acquittés, {result.left} restant en attente")
        if result.error:
            click.echo(f"Le courtier Kafka ne répond pas : {result.error}", err=True)
            if not result.queued:
                click.echo("Rien n'a été remis en file : relancez la commande quand le courtier répond.", err=True)
        ctx.exit(1 if result.error or result.left else 0)

    @cli.command("receipts")
    @FUND
    @click.option("--follow", is_flag=True, help="Keep waiting for new receipts (Ctrl-C stops; no reconciliation).")
    @click.option("--quiet", "-q", is_flag=True, help="Only the counts and the reconciliation, not each receipt.")
    @click.pass_context
    def receipts(ctx: click.Context, fund: str, follow: bool, quiet: bool) -> None:
        """Show the correlator's receipts for a fund, and reconcile them with its outbox.

        \b
        Each receipt: accepted, or rejected with the reason. Then, for the signals of the
        fund's outbox (without --follow):
          accepted                       their kept copy is dropped;
          refused, signing key unknown   back in the outbox, to send again once the
                                         exchange has registered the key (outbox flush);
          refused, signing key retired   re-signed with the fund's current key (same
                                         signal, same id) and back in the outbox;
          refused for another reason     kept with the reason (fix it at the source).
        See docs/keys.md.
        """
        from services.core.messages import Receipt
        from services.platform.broker import resolve_bootstrap
        from services.producer.receipts import Seen, collect, read_receipts, reconcile

        settings = _settings(ctx)
        bootstrap = resolve_bootstrap(settings)
        seen: dict[str, list[Seen]] = {}
        keep = collect(seen)

        def show(r: Receipt | None, raw: bytes) -> None:
            keep(r, raw)
            if quiet:
                return
            if r is None:
                click.echo(f"accusé illisible ({len(raw)} octets) : ignoré")
            elif r.status == "accepte":
                click.echo(f"{r.signal_id or '-':<32}  accepté")
            else:
                reason = r.reason
                label = f"{reason.label} ({reason.value})" if reason else "?"
                click.echo(f"{r.signal_id or '-':<32}  rejeté : {label}")

        try:
            counts = asyncio.run(read_receipts(settings, bootstrap, Fund(fund), show, follow=follow))
        except KeyboardInterrupt:
            return
        click.echo(f"{counts.accepted} acceptés, {counts.rejected} rejetés"
                   + (f", {counts.unreadable} illisibles" if counts.unreadable else ""))
        if not follow:
            for line in reconcile(settings, Fund(fund), seen).lines():
                click.echo(line)

    @cli.command("reveal")
    @FUND
    @click.option("--input", "input_path", required=True,
                  type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="A worklist export (CSV, HTML, text) with tokens scelle:<key_id>:<value>.")
    @click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="Where to write the revealed copy (created 0600: it holds clear references).")
    @click.option("--actor", required=True,
                  help="Who opens the references: the user's id at the fund, e.g. agent.caf-35.0042 "
                       "(written to the audit ledger).")
    @click.option("--purpose", type=click.Choice([p.value for p in Purpose]),
                  default=Purpose.ACCES_AUX_DROITS.value, show_default=True,
                  help="Why (L115-2-1 purpose), written to the audit ledger.")
    @click.option("--departement", default="", help="The fund's body (default: HELP_TERRITORY).")
    @click.pass_context
    def reveal(ctx: click.Context, fund: str, input_path: Path, out_path: Path, actor: str,
               purpose: str, departement: str) -> None:
        """Open this fund's own sealed file references in a worklist export.

        Only tokens sealed with this fund's keys and that verify are replaced by the clear
        reference; the other funds' tokens stay opaque, untouched. Each reference opened is
        recorded for the audit ledger (who, when, why, which case; never the reference),
        kept in the fund's outbox before the copy appears, and sent to help.reveals.v1.
        Exit 1 if those records could not be sent yet (`outbox flush --reveals`).
        """
        import re

        from services.core.types import ACTOR_PATTERN
        from services.errors import InputError
        from services.producer.reveal import reveal as run_reveal

        if not re.fullmatch(ACTOR_PATTERN, actor):
            raise InputError(f"--actor {actor!r} n'est pas un identifiant d'utilisateur",
                             "par exemple agent.caf-35.0042 (ni nom, ni adresse électronique)")
        summary = asyncio.run(run_reveal(_settings(ctx), Fund(fund), input_path, out_path, actor=actor,
                                         purpose=Purpose(purpose), departement=departement))
        for line in summary.lines():
            click.echo(line)
        ctx.exit(summary.exit_code)

