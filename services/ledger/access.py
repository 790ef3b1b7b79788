"""« Qui a consulté mes informations ? » — a person's access report, made at their fund.

``help-exchange access-report --fund caf --reference DOSSIER --extract EXTRAIT.csv`` runs at
the fund, which alone maps its own file number to the person: the fund's extracts give the
reference's NIR (never printed), hence the person's pseudonym (the exchange key the fund
holds) and the ids of the signals the fund sent about them (its id key):
:func:`services.producer.subject.person_behind`. The report lists every ledger entry about
that person (:class:`Person`):

* entries whose ``subject_commitment`` the pseudonym opens (or, for entries written before
  commitments, whose ``subject`` is the pseudonym): situations, consents, reveals, views;
* receipts of the signals the fund sent about them (``ref`` = one of those signal ids);
* entries about the person's cases (``case_id``): follow-ups, views of the case;

each with when, which fund or role, what, why (purpose and legal basis), and an inclusion
proof to the newest checkpoint (with its cosignatures), in French (HTML and PDF) and as JSON
(``help-exchange-ledger/access-report/1``) whose ``events`` are inclusion proofs that
anyone checks with standard tools (Go's sumdb/note and sumdb/tlog: docs/audit.md §5).
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
from dataclasses import dataclass
from typing import Any, Final

from services.core.types import Fund
from services.ledger.checkpoint import parse_checkpoint_text, parse_note
from services.ledger.entries import Action, LedgerLegalBasis, LedgerPurpose, subject_commitment
from services.ledger.merkle import inclusion_proof
from services.ledger.proofs import REPORT_FORMAT, inclusion_document
from services.ledger.store import Ledger

_RECEIPTS: Final = (Action.SIGNALEMENT_ACCEPTE.value, Action.SIGNALEMENT_REJETE.value)


@dataclass(frozen=True)
class Person:
    """What the fund knows of the person behind one of its references (kept in memory)."""

    fund: Fund
    pseudonym: str
    signal_ids: frozenset[str]


@dataclass(frozen=True)
class Event:
    index: int
    data: bytes
    document: dict[str, Any]

    @property
    def line(self) -> dict[str, str]:
        """The French line of the report."""
        d = self.document
        who = d["actor"] + (f" ({Fund(d['fund']).value.upper()})" if d.get("fund") else "")
        return {
            "quand": d["time"][:19].replace("T", " ") + " UTC",
            "qui": who,
            "quoi": Action(d["action"]).label,
            "pourquoi": LedgerPurpose(d["purpose"]).label,
            "base_legale": LedgerLegalBasis(d["legal_basis"]).label,
        }


def find_events(ledger: Ledger, person: Person) -> list[Event]:
    """Every entry about ``person`` (see the module docstring), in ledger order."""
    found: dict[int, bytes] = {}
    for index, data in ledger.query(pseudonym=person.pseudonym):
        found[index] = data
    cases = set()
    for data in found.values():
        doc = json.loads(data)
        if doc.get("case_id"):
            cases.add(doc["case_id"])
    for case in sorted(cases):
        for index, data in ledger.query(case_id=case):
            found[index] = data
    if person.signal_ids:
        wanted = {i.encode() for i in person.signal_ids}
        for action in _RECEIPTS:
            for index, data in ledger.query(action=action):
                at = data.find(b'"ref":"')  # canonical bytes: one "ref" member, 32 hex
                if at >= 0 and data[at + 7 : at + 39] in wanted:
                    found[index] = data
    events = []
    for index in sorted(found):
        doc = json.loads(found[index])
        commitment = doc.get("subject_commitment")
        if commitment is not None and doc.get("case_id") not in cases and \
                commitment != subject_commitment(person.pseudonym, doc["entry_id"]):
            continue  # not this person (an index collision never makes a line)
        events.append(Event(index, found[index], doc))
    return events


def build_report(ledger: Ledger, person: Person, *, now: dt.datetime | None = None
                 ) -> dict[str, Any]:
    """The JSON report: each event with its proof to the newest checkpoint the witnesses
    cosigned that holds it, else to the newest checkpoint (signed now if none covers the
    tree), flagged ``temoins`` = [] ("en attente de cosignature")."""
    newest = ledger.checkpoint(now)
    size = _size(newest)
    witnessed = ledger.published_checkpoint()
    witnessed_size = _size(witnessed) if witnessed is not None else 0
    events = [e for e in find_events(ledger, person) if e.index < size]
    leaves = ledger.leaf_hashes(size) if events else []
    lines = []
    for e in events:
        note, at = ((witnessed, witnessed_size) if witnessed is not None
                    and e.index < witnessed_size else (newest, size))
        cosigners = [sig.name for sig in parse_note(note).signatures][1:]
        lines.append({**inclusion_document(e.data, e.index, at,
                                           inclusion_proof(e.index, leaves, at), None, note),
                      "ligne": e.line, "temoins": cosigners})
    return {
        "format": REPORT_FORMAT,
        "fund": person.fund.value,
        "generated_at": (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "checkpoint": witnessed or newest,
        "cosigned_by": [sig.name for sig in parse_note(witnessed or newest).signatures][1:],
        "events": lines,
    }


def _size(note: str) -> int:
    return parse_checkpoint_text(parse_note(note).text)[1]


_HEAD: Final = ("Quand", "Qui (organisme ou rôle)", "Quoi", "Pourquoi", "Base légale",
                "Preuve")


def render_html(report: dict[str, Any], reference: str) -> str:
    """The report for the person, in French."""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in e["ligne"].values())
        + f"<td>entrée n° {e['leaf_index']} / {e['tree_size']}"
        + ("" if e["temoins"] else " (en attente de cosignature)") + "</td></tr>"
        for e in report["events"])
    cosigned = ", ".join(report["cosigned_by"]) or "aucun témoin (point de contrôle non cosigné)"
    return f"""<!doctype html>
<html lang="fr"><head><meta charset="utf-8">
<title>Qui a consulté mes informations ?</title>
<style>body{{font-family:Marianne,Arial,sans-serif;margin:2em;color:#161616}}
h1{{color:#000091}}table{{border-collapse:collapse;width:100%}}
th{{background:#000091;color:#fff;text-align:left}}td,th{{border:1px solid #ddd;padding:.4em}}
</style></head><body>
<p><strong>RÉPUBLIQUE FRANÇAISE</strong></p>
<h1>Qui a consulté mes informations ?</h1>
<p>Dossier {html.escape(reference)} ({html.escape(report['fund'].upper())}) — relevé établi
le {html.escape(report['generated_at'])}. {len(report['events'])} événement(s) du journal
d'audit de l'échange HELP (article L115-2-1 du code de la sécurité sociale) vous concernent.</p>
<table><thead><tr>{''.join(f'<th>{h}</th>' for h in _HEAD)}</tr></thead>
<tbody>{rows}</tbody></table>
<p>Chaque ligne est accompagnée, dans le fichier JSON joint, d'une preuve d'inclusion dans
le journal (RFC 9162) jusqu'à un point de contrôle signé, cosigné par : {html.escape(cosigned)}.
Toute personne peut la vérifier avec des outils standard, sans nous faire confiance.</p>
</body></html>
"""


def render_pdf(report: dict[str, Any], reference: str) -> bytes:
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import LongTable, Paragraph, SimpleDocTemplate, Spacer, TableStyle

    styles = getSampleStyleSheet()
    cell = ParagraphStyle("cell", parent=styles["BodyText"], fontName="Helvetica", fontSize=7.5,
                          leading=9)
    head = ParagraphStyle("head", parent=cell, fontName="Helvetica-Bold", textColor=colors.white)
    blue = colors.HexColor("#000091")
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=12 * mm, rightMargin=12 * mm,
                            topMargin=12 * mm, bottomMargin=12 * mm,
                            title="Qui a consulté mes informations ?", author="HELP")
    title = ParagraphStyle("t", parent=styles["Title"], textColor=blue, fontName="Helvetica-Bold")
    cosigned = ", ".join(report["cosigned_by"]) or "aucun témoin"
    story: list[Any] = [
        Paragraph("RÉPUBLIQUE FRANÇAISE", ParagraphStyle("rf", parent=cell,
                                                         fontName="Helvetica-Bold")),
        Paragraph("Qui a consulté mes informations ?", title),
        Paragraph(escape(f"Dossier {reference} ({report['fund'].upper()}) — relevé établi le "
                         f"{report['generated_at']} — {len(report['events'])} événement(s)"),
                  cell),
        Spacer(1, 4 * mm),
    ]
    rows: list[list[Any]] = [[Paragraph(h, head) for h in _HEAD]]
    for e in report["events"]:
        rows.append([Paragraph(escape(v), cell) for v in e["ligne"].values()]
                    + [Paragraph(f"n° {e['leaf_index']} / {e['tree_size']}"
                                 + ("" if e["temoins"] else " (en attente de cosignature)"),
                                 cell)])
    table = LongTable(rows, repeatRows=1, colWidths=[30 * mm, 34 * mm, 34 * mm, 32 * mm,
                                                     34 * mm, 22 * mm])
    table.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, 0), blue),
                               ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#dddddd"))]))
    story += [table, Spacer(1, 4 * mm), Paragraph(escape(
        "Chaque ligne a une preuve d'inclusion (RFC 9162) jusqu'à un point de contrôle signé, "
        f"cosigné par : {cosigned} (fichier JSON joint, vérifiable avec des outils standard)."),
        cell)]
    doc.build(story)
    return buf.getvalue()
