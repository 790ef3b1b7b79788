"""``help-exchange access-report``: « Qui a consulté mes informations ? », at the fund.

The fund finds the person behind its own reference in its extracts (the producer's
:func:`~services.producer.subject.person_behind`, under the pseudonym scheme in force), and
the ledger lists every event about them with its proof (:mod:`services.ledger.access`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from services.core.types import Fund
from services.errors import InputError
from services.platform.cli import settings_from

_FUNDS = click.Choice(["urssaf", "cpam", "caf", "carsat"])
_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)


def register(cli: click.Group) -> None:
    cli.add_command(access_report)


@click.command("access-report")
@click.option("--fund", type=_FUNDS, required=True, help="The fund making the report.")
@click.option("--reference", required=True, help="The fund's own file number of the person.")
@click.option("--extract", "extracts", type=_FILE, multiple=True, required=True,
              help="The fund's extract(s) where the reference appears (repeatable): they "
                   "give the person (never printed).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write: OUT.html, OUT.pdf and OUT.json.")
@click.pass_context
def access_report(ctx: click.Context, fund: str, reference: str, extracts: tuple[Path, ...],
                  out: Path) -> None:
    """« Qui a consulté mes informations ? » — every ledger event about the person behind
    one of the fund's references: when, which fund or role, what, why, each with an
    inclusion proof to a signed (and cosigned) checkpoint. HTML and PDF in French, JSON for
    standard verifiers."""
    from services.ledger.access import Person, build_report, render_html, render_pdf
    from services.ledger.store import Ledger
    from services.producer.keys import load_fund_secrets
    from services.producer.pseudonym import source_for
    from services.producer.subject import person_behind

    if not 1 <= len(reference) <= 64 or not reference.isprintable():
        raise InputError("--reference must be 1 to 64 printable characters",
                         "give the fund's file number as the back-office prints it")
    settings = settings_from(ctx)
    source = source_for(settings, Fund(fund))  # v1: the exchange key; v2: the service
    secrets = load_fund_secrets(settings.key_dir, Fund(fund))
    pseudonym, signal_ids = person_behind(Fund(fund), reference, extracts,
                                          lambda nir: source.pseudonym(nir)["value"], secrets.id_root)
    report = build_report(Ledger.open(settings, sign=True), Person(Fund(fund), pseudonym, signal_ids))
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.with_suffix("")
    base.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    base.with_suffix(".html").write_text(render_html(report, reference), encoding="utf-8")
    base.with_suffix(".pdf").write_bytes(render_pdf(report, reference))
    click.echo(f"{len(report['events'])} événement(s) ; rapport : {base}.html, {base}.pdf, "
               f"{base}.json (preuves vérifiables)")
