"""Per case, what to do: the lead fund from rules.yaml, the suggestions from taxonomy.yaml,
the readable sheet (short references, one date line, titles) and the projection view."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
from pathlib import Path

from pypdf import PdfReader

from services.casebook.meeting import CONSOLIDATED, PROJECTION, Advisor, visible_codes
from services.casebook.model import Month, Situation
from services.casebook.render import render
from services.casebook.worklist import Labels, build_worklist
from services.core.rules import LeadFundRule, load_rules
from services.core.taxonomy import Taxonomy
from services.core.types import Fund
from services.platform.settings import DEFAULT_SCHEMAS_DIR
from tests.support import situations as F
from tests.support.cli import run_cli

NOV = Month(2026, 11)


def _sit(n: int, funds: tuple[str, ...], cats: list[tuple[str, str, list[str]]], rules: tuple[str, ...] = ()
         ) -> Situation:
    event = F.situation(n, funds=funds, categories=cats)
    row = event.model_dump(mode="json")
    return Situation(row["situation_id"], f"35-2026-11-{n:04d}", 1, "ouverte", "35", "p", tuple(funds),
                     tuple(row["categories"]), (), "orange", rules or ("situation_partagee",), tuple(row["refs"]),
                     dt.date(2026, 11, 2), dt.date(2026, 11, 4), dt.datetime(2026, 11, 5, tzinfo=dt.UTC),
                     dt.datetime(2026, 11, 5, tzinfo=dt.UTC), None)


ALL = ["caf", "cpam", "urssaf", "carsat"]


def test_lead_fund_by_rule_then_weight_then_order(taxonomy: Taxonomy) -> None:
    rules = load_rules(DEFAULT_SCHEMAS_DIR / "rules.yaml", taxonomy)
    assert rules.chef_de_file is not None
    advisor = Advisor(taxonomy, rules.chef_de_file)
    funds = ("caf", "urssaf")
    # the rule names urssaf, whatever weighs more
    assert advisor.lead(funds, ("perte_logement",), ("situation_partagee", "help_travailleur_independant")) == "urssaf"
    # no such rule: perte_logement (4) outweighs impaye_cotisations (3)
    assert advisor.lead(funds, ("perte_logement", "impaye_cotisations"), ("situation_partagee",)) == "caf"
    assert advisor.lead(funds, ("separation", "impaye_cotisations"), ("situation_partagee",)) == "urssaf"
    # a tie (3 and 3): the first in ordre
    assert advisor.lead(funds, ("impaye_loyer", "impaye_cotisations"), ()) == "caf"
    flipped = Advisor(taxonomy, LeadFundRule(libelle="x", ordre=(Fund.URSSAF, Fund.CAF)))
    assert flipped.lead(funds, ("impaye_loyer", "impaye_cotisations"), ()) == "urssaf"
    assert Advisor(taxonomy, None).lead(funds, ("impaye_loyer",), ()) is None


def test_suggestions_answer_the_categories_best_first_each_with_who_acts(taxonomy: Taxonomy) -> None:
    advisor = Advisor(taxonomy, None)
    found = advisor.suggestions(("caf", "urssaf"), ("impaye_loyer", "perte_logement", "impaye_cotisations"), "caf")
    assert found[0].fund == "caf" and found[0].action in {"fsl", "prevention_expulsion_ccapex"}
    assert found[0].weight == 7  # impaye_loyer 3 + perte_logement 4
    assert [s.weight for s in found] == sorted((s.weight for s in found), reverse=True)
    assert {s.fund for s in found} == {"caf", "urssaf"}
    assert all(set(s.categories) <= {"impaye_loyer", "perte_logement", "impaye_cotisations"} for s in found)
    assert advisor.suggestions(("cpam",), ("impaye_cotisations",), None) == ()


def test_projection_keeps_what_every_fund_of_the_case_may_see(taxonomy: Taxonomy) -> None:
    cats = [("impaye_loyer", "caf", ALL), ("parent_incarcere", "caf", ["caf", "cpam"]),
            ("impaye_cotisations", "urssaf", ALL), ("grossesse", "caf", ["caf"])]
    sit = _sit(1, ("caf", "urssaf"), cats)
    ex = {c.code: c for c in taxonomy.categories if c.exchangeable}
    assert visible_codes(sit.categories, sit.funds, CONSOLIDATED, ex) == (
        "impaye_loyer", "parent_incarcere", "impaye_cotisations")
    assert visible_codes(sit.categories, sit.funds, PROJECTION, ex) == ("impaye_loyer", "impaye_cotisations")
    assert visible_codes(sit.categories, sit.funds, "urssaf", ex) == ("impaye_loyer", "impaye_cotisations")
    labels = Labels(taxonomy)
    wl = build_worklist(taxonomy, [sit], [], month=NOV, territory="35", fund=None, close_after_months=6,
                        projection=True)
    case = wl.cases[0]
    assert wl.view == PROJECTION and [c.code for c in case.categories] == ["impaye_loyer", "impaye_cotisations"]
    assert all(f.sealed_token is None for f in case.funds)
    assert "mediation_familiale" not in {s.action.code for s in case.suggestions}  # answers parent_incarcere only
    full = build_worklist(taxonomy, [sit], [], month=NOV, territory="35", fund=None, close_after_months=6,
                          labels=labels)
    assert full.view == CONSOLIDATED and "mediation_familiale" in {s.action.code for s in full.cases[0].suggestions}
    html = render(wl, "html").decode()
    assert "Parent incarcéré" not in html and "Vue de projection" in html
    assert "ne pas projeter" in render(full, "html").decode()


def test_sheet_is_readable_and_the_pdf_is_set_out_as_minutes(taxonomy: Taxonomy) -> None:
    rules = load_rules(DEFAULT_SCHEMAS_DIR / "rules.yaml", taxonomy)
    labels = Labels.for_rules(taxonomy, rules)
    cats = [("impaye_loyer", "caf", ALL), ("impaye_cotisations", "urssaf", ALL)]
    sits = [_sit(n, ("caf", "urssaf"), cats, ("situation_partagee", "help_travailleur_independant"))
            for n in range(1, 41)]
    wl = build_worklist(taxonomy, sits, [], month=NOV, territory="35", fund=None, close_after_months=6,
                        labels=labels)
    case = wl.cases[0]
    assert case.lead is not None and case.lead.code == "urssaf"
    token = case.funds[0].sealed_token
    assert token and token.startswith("scelle:caf-seal-1:") and case.funds[0].sealed_short
    assert len(case.funds[0].sealed_short) <= 16
    assert case.signals_line == "Signalé du 02/11/2026 au 04/11/2026"
    html = render(wl, "html").decode()
    assert "Travailleur indépendant en difficulté" in html and "HELP" not in html.split("<main")[1].split("</main>")[0]
    assert f'title="{token}"' in html and ">JSON<" not in html and "Décision et notes" in html
    assert token in render(wl, "csv").decode("utf-8-sig")  # the full value stays in the exports
    pdf = PdfReader(io.BytesIO(render(dataclasses.replace(wl, participants={"caf": ("agent.caf35",)}), "pdf")))
    pages = [p.extract_text() for p in pdf.pages]
    assert len(pages) >= 2 and "Procès-verbal" in pages[0] and "Participants par organisme" in pages[0]
    assert "agent.caf35" in pages[0] and "Travailleur indépendant en difficulté" in pages[0]
    assert all(f"Page {i} / {len(pages)}" in text for i, text in enumerate(pages, start=1))
    assert "Décision et notes" in pages[1] and "urssaf·" in pages[1]


def test_meeting_and_stats_commands(tmp_path: Path) -> None:
    code, out = run_cli(tmp_path, "meeting", "record", "--territory", "35", "--date", "2026-11-25",
                        "--participant", "caf:agent.caf35", "--participant", "urssaf:agent.urssaf35")
    assert code == 0 and "réunion du 25/11/2026 enregistrée" in out and "2 participant(s)" in out
    code, out = run_cli(tmp_path, "meeting", "list", "--territory", "35")
    assert code == 0 and "caf: agent.caf35" in out
    for args, message in ((("--date", "25/11/2026"), "date invalide"),
                          (("--date", "2026-11-25", "--participant", "caf:Jean Dupont"), "participant invalide"),
                          (("--date", "2026-11-25", "--participant", "agent.caf35"), "organisme:identifiant")):
        code, out = run_cli(tmp_path, "meeting", "record", "--territory", "35", *args)
        assert code == 2 and message in out and "Traceback" not in out, out
    stats_csv = tmp_path / "stats.csv"
    code, out = run_cli(tmp_path, "stats", "--month", "2026-11", "--territory", "35", "--out", str(stats_csv))
    assert code == 0 and stats_csv.read_text("utf-8-sig").startswith("Mois;Périmètre;Mesure")
    code, out = run_cli(tmp_path, "stats", "--month", "2099-01", "--territory", "35", "--out", str(stats_csv))
    assert code == 2 and "n'est pas clos" in out
