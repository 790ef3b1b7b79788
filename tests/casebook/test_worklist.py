"""The monthly worklist: exactly the ground-truth situations, nothing forbidden in any
export, markup and formula injection neutralised, bad CLI input refused cleanly."""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import io
import json
import random
import re
import zlib
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from markupsafe import escape

from services.casebook import store
from services.casebook.model import Month, Situation
from services.casebook.render import CSV_HEADERS, csv_line, environment, render, render_csv, render_html
from services.casebook.worklist import (
    CaseView,
    FollowupView,
    FundView,
    Labelled,
    SuggestionView,
    Worklist,
    build_worklist,
    load_worklist,
)
from services.core.spreadsheet import safe_cell
from services.core.taxonomy import SignalClass, Taxonomy, parse_taxonomy
from services.platform.settings import DEFAULT_SCHEMAS_DIR
from tests.support import situations as F
from tests.support.cli import run_cli

UTC = dt.UTC
NOV = Month(2026, 11)


def at(y: int, m: int, d: int) -> dt.datetime:
    return dt.datetime(y, m, d, 10, tzinfo=UTC)


def simulated_month(engine: sa.Engine, seed: int = 5) -> set[int]:
    """A generated population around November 2026; returns the ids the worklist must hold."""
    rnd = random.Random(seed)
    sits, fus, consents = [], [], []
    expected: set[int] = set()
    for n in range(1, rnd.randint(8, 14) + 1):
        kind = rnd.choice("ABCDEFGHIJK")
        funds = rnd.choice([("caf", "urssaf"), ("caf", "cpam"), ("cpam", "carsat", "caf")])
        day = rnd.randint(1, 28)
        if kind == "A":  # opened in November: new
            sits.append(F.situation(n, funds=funds, occurred_at=at(2026, 11, day)))
            expected.add(n)
        elif kind == "B":  # opened in September, updated in November
            sits += [F.situation(n, funds=funds, occurred_at=at(2026, 9, day)),
                     F.situation(n, version=2, funds=funds, occurred_at=at(2026, 11, day))]
            expected.add(n)
        elif kind == "C":  # opened in October, nobody answered yet: awaiting
            sits.append(F.situation(n, funds=funds, occurred_at=at(2026, 10, day)))
            expected.add(n)
        elif kind == "D":  # every fund answered in October: closed before the meeting
            sits.append(F.situation(n, funds=funds, occurred_at=at(2026, 10, 1)))
            fus += [F.followup(n, f, _action(f), recorded_at=at(2026, 10, 20)) for f in funds]
        elif kind == "E":  # one fund answered in October, the others not yet: awaiting
            sits.append(F.situation(n, funds=funds, occurred_at=at(2026, 10, 1)))
            fus.append(F.followup(n, funds[0], _action(funds[0]), recorded_at=at(2026, 10, 20)))
            expected.add(n)
        elif kind == "F":  # the last answer came in November: reported at the meeting
            sits.append(F.situation(n, funds=funds, occurred_at=at(2026, 10, 1)))
            fus += [F.followup(n, f, _action(f), recorded_at=at(2026, 10, 20)) for f in funds[:-1]]
            fus.append(F.followup(n, funds[-1], _action(funds[-1]), recorded_at=at(2026, 11, day)))
            expected.add(n)
        elif kind == "G":  # opened in December: next month's
            sits.append(F.situation(n, funds=funds, occurred_at=at(2026, 12, 2)))
        elif kind == "H":  # another territory
            sits.append(F.situation(n, funds=funds, territory="61", occurred_at=at(2026, 11, day)))
        elif kind == "I":  # no new signal for more than 6 months: closed by itself
            sits.append(F.situation(n, funds=funds, occurred_at=at(2026, 3, 2)))
        elif kind == "J":  # closed by the correlator in October
            sits += [F.situation(n, funds=funds, occurred_at=at(2026, 9, 2)),
                     F.situation(n, version=2, kind="fermee", funds=funds, occurred_at=at(2026, 10, 2))]
        elif kind == "K":  # the person objected: erased
            sits.append(F.situation(n, funds=funds, occurred_at=at(2026, 11, 2), person=f"obj{n}"))
            consents.append(F.objection(f"obj{n}", effective_at=at(2026, 11, 10)))
    rnd.shuffle(sits)
    with engine.begin() as conn:
        store.apply_situations(conn, sits)
        store.apply_followups(conn, fus)
        store.apply_consents(conn, consents)
    return expected


def _action(fund: str) -> str:
    return {"caf": "fsl", "urssaf": "echeancier_paiement", "cpam": "ouverture_c2s_puma",
            "carsat": "plan_action_personnalise"}[fund]


def case_numbers_of(engine: sa.Engine, ids: set[int]) -> set[str]:
    with engine.connect() as conn:
        out = set()
        for n in ids:
            sit = store.situation_by_id(conn, F.hex32("situation", n))
            assert sit is not None
            out.add(sit.case_number)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_worklist_holds_exactly_the_ground_truth(engine: sa.Engine, taxonomy: Taxonomy, seed: int) -> None:
    expected = simulated_month(engine, seed)
    wl = load_worklist(engine, taxonomy, month=NOV, territory="35", fund=None, close_after_months=6)
    assert {c.case_number for c in wl.cases} == case_numbers_of(engine, expected)
    ranks = [{"rouge": 0, "orange": 1, "vert": 2}[c.priority.code] for c in wl.cases]
    assert ranks == sorted(ranks)


def test_sorted_by_priority_then_case_number(sqlite_engine: sa.Engine, taxonomy: Taxonomy) -> None:
    prios = ["vert", "rouge", "orange", "rouge", "vert"]
    with sqlite_engine.begin() as conn:
        store.apply_situations(conn, [F.situation(i, priority=p, occurred_at=at(2026, 11, i + 1))
                                      for i, p in enumerate(prios)])
    wl = load_worklist(sqlite_engine, taxonomy, month=NOV, territory="35", fund=None, close_after_months=6)
    assert [(c.priority.code, c.case_number[-4:]) for c in wl.cases] == [
        ("rouge", "0002"), ("rouge", "0004"), ("orange", "0003"), ("vert", "0001"), ("vert", "0005")]


def test_a_fund_sees_only_its_cases_its_categories_and_its_own_seal(sqlite_engine: sa.Engine,
                                                                      taxonomy: Taxonomy) -> None:
    cats = [("impaye_loyer", "caf", ["caf", "cpam", "urssaf", "carsat"]), ("parent_incarcere", "caf", ["caf", "cpam"]),
            ("impaye_cotisations", "urssaf", ["urssaf", "caf", "cpam", "carsat"])]
    with sqlite_engine.begin() as conn:
        store.apply_situations(conn, [F.situation(1, funds=("caf", "urssaf"), categories=cats),
                                      F.situation(2, funds=("cpam", "carsat"))])
    wl = load_worklist(sqlite_engine, taxonomy, month=NOV, territory="35", fund="urssaf", close_after_months=6)
    assert len(wl.cases) == 1
    case = wl.cases[0]
    assert [c.code for c in case.categories] == ["impaye_loyer", "impaye_cotisations"]
    assert [(f.fund.code, f.sealed_token is not None) for f in case.funds] == [("caf", False), ("urssaf", True)]
    assert case.funds[1].sealed_token == f"scelle:urssaf-seal-1:{F.sealed('urssaf', 1).value}"
    assert [o.code for o in case.funds[0].offers][:2] == ["accompagnement_travailleur_social", "rendez_vous_des_droits"]
    everyone = load_worklist(sqlite_engine, taxonomy, month=NOV, territory="35", fund=None, close_after_months=6)
    assert len(everyone.cases) == 2
    assert "Parent incarcéré" in [c.label for c in everyone.cases[0].categories + everyone.cases[1].categories]


# ------------------------------------------------------------------------------- scans
def nir_like(text: str) -> list[str]:
    """15-character NIR-shaped strings whose control key is valid."""
    found = []
    for m in re.finditer(r"(?=([12]\d{2}(0[1-9]|1[0-2]|[2-9]\d)(\d{2}|2A|2B)\d{6}\d{2}))", text):
        nir = m.group(1)
        body = nir[:13].replace("2A", "19").replace("2B", "18")
        if 97 - int(body) % 97 == int(nir[13:]):
            found.append(nir)
    return found


def pdf_text(data: bytes) -> str:
    chunks = [data.decode("latin-1")]
    for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        raw = m.group(1).strip()
        if raw.endswith(b"~>"):  # reportlab's ASCII85 wrapping
            raw = base64.a85decode(raw[:-2].removeprefix(b"<~"))
        try:
            chunks.append(zlib.decompress(raw).decode("latin-1"))
        except zlib.error:
            chunks.append(raw.decode("latin-1"))
    return "\n".join(chunks)


def test_no_export_holds_a_nir_a_clear_reference_or_a_medical_category(sqlite_engine: sa.Engine,
                                                                          taxonomy: Taxonomy) -> None:
    forbidden = [c for c in taxonomy.categories if c.classe is not SignalClass.NM]
    # A (wrong) upstream event carrying medical categories: the casebook must still not show them.
    medical = [(c.code, c.fund.value, ["caf", "cpam", "urssaf", "carsat"]) for c in forbidden]
    with sqlite_engine.begin() as conn:
        store.apply_situations(conn, [F.situation(i, funds=("caf", "cpam", "urssaf", "carsat"),
                                                  categories=[("impaye_loyer", "caf", ["caf", "cpam"]), *medical])
                                      for i in range(1, 30)])
        store.apply_followups(conn, [F.followup(3, "caf", "fsl"), F.followup(4, "cpam", "ouverture_c2s_puma")])
    clear_refs = [f"{f.upper()}35{n:07d}" for f in ("caf", "cpam", "urssaf", "carsat") for n in range(1, 30)]
    pseudonyms = [F.pseudonym(n).value for n in range(1, 30)]
    for fund in (None, "caf", "cpam"):
        wl = load_worklist(sqlite_engine, taxonomy, month=NOV, territory="35", fund=fund, close_after_months=6)
        assert len(wl.cases) == 29
        for fmt in ("html", "csv", "json", "pdf"):
            data = render(wl, fmt)
            text = pdf_text(data) if fmt == "pdf" else data.decode("utf-8")
            assert nir_like(text) == [], fmt
            for ref in clear_refs + pseudonyms:
                assert ref not in text, (fmt, ref)
            for cat in forbidden:
                assert re.search(rf"\b{cat.code}\b", text) is None, (fmt, cat.code)
                if fmt != "pdf":
                    assert cat.libelle not in text, (fmt, cat.libelle)
            # the full token in the exports for `reveal`; the minutes show its short form
            assert ("scelle:" in text) if fmt != "pdf" else ("scelle:" not in text), fmt


def test_nir_detector_detects() -> None:
    nir = "1850578006084"
    key = 97 - int(nir) % 97
    assert nir_like(f"x {nir}{key:02d} y") == [f"{nir}{key:02d}"]
    assert nir_like(f"{nir}{(key + 1) % 97:02d}") == []


# ------------------------------------------------------------------------------- injection
HOSTILE = "<script>alert('x')</script>\"'&"
FORMULA = "=HYPERLINK(\"http://evil\";\"clic\")"


def hostile_taxonomy() -> Taxonomy:
    data = yaml.safe_load((DEFAULT_SCHEMAS_DIR / "taxonomy.yaml").read_text(encoding="utf-8"))
    for cat in data["categories"]:
        if cat["code"] == "impaye_loyer":
            cat["libelle"] = HOSTILE
        if cat["code"] == "impaye_cotisations":
            cat["libelle"] = FORMULA
    data["suites"]["caf"][0]["libelle"] = "@SUM(1+1)*cmd|' /C calc'!A0"
    data["organismes"]["urssaf"]["libelle"] = "+Urssaf"
    return parse_taxonomy(data)


def _situations() -> list[Situation]:
    from services.casebook.model import aware

    events = [F.situation(1), F.situation(2, funds=("urssaf", "caf"))]
    return [Situation(e.situation_id, f"35-2026-11-000{i}", e.version, e.kind, e.territory, e.pseudonym.value,
                      tuple(f.value for f in e.funds), tuple(c.model_dump(mode="json") for c in e.categories),
                      ("acces_aux_droits",), e.priority.value, tuple(e.rules),
                      tuple(r.model_dump(mode="json") for r in e.refs), e.first_signal_on, e.last_signal_on,
                      aware(e.occurred_at), aware(e.occurred_at), None) for i, e in enumerate(events, 1)]


def test_markup_is_escaped_everywhere_in_html() -> None:
    wl = build_worklist(hostile_taxonomy(), _situations(), [], month=NOV, territory="35", fund=None,
                        close_after_months=6)
    html = render_html(wl)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&#34;&#39;&amp;" in html
    assert html.startswith("<!DOCTYPE html>") and '<html lang="fr">' in html


def test_csv_cells_cannot_become_formulas() -> None:
    wl = build_worklist(hostile_taxonomy(), _situations(), [], month=NOV, territory="35", fund=None,
                        close_after_months=6)
    data = render_csv(wl)
    assert data.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig")), delimiter=";"))
    assert rows[0][0] == "N° de dossier" and len(rows) == 3
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert any(cell.startswith("'+Urssaf") for row in rows for cell in row)
    for value in ("=1+1", "+33", "-2", "@x", "\tx", "\rx"):
        assert safe_cell(value) == "'" + value
    assert safe_cell("35-2026-11-0001") == "35-2026-11-0001"


# ------------------------------------------------------------------------------- CLI
def test_cli_writes_every_format(tmp_path: Path, taxonomy: Taxonomy) -> None:
    from services.platform.db import open_engine

    engine = open_engine(f"sqlite:///{tmp_path / 'casebook.db'}")
    with engine.begin() as conn:
        store.apply_situations(conn, [F.situation(i, occurred_at=at(2026, 11, i)) for i in range(1, 4)])
    engine.dispose()
    for fmt in ("html", "csv", "pdf", "json"):
        out = tmp_path / f"liste.{fmt}"
        code, output = run_cli(tmp_path, "worklist", "--month", "2026-11", "--territory", "35",
                               "--format", fmt, "--out", str(out), "--fund", "caf")
        assert code == 0, output
        assert out.stat().st_size > 0
    doc = json.loads((tmp_path / "liste.json").read_text(encoding="utf-8"))
    assert [c["case_number"] for c in doc["cases"]] == ["35-2026-11-0001", "35-2026-11-0002", "35-2026-11-0003"]
    assert (tmp_path / "liste.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize(("args", "message"), [
    (["--month", "2026-13", "--territory", "35"], "mois invalide"),
    (["--month", "novembre", "--territory", "35"], "mois invalide"),
    (["--month", "2026-11", "--territory", "99"], "territoire invalide"),
    (["--month", "2026-11", "--territory", "35", "--fund", "pole_emploi"], "organisme inconnu"),
])
def test_cli_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path: Path, args: list[str],
                                                               message: str) -> None:
    out = tmp_path / "liste.csv"
    code, output = run_cli(tmp_path, "worklist", *args, "--format", "csv", "--out", str(out))
    assert code == 2
    assert message in output and "Traceback" not in output
    assert not out.exists()
    assert list(tmp_path.glob(".liste.csv.*")) == []


# ------------------------------------------------------------------------------- fast paths
# The two long HTML tables and the CSV lines are written without the template engine and
# without csv.writer (for speed on 100,000 cases): they must stay byte for byte what the
# autoescaped template and csv.writer write, whatever the values hold.
REFERENCE_ROWS = """{% for c in wl.cases %}<tr>
<td>{% if web %}<a href="/cases/{{ c.case_number }}">{{ c.case_number }}</a>{% else %}<strong>{{ c.case_number }}</strong>{% endif %}<br><span class="fr-badge fr-badge--info">{{ c.reason.label }}</span> <span class="fr-text--sm">{{ c.status.label }}</span>{% if c.change %}<br><strong class="fr-change">{{ c.change.label }}</strong>{% endif %}</td>
<td><span class="fr-badge fr-badge--{{ c.priority.code }}">{{ c.priority.label }}</span>{% if c.rules %}<br><span class="fr-text--sm">{{ c.rules|map(attribute="label")|join(", ") }}</span>{% endif %}</td>
<td>{% for cat in c.categories %}<span class="fr-tag">{{ cat.label }}</span>{% endfor %}</td>
<td class="fr-text--sm">{{ c.signals_line }}</td>
<td class="fr-text--sm">{% for f in c.funds %}<strong>{{ f.fund.label }}</strong>{% if c.lead and c.lead.code == f.fund.code %} (chef de file){% endif %}{% if f.sealed_token and f.sealed_short %} <code class="fr-token" title="{{ f.sealed_token }}">{{ f.sealed_short }}</code>{% endif %}{% if f.recorded %}<br>
Suite : {% for r in f.recorded %}{{ r.action.label }} — {{ r.outcome.label }} ({{ r.recorded_on }}){% if not loop.last %} ; {% endif %}{% endfor %}{% endif %}<br>
{% endfor %}</td>
<td class="fr-text--sm">{% if c.suggestions %}<ol>{% for s in c.suggestions[:3] %}<li>{{ s.action.label }} <span class="fr-hint">({{ s.fund.label }})</span></li>{% endfor %}</ol>{% else %}—{% endif %}</td>
<td class="fr-decision"></td>
</tr>
{% endfor %}</tbody>|{% for r in wl.reported %}<tr><td>{{ r.case_number }}</td><td>{{ r.fund.label }}</td><td>{{ r.action.label }}</td><td>{{ r.outcome.label }}</td><td>{{ r.recorded_on }}</td><td>{{ r.recorded_by }}</td></tr>
{% endfor %}</tbody>"""  # noqa: E501 (the template's lines, verbatim)


def hostile_worklist() -> Worklist:
    """Markup, quotes, delimiters, line breaks and formula starts in every text a case holds."""
    def lab(code: str, label: str) -> Labelled:
        return Labelled(code + HOSTILE, label + HOSTILE)

    def fu(n: int, fund: Labelled) -> FollowupView:
        return FollowupView(f"35-2026-11-000{n}{HOSTILE}", fund, lab("fsl", "=FSL;x"), lab("propose", '"Proposé"\r\n'),
                            f"25/11/2026{HOSTILE}", f"@agent{HOSTILE}")

    caf, urssaf = lab("caf", "CAF"), lab("urssaf", "+Urssaf")
    offers = (lab("fsl", "-FSL"), lab("ars", "Aide;sociale"))
    cases = []
    for n, recorded in ((1, True), (2, False)):
        done = (fu(n, caf), fu(n, caf)) if recorded else ()
        funds = (FundView(caf, f"scelle:caf-seal-1:{HOSTILE}{n}", offers, done, f"caf·{HOSTILE}…"),
                 FundView(urssaf, None, (), ()), FundView(caf, "", offers, ()))
        cases.append(CaseView(f"35-2026-11-000{n}{HOSTILE}", lab("nouvelle", "\tNouvelle"), lab("rouge", "Rouge"),
                              (lab("multi_organismes", "Situation <partagée>"), lab("x", HOSTILE)) if recorded else (),
                              funds,
                              (lab("impaye_loyer", FORMULA), lab("x", HOSTILE)), f"01/11/2026{HOSTILE}",
                              f"=02/11/2026{HOSTILE}", f"03/11/2026{HOSTILE}", "04/11/2026", lab("ouvert", "Ouvert"),
                              1, caf if recorded else None,
                              tuple(SuggestionView(f, lab(f"a{i}", f"=Suite{i}"), 5 - i)
                                    for i, f in enumerate((caf, urssaf, caf, urssaf))) if recorded else (),
                              lab("nouveau", "Nouveau <depuis>") if recorded else None))
    reported = tuple(fu(n, caf) for n in (1, 2))
    return Worklist(NOV, "35", None, dt.datetime(2026, 11, 30, tzinfo=UTC), tuple(cases), reported)


@pytest.mark.parametrize("web", [False, True])
def test_html_rows_are_what_the_autoescaped_template_writes(web: bool) -> None:
    wl = hostile_worklist()
    expected = environment().from_string(REFERENCE_ROWS).render(wl=wl, web=web)
    cases, reported = expected.split("|")
    context = {"user": None, "csrf_token": ""} if web else {}
    html = render_html(wl, web=web, **context)
    assert f"<tbody>\n{cases}" in html and f"<tbody>\n{reported}</table>" in html
    assert "<script>" not in html and HOSTILE not in html and "<!--" not in html


def test_html_without_reported_followups() -> None:
    wl = dataclasses.replace(hostile_worklist(), reported=())
    html = render_html(wl)
    assert "Aucune suite rapportée ce mois-ci." in html and "<!--" not in html
    assert environment().from_string(REFERENCE_ROWS).render(wl=wl, web=False).split("|")[0] in html


def test_csv_lines_are_what_csv_writer_writes() -> None:
    wl = hostile_worklist()
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_HEADERS)
    for c in wl.cases:
        done = " | ".join(f"{r.fund.label} : {r.action.label} — {r.outcome.label} ({r.recorded_on})"
                          for f in c.funds for r in f.recorded)
        offers = " | ".join(f"{f.fund.label} : " + ", ".join(o.label for o in f.offers) for f in c.funds)
        tokens = " | ".join(f"{f.fund.label} : {f.sealed_token}" for f in c.funds if f.sealed_token)
        writer.writerow([safe_cell(v) for v in (
            c.case_number, c.priority.label, c.reason.label, c.status.label, ", ".join(f.fund.label for f in c.funds),
            ", ".join(cat.label for cat in c.categories), ", ".join(r.label for r in c.rules), c.first_signal_on,
            c.last_signal_on, c.opened_on, c.updated_on, offers, done, tokens, c.lead.label if c.lead else "",
            " | ".join(f"{s.action.label} ({s.fund.label})" for s in c.suggestions))])
    assert render_csv(wl) == ("\ufeff" + out.getvalue()).encode("utf-8")
    rows = list(csv.reader(io.StringIO(render_csv(wl).decode("utf-8-sig")), delimiter=";"))
    assert len(rows) == 3 and all(len(row) == len(CSV_HEADERS) for row in rows)


@pytest.mark.parametrize("value", ["", "plain", "a;b", 'say "hi"', "line\nbreak", "cr\rhere", "\r\n", '"', ";",
                                   " lead", "tab\tin", "é—ß", HOSTILE, FORMULA])
def test_csv_field_quotes_as_csv_writer_does(value: str) -> None:
    out = io.StringIO()
    csv.writer(out, delimiter=";", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL).writerow([value, value, "x"])
    assert csv_line([value, value, "x"]) == out.getvalue()


def test_sqlite_text_is_read_back_as_written() -> None:
    assert store._time("2026-11-01 10:00:00.000120") == dt.datetime(2026, 11, 1, 10, 0, 0, 120, tzinfo=UTC)
    assert store._time("2026-11-01 10:00:00+02:00") == dt.datetime(2026, 11, 1, 8, tzinfo=UTC)
    assert store._time("2026-11-01 10:00:00").tzinfo is not None
    assert store._json('{"funds": ["caf"], "n": 1.5}') == {"funds": ["caf"], "n": 1.5}
    assert store._json({"already": "decoded"}) == {"already": "decoded"}


def test_people_read_rule_titles_in_french_machines_read_codes(taxonomy: Taxonomy) -> None:
    from services.casebook.worklist import Labels, rule_titles
    from services.core.rules import load_rules

    rules = load_rules(DEFAULT_SCHEMAS_DIR / "rules.yaml", taxonomy)
    labels = Labels(taxonomy, rule_titles(rules))
    situations = [dataclasses.replace(s, rules=("situation_partagee", "help_travailleur_independant"))
                  for s in _situations()]
    wl = build_worklist(taxonomy, situations, [], month=NOV, territory="35", fund=None, close_after_months=6,
                        labels=labels)
    assert wl.cases and all(len(c.rules) == 2 for c in wl.cases)
    html = render(wl, "html").decode("utf-8")
    csv_text = render(wl, "csv").decode("utf-8-sig")
    for case in wl.cases:
        for rule in case.rules:
            title = rules.regles[rule.code].titre
            assert title and rule.label == title and title != rule.code
            assert title != "HELP"  # a plain-French title, not the programme's acronym
            assert title in csv_text and str(escape(title)) in html
    doc = json.loads(render(wl, "json"))
    assert {r for c in doc["cases"] for r in c["rules"]} <= set(rules.regles)
