"""The ground truth: which situations the month must produce, and under which rules.

Written from the rules as ``schemas/rules.yaml`` and ``schemas/taxonomy.yaml`` state them,
reading those files directly and sharing no code with the correlator, so that comparing
the correlator's output with this can fail. The truth names people by each fund's own file
reference (what a fund can reopen), never by NIR or pseudonym.

Scope: one month, all signals within the correlation window and no closure in between
(the files' closure period is longer than a month), no earlier situation (so the
"signalements consécutifs" rule cannot fire).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.simulator.extracts import plan_lines
from services.simulator.population import Month


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def ground_truth(month: Month, schemas: Path) -> dict[str, Any]:
    rules = _load(schemas / "rules.yaml")
    taxonomy = _load(schemas / "taxonomy.yaml")
    weights = {c["code"]: c["poids"] for c in taxonomy["categories"]}
    accepted: dict[int, list[Any]] = {}
    for fund_lines in plan_lines(month).values():
        for line in fund_lines:
            if line.fault is None:
                accepted.setdefault(line.person.number, []).append(line.signal)
    situations = []
    for number, signals in sorted(accepted.items()):
        funds = {s.fund for s in signals}
        fired = []
        for code, rule in rules["regles"].items():
            kind = rule["type"]
            if kind == "organismes_distincts" and len(funds) >= rule["minimum"]:
                fired.append(code)
            elif kind == "categorie_et_autre_organisme":
                anchored = any(s.fund == rule["organisme"] and s.category in rule["categories"]
                               and (rule.get("finalite") is None or _purpose(s, taxonomy) == rule["finalite"])
                               for s in signals)
                if anchored and funds - {rule["organisme"]}:
                    fired.append(code)
        if not fired:
            continue
        total = sum(weights[c] for c in {s.category for s in signals})
        thresholds = rules["priorite"]
        priority = "rouge" if total >= thresholds["rouge"] else "orange" if total >= thresholds["orange"] else "vert"
        situations.append({
            "personne": number,
            "references": sorted(f"{s.fund}:{s.reference}" for s in signals),
            "organismes": sorted(funds),
            "regles": sorted(fired),
            "priorite": priority,
        })
    return {"situations": situations}


def _purpose(signal: Any, taxonomy: dict[str, Any]) -> str:
    if signal.purpose:
        return str(signal.purpose)
    cat = next(c for c in taxonomy["categories"] if c["code"] == signal.category)
    return str(cat["finalites"][0])
