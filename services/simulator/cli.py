"""``help-exchange simulate``: a month of extracts for a département, and its ground truth."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click
import yaml

from services.core.bounds import parse_month
from services.core.dates import today_paris as today_paris  # re-exported for the demo and tests
from services.errors import InputError
from services.simulator.extracts import expected_rejections, write_extracts
from services.simulator.population import TERRITORIES, generate
from services.simulator.truth import ground_truth

TRUTH_FILE = "verite_terrain.json"


def check_month(month: str, today: dt.date, window_days: int) -> None:
    year, mon = parse_month(month)
    first = dt.date(year, mon, 1)
    if first > today:
        raise InputError(f"month {month} has not started yet", "back-offices only report what happened")
    last = dt.date(year + (mon == 12), mon % 12 + 1, 1) - dt.timedelta(days=1)
    if (today - last).days > window_days:
        raise InputError(f"month {month} ended more than {window_days} days ago",
                         "simulate a recent month: the correlator only correlates signals within its window")


def simulate(territory: str, month: str, out: Path, *, seed: int, schemas: Path, today: dt.date,
             scale: float = 1.0) -> dict[str, Any]:
    """Write the extracts and the ground truth; return the truth document."""
    rules = yaml.safe_load((schemas / "rules.yaml").read_text(encoding="utf-8"))
    check_month(month, today, int(rules["fenetre_correlation_jours"]))
    generated = generate(territory, month, seed=seed, today=today, scale=scale)
    paths = write_extracts(generated, out)
    truth = ground_truth(generated, schemas)
    rejected = expected_rejections(generated)
    doc = {
        "territoire": territory,
        "mois": month,
        "graine": seed,
        "genere_le": today.isoformat(),
        "personnes": len(generated.persons),
        "fichiers": {fund: {"chemin": path.name,
                            "lignes": sum(1 for p in generated.persons for s in p.signals if s.fund == fund),
                            "rejets_attendus": dict(sorted(rejected.get(fund, {}).items()))}
                     for fund, path in paths.items()},
        **truth,
    }
    (out / TRUTH_FILE).write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return doc


def register(cli: click.Group) -> None:
    @cli.command("simulate")
    @click.option("--territory", type=click.Choice(sorted(TERRITORIES)), default="35", show_default=True,
                  help="Département whose month is simulated (sizes from docs/domain.md).")
    @click.option("--month", required=True, help="The month, YYYY-MM (recent, not in the future).")
    @click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), required=True,
                  help="Directory for the extracts (<fund>.csv) and verite_terrain.json.")
    @click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same month.")
    @click.option("--scale", type=click.FloatRange(0.01, 100), default=1.0, show_default=True,
                  help="Multiply the population (e.g. 10 for a load test).")
    @click.pass_context
    def simulate_cmd(ctx: click.Context, territory: str, month: str, out: Path, seed: int, scale: float) -> None:
        """Write, for each fund, the extract file its back-office would produce for a month of
        a département, with a realistic share of bad lines, and the ground truth: which people
        must form which shared situations, under which rules (verite_terrain.json).

        The NIRs are synthetic (valid in form, drawn at random); the ground truth names
        people by the funds' own file references only."""
        from services.platform.cli import settings_from

        settings = settings_from(ctx)
        doc = simulate(territory, month, out, seed=seed, schemas=settings.schemas_dir, today=today_paris(),
                       scale=scale)
        click.echo(f"{TERRITORIES[territory].name} ({territory}), {month}: {doc['personnes']} personnes signalées")
        for info in doc["fichiers"].values():
            bad = sum(info["rejets_attendus"].values())
            click.echo(f"  {out / info['chemin']}: {info['lignes']} lignes dont {bad} erronées")
        click.echo(f"  {len(doc['situations'])} situations partagées attendues → {out / TRUTH_FILE}")
