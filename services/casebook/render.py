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

from services.casebook.meeting import SHEET_SUGGESTIONS, VIEW_LABEL
from services.casebook.worklist import CaseView, FollowupView, FundView, Labelled, SuggestionView, Worklist
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
    # The template renders the page around two markers, replaced by the rows in one final
    # join: passing 100 MB of rows through the template would copy them three more times.
    # The markers are random per render, so no escaped value can contain one.
    tag = secrets.token_hex(8)
    markers = (f"<!--case-rows-{tag}-->", f"<!--reported-rows-{tag}-->")
    page = environment().get_template("worklist.html").render(
        view_label=VIEW_LABEL.get(wl.view), wl=wl, counts=wl.counts(), fund_label=fund_label, web=web,
        nav="worklist",
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
        self._fund_head: dict[tuple[str, bool], str] = {}

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
            rules = (f'<br><span class="fr-text--sm">{", ".join(e(r.label) for r in c.rules)}</span>'
                     if c.rules else "")
            priority = self._priority[key] = (
                f'<td><span class="fr-badge fr-badge--{e(c.priority.code)}">{e(c.priority.label)}</span>{rules}</td>\n')
        tags = []
        for cat in c.categories:
            tag = self._tag.get(cat.label)
            if tag is None:
                tag = self._tag[cat.label] = f'<span class="fr-tag">{e(cat.label)}</span>'
            tags.append(tag)
        lead = c.lead.code if c.lead else ""
        suggested = "".join(f"<li>{e(s.action.label)} <span class=\"fr-hint\">({e(s.fund.label)})</span></li>"
                            for s in c.suggestions[:SHEET_SUGGESTIONS])
        change = f'<br><strong class="fr-change">{e(c.change.label)}</strong>' if c.change else ""
        return (f'<tr>\n<td>{head}<br><span class="fr-badge fr-badge--info">{e(c.reason.label)}</span> '
                f'<span class="fr-text--sm">{e(c.status.label)}</span>{change}</td>\n'
                f'{priority}<td>{"".join(tags)}</td>\n<td class="fr-text--sm">{e(c.signals_line)}</td>\n'
                f'<td class="fr-text--sm">{"".join(self._fund(f, f.fund.code == lead) for f in c.funds)}</td>\n'
                f'<td class="fr-text--sm">{f"<ol>{suggested}</ol>" if suggested else "—"}</td>\n'
                '<td class="fr-decision"></td>\n</tr>\n')

    def _fund(self, f: FundView, lead: bool) -> str:
        fund = f.fund
        key = (fund.label, lead)
        head = self._fund_head.get(key)
        if head is None:
            head = self._fund_head[key] = (f"<strong>{self.e(fund.label)}</strong>"
                                           + (" (chef de file)" if lead else ""))
        token = (f' <code class="fr-token" title="{_escape(f.sealed_token)}">{_escape(f.sealed_short)}</code>'
                 if f.sealed_token and f.sealed_short else "")
        done = ""
        if f.recorded:
            e = self.e
            done = "<br>\nSuite : " + " ; ".join(f"{e(r.action.label)} — {e(r.outcome.label)} ({e(r.recorded_on)})"
                                                for r in f.recorded)
        return f"{head}{token}{done}<br>\n"

    def reported(self, r: FollowupView) -> str:
        e = self.e
        return (f"<tr><td>{_escape(r.case_number)}</td><td>{e(r.fund.label)}</td><td>{e(r.action.label)}</td>"
                f"<td>{e(r.outcome.label)}</td><td>{e(r.recorded_on)}</td><td>{e(r.recorded_by)}</td></tr>\n")


# ------------------------------------------------------------------------------- CSV
CSV_HEADERS = ("N° de dossier", "Priorité", "Motif d'examen", "Statut", "Organismes concernés",
               "Catégories", "Règles déclenchées", "Premier signalement", "Dernier signalement",
               "Ouverture", "Dernière mise à jour", "Suites possibles", "Suites données",
               "Références scellées", "Chef de file", "Suites proposées")


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
        self._suggested: dict[tuple[SuggestionView, ...], str] = {}

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
            csv_field(safe_cell(done)) if done else "", csv_field(safe_cell(tokens)),
            cell(c.lead.label) if c.lead else "", self.suggested(c))) + "\r\n"

    def suggested(self, c: CaseView) -> str:
        found = self._suggested.get(c.suggestions)
        if found is None:
            found = self._suggested[c.suggestions] = self.cell(
                " | ".join(f"{s.action.label} ({s.fund.label})" for s in c.suggestions))
        return found


def render_csv(wl: Worklist) -> bytes:
    """``;``-separated, UTF-8 with BOM, CRLF rows: opens cleanly in a French spreadsheet."""
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
        "month": str(wl.month), "territory": wl.territory, "fund": wl.fund, "view": wl.view,
        "generated_at": wl.generated_at.isoformat(),
        "cases": [{
            "case_number": c.case_number, "priority": c.priority.code, "reason": c.reason.code,
            "status": c.status.code, "version": c.version, "rules": [r.code for r in c.rules],
            "categories": [{"code": cat.code, "label": cat.label} for cat in c.categories],
            "first_signal_on": c.first_signal_on, "last_signal_on": c.last_signal_on,
            "opened_on": c.opened_on, "updated_on": c.updated_on,
            "lead": c.lead.code if c.lead else None,
            "suggestions": [{"fund": sg.fund.code, "action": sg.action.code, "weight": sg.weight}
                            for sg in c.suggestions],
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
    """The meeting's minutes (procès-verbal), A4 landscape (reportlab): a title page with the
    figures, the rules applied and the participants by fund; then one row per case with an
    empty column for the decision and notes; "Page n / N" at the foot of every page."""
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.pdfgen.canvas import Canvas
    from reportlab.platypus import LongTable, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    cell = ParagraphStyle("cell", parent=styles["BodyText"], fontName="Helvetica", fontSize=7, leading=8.3)
    head = ParagraphStyle("head", parent=cell, fontName="Helvetica-Bold", textColor=colors.white)
    body = ParagraphStyle("body", parent=cell, fontSize=9.5, leading=12)
    h2 = ParagraphStyle("h2", parent=cell, fontName="Helvetica-Bold", fontSize=11, leading=14, spaceBefore=6,
                        spaceAfter=3)
    blue = colors.HexColor("#000091")
    grid = colors.HexColor("#bbbbbb")
    prio = {"rouge": colors.HexColor("#ce0500"), "orange": colors.HexColor("#b34000"),
            "vert": colors.HexColor("#18753c")}
    generated = wl.generated_at.strftime("%d/%m/%Y %H:%M UTC")

    def p(text: str, style: ParagraphStyle = cell) -> Paragraph:
        return Paragraph(escape(text).replace("\n", "<br/>"), style)

    class NumberedCanvas(Canvas):  # type: ignore[misc]  # reportlab has no type hints
        """Every page's foot: "Page n / N" (N known once all pages are laid out)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                self.setFont("Helvetica", 7)
                self.setFillColor(colors.HexColor("#3a3a3a"))
                self.drawString(10 * mm, 6 * mm, f"Revue de dossiers {wl.month} — territoire {wl.territory}"
                                                 " — document de travail, ne pas diffuser hors de la réunion")
                self.drawRightString(landscape(A4)[0] - 10 * mm, 6 * mm, f"Page {self._pageNumber} / {total}")
                super().showPage()
            super().save()

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=landscape(A4), leftMargin=10 * mm, rightMargin=10 * mm,
                            topMargin=9 * mm, bottomMargin=11 * mm,
                            title=f"Procès-verbal de la revue de dossiers {wl.month} — {wl.territory}", author="HELP")
    title = ParagraphStyle("t", parent=styles["Title"], textColor=blue, fontName="Helvetica-Bold", fontSize=18)
    counts = wl.counts()
    reasons: dict[str, int] = {}
    for c in wl.cases:
        reasons[c.reason.label] = reasons.get(c.reason.label, 0) + 1
    view = VIEW_LABEL.get(wl.view) or f"Vue de l'organisme {wl.fund}"
    figures = [["Dossiers à examiner", str(len(wl.cases))],
               ["dont priorité rouge / orange / verte", f"{counts['rouge']} / {counts['orange']} / {counts['vert']}"],
               *[[f"dont motif « {label} »", str(n)] for label, n in sorted(reasons.items())],
               ["Suites rapportées depuis la dernière réunion", str(len(wl.reported))]]
    fig = Table([[p(a, body), p(b, body)] for a, b in figures], colWidths=[110 * mm, 40 * mm], hAlign="LEFT")
    fig.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.25, grid), ("ALIGN", (1, 0), (1, -1), "RIGHT")]))
    story: list[Any] = [
        p("RÉPUBLIQUE FRANÇAISE", ParagraphStyle("rf", parent=cell, fontName="Helvetica-Bold", fontSize=9)),
        Paragraph(escape(f"Procès-verbal de la revue de dossiers — {wl.month.label} — territoire {wl.territory}"),
                  title),
        p(f"Établi le {generated}. {view}.", body), Spacer(1, 3 * mm),
        p("Chiffres du mois", h2), fig,
    ]
    rules = sorted({(r.label, r.code) for c in wl.cases for r in c.rules})
    if rules:
        story += [p("Règles appliquées (schemas/rules.yaml)", h2),
                  *[p(f"• {label}", body) for label, _ in rules]]
    story += [p("Participants par organisme", h2)]
    funds = sorted({(f.fund.label, f.fund.code) for c in wl.cases for f in c.funds})
    present = wl.participants or {}
    part = [[p("Organisme", head), p("Participants (fonction, sans nom dans ce document)", head)]]
    part += [[p(label, body), p(", ".join(present.get(code, ())) or "", body)] for label, code in funds]
    pt = Table(part, colWidths=[40 * mm, 150 * mm], hAlign="LEFT", rowHeights=[None] + [9 * mm] * len(funds))
    pt.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, 0), blue), ("GRID", (0, 0), (-1, -1), 0.25, grid)]))
    story += [pt, PageBreak()]

    header = [p(h, head) for h in ("Dossier", "Priorité et règles", "Catégories", "Organismes (chef de file)",
                                   "Suites proposées", "Décision et notes")]
    rows: list[list[Any]] = [header]
    style = [("BACKGROUND", (0, 0), (-1, 0), blue), ("VALIGN", (0, 0), (-1, -1), "TOP"),
             ("GRID", (0, 0), (-1, -1), 0.25, grid), ("TOPPADDING", (0, 0), (-1, -1), 1.5),
             ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]
    for i, c in enumerate(wl.cases, start=1):
        funds_text = "\n".join(
            f"{f.fund.label}{' (chef de file)' if c.lead and c.lead.code == f.fund.code else ''}"
            + (f" {f.sealed_short}" if f.sealed_short else "")
            + "".join(f"\n  suite : {r.action.label} — {r.outcome.label} ({r.recorded_on})" for r in f.recorded)
            for f in c.funds)
        suggested = "\n".join(f"{n}. {sg.action.label} ({sg.fund.label})"
                              for n, sg in enumerate(c.suggestions[:SHEET_SUGGESTIONS], start=1)) or "—"
        rows.append([p(f"{c.case_number}\n{c.reason.label} · {c.status.label}\n{c.signals_line}"),
                     p(f"{c.priority.label}\n" + ", ".join(r.label for r in c.rules)),
                     p(", ".join(cat.label for cat in c.categories)), p(funds_text), p(suggested), ""])
        style.append(("TEXTCOLOR", (1, i), (1, i), prio.get(c.priority.code, colors.black)))
    widths = [38 * mm, 34 * mm, 52 * mm, 46 * mm, 58 * mm, 49 * mm]
    table = LongTable(rows, colWidths=widths, repeatRows=1)
    table.setStyle(TableStyle(style))
    story.append(table)
    if wl.reported:
        story.append(p("Suites rapportées depuis la dernière réunion", h2))
        rep = [[p(h, head) for h in ("Dossier", "Organisme", "Suite", "Issue", "Date", "Par")]]
        rep += [[p(r.case_number), p(r.fund.label), p(r.action.label), p(r.outcome.label), p(r.recorded_on),
                 p(r.recorded_by)] for r in wl.reported]
        t2 = LongTable(rep, repeatRows=1)
        t2.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, 0), blue), ("GRID", (0, 0), (-1, -1), 0.25, grid)]))
        story.append(t2)
    story += [Spacer(1, 6 * mm), p("Le secrétaire de séance : ____________________    Date : ____________", body)]
    doc.build(story, canvasmaker=NumberedCanvas)
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
