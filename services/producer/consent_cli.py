"""``help-exchange consent record|withdraw|flush`` and ``help-exchange objection record``.

See :mod:`services.producer.consent` for the file format and what happens to each line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import click

from services.core.messages import ConsentKind
from services.core.types import Fund
from services.platform.settings import Settings

FUND = click.option("--fund", required=True, type=click.Choice([f.value for f in Fund]),
                    help="The fund that recorded it: urssaf, cpam, caf, carsat or msa.")
INPUT = click.option("--input", "input_path", required=True,
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="CSV (';', UTF-8): nir;reference_consentement;finalites;date_effet"
                          "[;departement].")
REPORT = click.option("--reject-report", type=click.Path(dir_okay=False, path_type=Path),
                      default=None, help="Where to write the rejected lines (default: "
                                         "<input>.rejets.csv next to the input).")


def _settings(ctx: click.Context) -> Settings:
    from services.platform.cli import settings_from

    return settings_from(ctx)


def _run(ctx: click.Context, kind: ConsentKind, fund: str, input_path: Path,
         reject_report: Path | None) -> None:
    from services.producer.consent import record_file

    report = reject_report or input_path.with_name(input_path.name + ".rejets.csv")
    summary = asyncio.run(record_file(_settings(ctx), Fund(fund), kind, input_path, report))
    for line in summary.lines():
        click.echo(line)
    ctx.exit(summary.exit_code)


def _command(kind: ConsentKind, doc: str) -> Callable[..., None]:
    @FUND
    @INPUT
    @REPORT
    @click.pass_context
    def command(ctx: click.Context, fund: str, input_path: Path, reject_report: Path | None) -> None:
        _run(ctx, kind, fund, input_path, reject_report)

    command.__doc__ = doc
    return command


_EXIT = """
    \b
    Exit status: 0 every line published; 2 some lines rejected (see the report);
                 1 failure (file unusable, or events left in the outbox: `consent flush`).
    """


def register(cli: click.Group) -> None:
    @cli.group("consent")
    def consent() -> None:
        """Consents of the HELP questionnaire route, and their withdrawal (help.consents.v1)."""

    consent.command("record")(_command("consentement_donne", """Publish a file of consents given.

    Each line: the NIR (validated, pseudonymised here like signals: it never leaves the
    fund), the form's reference (e.g. HELP-2026-000123), the purposes (acces_aux_droits,
    prevention_perte_autonomie; ',' between them) and the date of the consent.
    Re-running the same file publishes nothing twice.
    """ + _EXIT))

    consent.command("withdraw")(_command("consentement_retire", """Publish a file of consents withdrawn.

    Same columns as `consent record` (empty purposes = all). The withdrawal takes effect when
    recorded, for the purposes named only: the correlator forgets the person's signals under
    them (and the shared situation if it showed one of them), the casebook erases that
    situation, and later signals for these purposes are refused (`consentement_retire`)
    until a consent recorded later.
    """ + _EXIT))

    @consent.command("flush")
    @FUND
    @click.pass_context
    def consent_flush(ctx: click.Context, fund: str) -> None:
        """Send the consent events waiting in the fund's consent outbox (exit 1 if some stay)."""
        from services.producer.consent import ConsentPublisher
        from services.producer.sdk import flush_outbox

        sent, left, error = asyncio.run(flush_outbox(ConsentPublisher(_settings(ctx), Fund(fund))))
        click.echo(f"consentements {fund} : {sent} publiés, {left} restant en attente")
        if error:
            click.echo(f"Le courtier Kafka ne répond pas : {error}", err=True)
        ctx.exit(1 if left else 0)

    @cli.group("objection")
    def objection() -> None:
        """Objections (RGPD art. 21) to the exchange (help.consents.v1, kind opposition)."""

    objection.command("record")(_command("opposition", """Publish a file of objections.

    Same columns as `consent record` (empty purposes = the whole exchange). From the moment
    it is recorded the person's signals are refused (reason `opposition`), the correlator's
    state and the casebook's cases about them are erased; only ledger entries keep the
    pseudonym.
    """ + _EXIT))
