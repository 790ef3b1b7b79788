"""What the monthly meeting decides per case: its lead fund, the ranked suggested follow-ups,
and what each reader may see of it on the shared screen.

Pure functions of the data files (``rules.yaml``'s ``chef_de_file``, ``taxonomy.yaml``'s
weights and the ``categories`` each offer answers) and of one situation's funds, fired
rules and categories. A worklist repeats a handful of (funds, categories, rules) sets, so
:class:`Advisor` memoises its answer per set.

Views (who reads the sheet):

- ``CONSOLIDATED`` (the secretary's): every exchangeable category of the case;
- ``PROJECTION`` (the shared screen at the meeting): only the categories that *every* fund
  of the case may see (``visible_to`` holds them all), and no sealed reference;
- a fund code (an agent's view): the categories whose ``visible_to`` names that fund.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.core.rules import LeadFundRule
from services.core.taxonomy import Taxonomy

if TYPE_CHECKING:
    from services.casebook.worklist import CaseView, Labels

CONSOLIDATED = "consolidee"
PROJECTION = "projection"
VIEW_LABEL = {
    CONSOLIDATED: "Vue consolidée du secrétariat (tout ce que le dossier partage) : ne pas projeter",
    PROJECTION: "Vue de projection : pour chaque dossier, seulement ce que tous ses organismes peuvent voir",
}
#: How many suggested follow-ups the sheet shows per case (the case page shows them all).
SHEET_SUGGESTIONS = 3
#: Characters of a sealed reference's value shown on the sheet (the full value is in CSV/JSON).
SHORT_TOKEN = 8


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One suggested follow-up: ``action`` of ``fund`` (who may act), ranked by ``weight``,
    the summed taxonomy weight of the case's categories it answers."""

    fund: str
    action: str
    weight: int
    categories: tuple[str, ...]


def visible_codes(categories: Iterable[Mapping[str, Any]], funds: Sequence[str], view: str | None,
                  exchangeable: Mapping[str, object]) -> tuple[str, ...]:
    """The category codes of a case that ``view`` may read (see the module docstring)."""
    out: list[str] = []
    for c in categories:
        code = c["code"]
        if code not in exchangeable or code in out:
            continue
        if view is None or view == CONSOLIDATED:
            out.append(code)
        elif view == PROJECTION:
            if all(f in c["visible_to"] for f in funds):
                out.append(code)
        elif view in c["visible_to"]:
            out.append(code)
    return tuple(out)


def short_token(key_id: str, value: str) -> str:
    """The sheet's form of a sealed reference: its key's fund and the value's first characters.

    Enough to tell two references apart at the table; the full ``scelle:…`` token stays in
    the CSV/JSON exports and on the case page, for the owning fund's ``reveal``."""
    return f"{key_id.split('-', 1)[0]}·{value[:SHORT_TOKEN]}…"


class Advisor:
    """Lead fund and suggested follow-ups, memoised per (funds, categories, rules)."""

    def __init__(self, taxonomy: Taxonomy, lead_rule: LeadFundRule | None) -> None:
        self.taxonomy = taxonomy
        self.lead_rule = lead_rule
        self.weights = {c.code: c.poids for c in taxonomy.categories if c.exchangeable}
        self.owner = {c.code: c.fund.value for c in taxonomy.categories}
        self.offers: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
            f.value: tuple((a.code, a.categories) for a in actions) for f, actions in taxonomy.suites.items()}
        order = lead_rule.ordre if lead_rule else ()
        self.rank = {f.value: i for i, f in enumerate(order)}
        self._leads: dict[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], str | None] = {}
        self._suggested: dict[tuple[tuple[str, ...], tuple[str, ...], str | None], tuple[Suggestion, ...]] = {}

    def lead(self, funds: tuple[str, ...], shared: tuple[str, ...], rules: tuple[str, ...]) -> str | None:
        """The lead fund of a case with ``funds``, ``shared`` categories (visible to all its
        funds) and fired ``rules``; None without a ``chef_de_file`` rule or without funds."""
        key = (funds, shared, rules)
        if key in self._leads:
            return self._leads[key]
        found: str | None = None
        if self.lead_rule is not None and funds:
            by_rule = self.lead_rule.par_regle
            found = next((by_rule[r].value for r in rules if r in by_rule and by_rule[r].value in funds), None)
            if found is None:
                weight = dict.fromkeys(funds, 0)
                for code in shared:
                    owner = self.owner.get(code)
                    if owner in weight:
                        weight[owner] += self.weights.get(code, 0)
                found = min(funds, key=lambda f: (-weight[f], self.rank.get(f, len(self.rank)), f))
        self._leads[key] = found
        return found

    def suggestions(self, funds: tuple[str, ...], codes: tuple[str, ...], lead: str | None) -> tuple[Suggestion, ...]:
        """The offers of ``funds`` that answer some of ``codes``, best first: summed weight
        of the categories answered, then the lead fund's, then the taxonomy's order."""
        key = (funds, codes, lead)
        found = self._suggested.get(key)
        if found is None:
            present = set(codes)
            ranked: list[tuple[int, int, int, Suggestion]] = []
            for fi, fund in enumerate(funds):
                for ai, (action, answers) in enumerate(self.offers.get(fund, ())):
                    hits = tuple(c for c in answers if c in present)
                    if hits:
                        weight = sum(self.weights.get(c, 0) for c in hits)
                        ranked.append((-weight, 0 if fund == lead else 1, fi * 100 + ai,
                                       Suggestion(fund, action, weight, hits)))
            ranked.sort(key=lambda t: t[:3])
            found = self._suggested[key] = tuple(t[3] for t in ranked)
        return found


def followup_actions(labels: Labels, view: CaseView, fund: str) -> list[dict[str, Any]]:
    """The follow-up form's choices for ``fund``: its offers only, those suggested for the
    case first (marked), then the others in the taxonomy's order."""
    suggested = [s.action.code for s in view.suggestions if s.fund.code == fund]
    offers = labels.offers.get(fund, ())
    ordered = sorted(offers, key=lambda o: (suggested.index(o.code) if o.code in suggested else len(suggested)))
    return [{"code": o.code, "label": o.label, "suggested": o.code in suggested} for o in ordered]
