"""Monthly statistics under statistical secrecy: how many persons, where, what followed.

A month's release holds one-way tables, each a count of *persons* (situations) by one
dimension, with its total:

- ``situations``: situations opened during the month, by priority, rule, category, fund;
- ``signalees``: persons with a signal observed during the month, by priority and fund;
- ``suites``: persons with a follow-up recorded during the month, by fund and outcome.

A release is per territory (the meeting's): "where" is the territory of the release. A
person counts once per cell; a dimension where a person has one value (priority) is
*additive* (the cells sum to the total), the others are not (a situation has several
categories, funds, rules). Tables across territories are not published yet: a territory
hidden there would be recomputed from that territory's own release, unless both are
protected together.

Secrecy (:func:`protect`), the rules the attack test checks:

1. primary: a count of 1 to 10 persons is never shown (0 is: nobody);
2. a table whose total is secret is secret whole (zeros included), so nothing is learnt
   from the cells adding up to a small total;
3. secondary, additive tables: if some cells are secret, at least two are, and what they
   add up to (total minus the shown cells) is at least 11 and more than their number (so
   no secret cell is pinned to a single value by the margin); the smallest shown non-zero
   cells are hidden until it holds, else the whole table;
4. successive releases: a month is published once it has ended, then frozen (stored as
   published): a later release repeats it unchanged, so no difference between releases
   exposes a secret cell, and the current month is never published (no provisional figures).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.casebook.model import Followup, Month, Situation
from services.core.taxonomy import Taxonomy

THRESHOLD = 11  # the smallest count of persons shown (1 to 10 never are)
SECRET = "s"  # how a secret cell is published

MEASURES = {
    "situations": "Situations ouvertes dans le mois (personnes)",
    "signalees": "Personnes ayant un signalement observé dans le mois",
    "suites": "Personnes ayant une suite enregistrée dans le mois",
}
DIMENSIONS = {"priorite": "Priorité", "regle": "Règle", "categorie": "Catégorie",
              "organisme": "Organisme", "issue": "Issue de la suite"}
ADDITIVE = frozenset({"priorite"})


@dataclass(frozen=True)
class Table:
    """One published table: ``values`` and ``total`` are counts, or None where secret."""

    measure: str
    dimension: str
    rows: tuple[tuple[str, str], ...]  # (code, label)
    values: tuple[int | None, ...]
    total: int | None

    @property
    def additive(self) -> bool:
        return self.dimension in ADDITIVE

    @property
    def title(self) -> str:
        return f"{MEASURES[self.measure]}, par {DIMENSIONS[self.dimension].lower()}"

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, "dimension": self.dimension, "rows": [list(r) for r in self.rows],
                "values": list(self.values), "total": self.total}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Table:
        return cls(str(d["measure"]), str(d["dimension"]), tuple((str(a), str(b)) for a, b in d["rows"]),
                   tuple(None if v is None else int(v) for v in d["values"]),
                   None if d["total"] is None else int(d["total"]))


@dataclass(frozen=True)
class Release:
    scope: str  # the territory
    month: Month
    published_at: dt.datetime
    tables: tuple[Table, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "month": str(self.month), "published_at": self.published_at.isoformat(),
                "tables": [t.to_dict() for t in self.tables]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Release:
        return cls(str(d["scope"]), Month.parse(str(d["month"])), dt.datetime.fromisoformat(str(d["published_at"])),
                   tuple(Table.from_dict(t) for t in d["tables"]))


@dataclass(frozen=True)
class RawTable:
    """Exact counts before protection (never shown, never stored)."""

    measure: str
    dimension: str
    rows: tuple[tuple[str, str], ...]
    counts: tuple[int, ...]
    total: int


# ------------------------------------------------------------------------------- counting
def _in(month: Month, moment: dt.datetime | dt.date) -> bool:
    if isinstance(moment, dt.datetime):
        return month.start <= moment < month.end
    return month.start.date() <= moment < month.end.date()


def count_month(taxonomy: Taxonomy, situations: Iterable[Situation], followups: Iterable[Followup], *,
                month: Month, scope: str, rule_titles: Mapping[str, str] | None = None) -> tuple[RawTable, ...]:
    """The exact counts of ``month`` in the territory ``scope``."""
    titles = dict(rule_titles or {})
    fund_label = {f.value: info.libelle for f, info in taxonomy.funds.items()}
    cat_label = {c.code: c.libelle for c in taxonomy.categories if c.exchangeable}
    outcome_label = {o.code.value: o.libelle for o in taxonomy.issues}
    prio_label = {"rouge": "Rouge", "orange": "Orange", "vert": "Vert"}
    sits = [s for s in situations if s.territory == scope]
    by_id = {s.situation_id: s for s in sits}

    def table(measure: str, dimension: str, rows: Sequence[tuple[str, str]],
              members: Sequence[tuple[str, Iterable[str]]]) -> RawTable:
        """``members``: (person, the row codes that person counts in)."""
        persons: dict[str, set[str]] = {code: set() for code, _ in rows}
        everyone: set[str] = set()
        for person, codes in members:
            everyone.add(person)
            for code in codes:
                if code in persons:
                    persons[code].add(person)
        return RawTable(measure, dimension, tuple(rows), tuple(len(persons[c]) for c, _ in rows), len(everyone))

    out: list[RawTable] = []
    opened = [s for s in sits if _in(month, s.opened_at)]
    signalled = [s for s in sits if _in(month, s.last_signal_on) and s.opened_at < month.end]
    prio_rows = tuple(prio_label.items())
    fund_rows = tuple(fund_label.items())

    def cats(s: Situation) -> list[str]:
        return [c["code"] for c in s.categories if c["code"] in cat_label]

    out.append(table("situations", "priorite", prio_rows, [(s.situation_id, (s.priority,)) for s in opened]))
    rule_codes = sorted({r for s in sits for r in s.rules} | set(titles))
    out.append(table("situations", "regle", tuple((r, titles.get(r, r)) for r in rule_codes),
                     [(s.situation_id, s.rules) for s in opened]))
    out.append(table("situations", "categorie", tuple(cat_label.items()), [(s.situation_id, cats(s)) for s in opened]))
    out.append(table("situations", "organisme", fund_rows, [(s.situation_id, s.funds) for s in opened]))
    out.append(table("signalees", "priorite", prio_rows, [(s.situation_id, (s.priority,)) for s in signalled]))
    out.append(table("signalees", "organisme", fund_rows, [(s.situation_id, s.funds) for s in signalled]))
    done = [(f.situation_id, f) for f in followups if f.situation_id in by_id and _in(month, f.recorded_at)]
    out.append(table("suites", "organisme", fund_rows, [(sid, (f.fund,)) for sid, f in done]))
    out.append(table("suites", "issue", tuple(outcome_label.items()), [(sid, (f.outcome,)) for sid, f in done]))
    return tuple(out)


# ------------------------------------------------------------------------------- secrecy
def primary_secret(value: int) -> bool:
    return 1 <= value < THRESHOLD


def protect(raw: RawTable) -> Table:
    """The table as it may be published (see the module docstring for the rules)."""
    n = len(raw.counts)
    whole = Table(raw.measure, raw.dimension, raw.rows, (None,) * n, None)
    if primary_secret(raw.total):
        return whole
    hidden = {i for i, v in enumerate(raw.counts) if primary_secret(v)}
    if raw.dimension in ADDITIVE and hidden:
        while True:
            masked = sum(raw.counts[i] for i in hidden)
            if len(hidden) >= 2 and masked >= THRESHOLD and masked > len(hidden):
                break
            shown = sorted((raw.counts[i], i) for i in range(n) if i not in hidden and raw.counts[i] > 0)
            if not shown:
                return whole
            hidden.add(shown[0][1])
    values = tuple(None if i in hidden else v for i, v in enumerate(raw.counts))
    return Table(raw.measure, raw.dimension, raw.rows, values, raw.total)


def release(taxonomy: Taxonomy, situations: Iterable[Situation], followups: Iterable[Followup], *, month: Month,
            scope: str, now: dt.datetime, rule_titles: Mapping[str, str] | None = None) -> Release:
    """The protected release of an ended ``month`` (``now`` past its end)."""
    if now < month.end:
        raise ValueError(f"{month} has not ended: its statistics are not published yet")
    raws = count_month(taxonomy, situations, followups, month=month, scope=scope, rule_titles=rule_titles)
    return Release(scope, month, now, tuple(protect(r) for r in raws))


def shown(value: int | None) -> str:
    return SECRET if value is None else str(value)


# ------------------------------------------------------------------------------- exports
def render_csv(releases: Sequence[Release]) -> bytes:
    """``;``-separated, UTF-8 with BOM: month, scope, measure, dimension, code, label, count."""
    from services.casebook.render import csv_line

    lines = [csv_line(("Mois", "Périmètre", "Mesure", "Dimension", "Code", "Libellé", "Personnes"))]
    for rel in releases:
        for t in rel.tables:
            for (code, label), v in zip(t.rows, t.values, strict=True):
                lines.append(csv_line((str(rel.month), rel.scope, t.measure, t.dimension, code, label, shown(v))))
            lines.append(csv_line((str(rel.month), rel.scope, t.measure, t.dimension, "total", "Total",
                                   shown(t.total))))
    return ("\ufeff" + "".join(lines)).encode("utf-8")


def render_pdf(releases: Sequence[Release]) -> bytes:
    """The release as a PDF for the funds' managers and the ARS/CNIL (A4 portrait)."""
    import io
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, TableStyle
    from reportlab.platypus import Table as RLTable

    styles = getSampleStyleSheet()
    cell = ParagraphStyle("c", parent=styles["BodyText"], fontName="Helvetica", fontSize=8, leading=10)
    h = ParagraphStyle("h", parent=cell, fontName="Helvetica-Bold", fontSize=10, leading=13, spaceBefore=6)
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm, topMargin=15 * mm,
                            bottomMargin=15 * mm, title="Statistiques HELP", author="HELP")
    story: list[Any] = [Paragraph("Statistiques de la revue de dossiers", styles["Title"]),
                        Paragraph(escape(SECRECY_NOTE), cell), Spacer(1, 4 * mm)]
    for rel in releases:
        story.append(Paragraph(escape(f"{rel.month.label} — territoire {rel.scope}"), styles["Heading2"]))
        for t in rel.tables:
            data = [[Paragraph(escape(label), cell), shown(v)] for (_, label), v in zip(t.rows, t.values, strict=True)]
            data.append([Paragraph("<b>Total</b>", cell), shown(t.total)])
            tbl = RLTable(data, colWidths=[130 * mm, 30 * mm], hAlign="LEFT")
            tbl.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#bbbbbb")),
                                     ("ALIGN", (1, 0), (1, -1), "RIGHT")]))
            story.append(KeepTogether([Paragraph(escape(t.title), h), tbl]))
    doc.build(story)
    return buf.getvalue()


SECRECY_NOTE = ("Secret statistique : « s » marque un effectif de 1 à 10 personnes, ou un effectif masqué "
                "pour qu'aucun effectif de 1 à 10 ne puisse se déduire des totaux ou des autres publications. "
                "Un mois est publié une fois clos, puis n'est plus modifié.")
