"""Each fund's extract file, as its back-office writes it: the producer's CSV format.

A realistic share of lines is bad, and bad the way back-offices get it wrong: a NIR typed
with a wrong key, a category code with a typo, an attempt to send a medical category, a
date that does not exist. A bad line is a real signal that gets lost (the producer rejects
it), so the ground truth is computed over the lines that are valid.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from services.simulator.nir import wrong_key
from services.simulator.population import Month, Person, SimSignal

HEADER = ("nir", "categorie", "date_observation", "departement", "reference_dossier", "finalite")
BAD_SHARE = 0.02
# Medical / health-adjacent categories a careless extract might contain, per fund.
MEDICAL = {"caf": ("grossesse", "maladie_handicap_enfant"),
           "cpam": ("affection_longue_duree", "renoncement_soins", "sortie_hospitalisation"),
           "carsat": ("evaluation_gir_5_6", "retour_domicile_apres_hospitalisation"),
           "urssaf": ()}
FAULTS = ("cle_nir_invalide", "categorie_inconnue", "categorie_medicale", "date_invalide")


@dataclass(frozen=True)
class Line:
    person: Person
    signal: SimSignal
    fault: str | None  # the producer's reason code the line must be rejected with, or None


def plan_lines(month: Month) -> dict[str, list[Line]]:
    """Every line of every fund's file, with the fault (if any) each carries."""
    rng = random.Random(f"faults:{month.seed}:{month.territory.code}:{month.year}-{month.month}")
    lines: dict[str, list[Line]] = {}
    for person in month.persons:
        for signal in person.signals:
            fault = None
            if rng.random() < BAD_SHARE:
                fault = rng.choice([f for f in FAULTS if f != "categorie_medicale" or MEDICAL[signal.fund]])
            lines.setdefault(signal.fund, []).append(Line(person, signal, fault))
    for fund_lines in lines.values():
        rng.shuffle(fund_lines)
    return lines


def _render(line: Line, rng: random.Random) -> list[str]:
    s, p = line.signal, line.person
    nir = p.nir
    if line.fault == "cle_nir_invalide":
        nir = wrong_key(nir)
    if rng.random() < 0.2:  # some back-offices print the NIR grouped
        nir = f"{nir[0]} {nir[1:3]} {nir[3:5]} {nir[5:7]} {nir[7:10]} {nir[10:13]} {nir[13:]}"
    category = s.category
    if line.fault == "categorie_inconnue":
        category = s.category + "s"
    elif line.fault == "categorie_medicale":
        category = rng.choice(MEDICAL[s.fund])
    date = s.observed_on.isoformat() if rng.random() < 0.5 else s.observed_on.strftime("%d/%m/%Y")
    if line.fault == "date_invalide":
        date = f"31/02/{s.observed_on.year}" if rng.random() < 0.5 else f"{s.observed_on.year}-13-01"
    return [nir, category, date, p.departement, s.reference, s.purpose or ""]


def write_extracts(month: Month, out: Path) -> dict[str, Path]:
    """Write ``<out>/<fund>.csv`` for each fund; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"render:{month.seed}")
    paths: dict[str, Path] = {}
    for fund, lines in sorted(plan_lines(month).items()):
        path = out / f"{fund}.csv"
        # CAF and CPAM extracts come from spreadsheet tools: UTF-8 with a BOM; the others without.
        encoding = "utf-8-sig" if fund in ("caf", "cpam") else "utf-8"
        with path.open("w", encoding=encoding, newline="") as f:
            f.write(";".join(HEADER) + "\r\n")
            for line in lines:
                f.write(";".join(_render(line, rng)) + "\r\n")
        paths[fund] = path
    return paths


def expected_rejections(month: Month) -> dict[str, Counter[str]]:
    return {fund: Counter(line.fault for line in lines if line.fault)
            for fund, lines in plan_lines(month).items()}
