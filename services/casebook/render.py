"""The worklist in every format: HTML for the meeting, CSV for a French spreadsheet, PDF for
the minutes, JSON for machines; and the atomic write every export goes through.

All four are built from the same :class:`~services.casebook.worklist.Worklist`, so what is
filtered there (medical categories, other funds' references) cannot reappear here. HTML is
rendered by Jinja2 with autoescaping on for every template; CSV cells that a spreadsheet
would run as a formula are neutralised (OWASP "CSV injection").
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from services.casebook.model import paused_gc
from services.casebook.worklist import CaseView, FollowupView, Worklist
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
    with paused_gc():
        return environment().get_template("worklist.html").render(
            offers=offers, wl=wl, counts=wl.counts(), fund_label=fund_label, web=web, nav="worklist",
            generated=wl.generated_at.strftime("%d/%m/%Y à %H:%M UTC"), **context)


# ------------------------------------------------------------------------------- CSV
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ tab or CR gets a quote before it."""
    return "'" + value if value.startswith(_FORMULA_START) else value


CSV_HEADERS = ("N° de dossier", "Priorité", "Motif d'examen", "Statut", "Organismes concernés",
               "Catégories", "Règles déclenchées", "Premier signalement", "Dernier signalement",
               "Ouverture", "Dernière mise à jour", "Suites possibles", "Suites données",
               "Références scellées")


def _offers_text(c: CaseView, cache: dict[tuple[str, ...], str]) -> str:
    key = tuple(f.fund.code for f in c.funds)
    text = cache.get(key)
    if text is None:
        text = cache[key] = " | ".join(
            f"{f.fund.label} : " + ", ".join(o.label for o in f.offers) for f in c.funds)
    return text


def _case_row(c: CaseView, cache: dict[tuple[str, ...], str]) -> list[str]:
    offers = _offers_text(c, cache)
    done = " | ".join(f"{r.fund.label} : {r.action.label} — {r.outcome.label} ({r.recorded_on})"
                      for f in c.funds for r in f.recorded)
    tokens = " | ".join(f"{f.fund.label} : {f.sealed_token}" for f in c.funds if f.sealed_token)
    return [c.case_number, c.priority.label, c.reason.label, c.status.label,
            ", ".join(f.fund.label for f in c.funds), ", ".join(cat.label for cat in c.categories),
            ", ".join(c.rules), c.first_signal_on, c.last_signal_on, c.opened_on, c.updated_on,
            offers, done, tokens]


def render_csv(wl: Worklist) -> bytes:
    """``;``-separated, UTF-8 with BOM, CRLF rows: opens cleanly in a French spreadsheet."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_HEADERS)
    with paused_gc():
        cache: dict[tuple[str, ...], str] = {}  # per call: labels come from this worklist's taxonomy
        writer.writerows([safe_cell(v) for v in _case_row(c, cache)] for c in wl.cases)
    return ("\ufeff" + out.getvalue()).encode("utf-8")


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
            "status": c.status.code, "version": c.version, "rules": list(c.rules),
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
