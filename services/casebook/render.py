"""The worklist in every format: HTML for the meeting, CSV for a French spreadsheet, PDF for
the minutes, JSON for machines; and the atomic write every export goes through.

All four are built from the same :class:`~services.casebook.worklist.Worklist`, so what is
filtered there (medical categories, other funds' references) cannot reappear here. HTML is
rendered by Jinja2 with autoescaping on for every template, except the two long tables of
the worklist (one row per case, one per reported follow-up): 100,000 rows through the
template engine cost seconds, so :class:`_HtmlRows` writes them with f-strings in which every
value goes through ``markupsafe.escape``, the very function Jinja2's autoescaping calls.
CSV cells that a spreadsheet would run as a formula are neutralised (OWASP "CSV injection").
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from services.casebook.model import paused_gc
from services.casebook.worklist import CaseView, FollowupView, FundView, Labelled, Worklist
from services.core.spreadsheet import safe_cell
from services.errors import InputError

TEMPLATES = Path(__file__).resolve().parent / "templates"
FORMATS = ("html", "csv", "pdf", "json")
MEDIA_TYPES = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8",
               "pdf": "application/pdf", "json": "application/json"}

_env: Environment | None = None


def environment() -> Environment:
    """The one Jinja2 environment: autoescape for every template, whatever its extension."""
    global _env
    if _env is None:
        _env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                           autoescape=select_autoescape(default=True, default_for_string=True),
                           trim_blocks=False, lstrip_blocks=False)
    return _env


def render_html(wl: Worklist, *, web: bool = False, **context: Any) -> str:
    fund_label = None
    if wl.fund:
        fund_label = next((f.fund.label for c in wl.cases for f in c.funds if f.fund.code == wl.fund), wl.fund)
    involved = sorted({f.fund.code for c in wl.cases for f in c.funds})
    offers = [(code, next(f for c in wl.cases for f in c.funds if f.fund.code == code)) for code in involved]
    # The template renders the page around two markers, replaced by the rows in one final
    # join: passing 100 MB of rows through the template would copy them three more times.
    # The markers are random per render, so no escaped value can contain one.
    tag = secrets.token_hex(8)
    markers = (f"<!--case-rows-{tag}-->", f"<!--reported-rows-{tag}-->")
    with paused_gc():
        page = environment().get_template("worklist.html").render(
            offers=offers, wl=wl, counts=wl.counts(), fund_label=fund_label, web=web, nav="worklist",
            generated=wl.generated_at.strftime("%d/%m/%Y à %H:%M UTC"), case_rows=Markup(markers[0]),
            reported_rows=Markup(markers[1]), **context)
        head, rest = page.split(markers[0])
        middle, *tail = rest.split(markers[1])  # no second marker without reported follow-ups
        rows = _HtmlRows(web=web)
        parts = [head, *map(rows.case, wl.cases), middle]
        if tail:
            parts += map(rows.reported, wl.reported)
            parts.append(tail[0])
        return "".join(parts)


_HTML_SPECIAL = re.compile("[&<>\"']")


def _escape(text: str) -> str:
    """``markupsafe.escape(text)`` as a plain str. A text without ``& < > " '`` is its own
    escape: the regex test skips building a ``Markup`` for the 200,000+ values unique to a case."""
    return str(escape(text)) if _HTML_SPECIAL.search(text) else text


class _HtmlRows:
    """The rows of the worklist's two long tables, exactly as the template wrote them.

    Every value from the worklist is escaped as Jinja2's autoescaping does (:func:`_escape`):
    values a worklist repeats (labels, codes, dates, rules, agents) once per render, through
    :meth:`e`; values unique to a case (case number, sealed reference) every time. Cells made
    of repeated values only are memoised whole, keyed by the strings they are made of. One
    instance per render, so the memos hold this worklist's labels only.
    """

    def __init__(self, *, web: bool) -> None:
        self.web = web
        self._escaped: dict[str, str] = {}
        self._priority: dict[tuple[str, str, tuple[Labelled, ...]], str] = {}
        self._tag: dict[str, str] = {}
        self._fund_head: dict[str, str] = {}
        self._fund_idle: dict[tuple[str, str], str] = {}

    def e(self, text: str) -> str:
        """``text`` escaped, memoised: for values that repeat across cases."""
        out = self._escaped.get(text)
        if out is None:
            out = self._escaped[text] = _escape(text)
        return out

    def case(self, c: CaseView) -> str:
        e = self.e
        number = _escape(c.case_number)
        head = f'<a href="/cases/{number}">{number}</a>' if self.web else f"<strong>{number}</strong>"
        key = (c.priority.code, c.priority.label, c.rules)
        priority = self._priority.get(key)
        if priority is None:
            rules = (f'<br><span class="fr-text--sm">Règles : {", ".join(e(r.label) for r in c.rules)}</span>'
                     if c.rules else "")
            priority = self._priority[key] = (
                f'<td><span class="fr-badge fr-badge--{e(c.priority.code)}">{e(c.priority.label)}</span>{rules}</td>\n')
        tags = []
        for cat in c.categories:
            tag = self._tag.get(cat.label)
            if tag is None:
                tag = self._tag[cat.label] = f'<span class="fr-tag">{e(cat.label)}</span>'
            tags.append(tag)
        return (f'<tr>\n<td>{head}<br><span class="fr-text--sm">{e(c.status.label)}</span></td>\n'
                f'{priority}<td><span class="fr-badge fr-badge--info">{e(c.reason.label)}</span></td>\n'
                f'<td>{"".join(tags)}</td>\n<td class="fr-text--sm">1<sup>er</sup> signal : {e(c.first_signal_on)}<br>'
                f"Dernier : {e(c.last_signal_on)}<br>Ouvert : {e(c.opened_on)}<br>"
                f'Mis à jour : {e(c.updated_on)}</td>\n<td class="fr-text--sm">{"".join(map(self._fund, c.funds))}'
                "</td>\n</tr>\n")

    def _fund(self, f: FundView) -> str:
        fund = f.fund
        head = self._fund_head.get(fund.label)
        if head is None:
            head = self._fund_head[fund.label] = f"<strong>{self.e(fund.label)}</strong>"
        token = f' <span class="fr-token">{_escape(f.sealed_token)}</span>' if f.sealed_token else ""
        if f.recorded:
            e = self.e
            done = "Données : " + " ; ".join(f"{e(r.action.label)} — {e(r.outcome.label)} ({e(r.recorded_on)})"
                                             for r in f.recorded)
        else:
            key = (fund.code, fund.label)
            done = self._fund_idle.get(key) or ""
            if not done:
                done = self._fund_idle[key] = (
                    f'<span class="fr-hint">Aucune suite encore : voir <a href="#suites-{self.e(fund.code)}">'
                    f"suites possibles {self.e(fund.label)}</a></span>")
        return f"{head}{token}<br>\n{done}<br>\n"

    def reported(self, r: FollowupView) -> str:
        e = self.e
        return (f"<tr><td>{_escape(r.case_number)}</td><td>{e(r.fund.label)}</td><td>{e(r.action.label)}</td>"
                f"<td>{e(r.outcome.label)}</td><td>{e(r.recorded_on)}</td><td>{e(r.recorded_by)}</td></tr>\n")


# ------------------------------------------------------------------------------- CSV
CSV_HEADERS = ("N° de dossier", "Priorité", "Motif d'examen", "Statut", "Organismes concernés",
               "Catégories", "Règles déclenchées", "Premier signalement", "Dernier signalement",
               "Ouverture", "Dernière mise à jour", "Suites possibles", "Suites données",
               "Références scellées")


CSV_DELIMITER = ";"
_CSV_QUOTE = re.compile('[;"\r\n]')


def csv_field(text: str) -> str:
    """``text`` as ``csv.writer(delimiter=";", quoting=QUOTE_MINIMAL)`` writes it in a row:
    quoted when it holds the delimiter, a quote or a line break, with quotes doubled.

    Written out because ``csv.writer`` goes through a 94 MB worklist character by character
    (1.6 s); the test suite checks this against ``csv.writer`` itself on hostile values."""
    return '"' + text.replace('"', '""') + '"' if _CSV_QUOTE.search(text) else text


def csv_line(cells: Sequence[str]) -> str:
    return CSV_DELIMITER.join(map(csv_field, cells)) + "\r\n"


class _CsvRows:
    """The CSV lines, each cell through :func:`safe_cell` then :func:`csv_field`.

    A worklist repeats the same labels, fund sets, category sets, rules and dates: those
    cells are joined, guarded and quoted once per render (memos keyed by the text they are
    made of). Case numbers, follow-ups done and sealed references are handled row by row.
    """

    def __init__(self) -> None:
        self._cells: dict[str, str] = {}
        # keyed by fund codes: a worklist's labels come from one taxonomy, code -> label is fixed
        self._funds: dict[tuple[str, ...], tuple[str, str]] = {}
        self._rules: dict[tuple[Labelled, ...], str] = {}

    def cell(self, text: str) -> str:
        """``text`` guarded and quoted, memoised: for cells that repeat across cases."""
        out = self._cells.get(text)
        if out is None:
            out = self._cells[text] = csv_field(safe_cell(text))
        return out

    def line(self, c: CaseView) -> str:
        cell = self.cell
        key = tuple(f.fund.code for f in c.funds)
        funds = self._funds.get(key)
        if funds is None:
            funds = self._funds[key] = (
                cell(", ".join(f.fund.label for f in c.funds)),
                cell(" | ".join(f"{f.fund.label} : " + ", ".join(o.label for o in f.offers) for f in c.funds)))
        rules = self._rules.get(c.rules)
        if rules is None:
            rules = self._rules[c.rules] = cell(", ".join(r.label for r in c.rules))
        done = " | ".join(f"{r.fund.label} : {r.action.label} — {r.outcome.label} ({r.recorded_on})"
                          for f in c.funds for r in f.recorded)
        tokens = " | ".join(f"{f.fund.label} : {f.sealed_token}" for f in c.funds if f.sealed_token)
        return CSV_DELIMITER.join((
            csv_field(safe_cell(c.case_number)), cell(c.priority.label), cell(c.reason.label), cell(c.status.label),
            funds[0], cell(", ".join([cat.label for cat in c.categories])), rules, cell(c.first_signal_on),
            cell(c.last_signal_on), cell(c.opened_on), cell(c.updated_on), funds[1],
            csv_field(safe_cell(done)) if done else "", csv_field(safe_cell(tokens)))) + "\r\n"


def render_csv(wl: Worklist) -> bytes:
    """``;``-separated, UTF-8 with BOM, CRLF rows: opens cleanly in a French spreadsheet."""
    with paused_gc():
        # encoded line by line and joined as bytes: the text would be joined in 2-byte
        # characters (for the odd "—") and copied once more by a final encode
        lines = ["\ufeff".encode(), csv_line(CSV_HEADERS).encode()]
        lines += (line.encode() for line in map(_CsvRows().line, wl.cases))
        return b"".join(lines)


# ------------------------------------------------------------------------------- JSON
def _followup_json(r: FollowupView) -> dict[str, Any]:
    return {"case_number": r.case_number, "fund": r.fund.code, "action": r.action.code,
            "action_label": r.action.label, "outcome": r.outcome.code, "recorded_on": r.recorded_on,
            "recorded_by": r.recorded_by}


def worklist_dict(wl: Worklist) -> dict[str, Any]:
    return {
        "month": str(wl.month), "territory": wl.territory, "fund": wl.fund,
        "generated_at": wl.generated_at.isoformat(),
        "cases": [{
            "case_number": c.case_number, "priority": c.priority.code, "reason": c.reason.code,
            "status": c.status.code, "version": c.version, "rules": [r.code for r in c.rules],
            "categories": [{"code": cat.code, "label": cat.label} for cat in c.categories],
            "first_signal_on": c.first_signal_on, "last_signal_on": c.last_signal_on,
            "opened_on": c.opened_on, "updated_on": c.updated_on,
            "funds": [{"fund": f.fund.code, "label": f.fund.label, "sealed_ref": f.sealed_token,
                       "offers": [o.code for o in f.offers],
                       "recorded": [_followup_json(r) for r in f.recorded]} for f in c.funds],
        } for c in wl.cases],
        "reported_followups": [_followup_json(r) for r in wl.reported],
    }


def render_json(wl: Worklist) -> bytes:
    return json.dumps(worklist_dict(wl), ensure_ascii=False, indent=1).encode("utf-8")


# ------------------------------------------------------------------------------- PDF
def render_pdf(wl: Worklist) -> bytes:
    """The minutes' annex: A4 landscape, one table row per case (reportlab)."""
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import LongTable, Paragraph, SimpleDocTemplate, Spacer, TableStyle

    styles = getSampleStyleSheet()
    cell = ParagraphStyle("cell", parent=styles["BodyText"], fontName="Helvetica", fontSize=7, leading=8.5)
    head = ParagraphStyle("head", parent=cell, fontName="Helvetica-Bold", textColor=colors.white)
    blue = colors.HexColor("#000091")
    prio = {"rouge": colors.HexColor("#ce0500"), "orange": colors.HexColor("#b34000"),
            "vert": colors.HexColor("#18753c")}

    def p(text: str, style: ParagraphStyle = cell) -> Paragraph:
        return Paragraph(escape(text).replace("\n", "<br/>"), style)

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=landscape(A4), leftMargin=12 * mm, rightMargin=12 * mm,
                            topMargin=12 * mm, bottomMargin=12 * mm,
                            title=f"Revue de dossiers {wl.month} — {wl.territory}", author="HELP")
    title = ParagraphStyle("t", parent=styles["Title"], textColor=blue, fontName="Helvetica-Bold")
    story: list[Any] = [
        p("RÉPUBLIQUE FRANÇAISE", ParagraphStyle("rf", parent=cell, fontName="Helvetica-Bold", fontSize=9)),
        Paragraph(escape(f"Revue de dossiers — {wl.month.label} — territoire {wl.territory}"), title),
        p(f"{len(wl.cases)} dossier(s) ; {len(wl.reported)} suite(s) rapportée(s) ; établi le "
          f"{wl.generated_at.strftime('%d/%m/%Y %H:%M UTC')}" + (f" ; vue {wl.fund}" if wl.fund else "")),
        Spacer(1, 4 * mm),
    ]
    header = [p(h, head) for h in ("Dossier", "Priorité", "Motif", "Catégories", "Dates",
                                   "Organismes et suites", "Références scellées")]
    rows: list[list[Any]] = [header]
    style = [("BACKGROUND", (0, 0), (-1, 0), blue), ("VALIGN", (0, 0), (-1, -1), "TOP"),
             ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#dddddd"))]
    for i, c in enumerate(wl.cases, start=1):
        funds = "\n".join(
            f"{f.fund.label} : " + ("; ".join(f"{r.action.label} — {r.outcome.label} ({r.recorded_on})"
                                              for r in f.recorded) or "aucune suite enregistrée")
            for f in c.funds)
        tokens = "\n".join(f"{f.fund.label} : {f.sealed_token}" for f in c.funds if f.sealed_token)
        rows.append([p(f"{c.case_number}\n{c.status.label}"), p(c.priority.label), p(c.reason.label),
                     p(", ".join(cat.label for cat in c.categories)),
                     p(f"1er : {c.first_signal_on}\ndernier : {c.last_signal_on}"), p(funds), p(tokens)])
        style.append(("TEXTCOLOR", (1, i), (1, i), prio.get(c.priority.code, colors.black)))
    widths = [32 * mm, 16 * mm, 22 * mm, 55 * mm, 28 * mm, 62 * mm, 58 * mm]
    table = LongTable(rows, colWidths=widths, repeatRows=1)
    table.setStyle(TableStyle(style))
    story.append(table)
    if wl.reported:
        story.append(Spacer(1, 6 * mm))
        story.append(p("Suites rapportées depuis la dernière réunion",
                       ParagraphStyle("h2", parent=cell, fontName="Helvetica-Bold", fontSize=11)))
        rep = [[p(h, head) for h in ("Dossier", "Organisme", "Suite", "Issue", "Date", "Par")]]
        rep += [[p(r.case_number), p(r.fund.label), p(r.action.label), p(r.outcome.label), p(r.recorded_on),
                 p(r.recorded_by)] for r in wl.reported]
        t2 = LongTable(rep, repeatRows=1)
        t2.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, 0), blue),
                                ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#dddddd"))]))
        story.append(t2)
    doc.build(story)
    return buf.getvalue()


RENDERERS: dict[str, Callable[[Worklist], bytes]] = {
    "html": lambda wl: render_html(wl).encode("utf-8"),
    "csv": render_csv,
    "pdf": render_pdf,
    "json": render_json,
}


def render(wl: Worklist, fmt: str) -> bytes:
    if fmt not in RENDERERS:
        raise InputError(f"format inconnu : {fmt!r}", "choisissez html, csv, pdf ou json")
    return RENDERERS[fmt](wl)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing: a temp file in the same folder, then rename."""
    folder = path.resolve().parent
    if not folder.is_dir():
        raise InputError(f"dossier de sortie introuvable : {folder}", "créez-le ou choisissez un autre --out")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
