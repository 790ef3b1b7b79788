"""Statistics under statistical secrecy, attacked: from the published tables (margins,
sums, differences, successive releases) an attacker who knows the suppression rules must
recover no hidden count — on a month shaped like the demo's and on a small département
where most cells are under 11. The same attacker breaks a primary-only suppression, so
the attack is real."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from fractions import Fraction

import pytest
import sqlalchemy as sa

from services.casebook import store
from services.casebook.model import Month
from services.casebook.records import published_release
from services.casebook.stats import (
    ADDITIVE,
    THRESHOLD,
    RawTable,
    Release,
    Table,
    count_month,
    primary_secret,
    protect,
    render_csv,
    render_pdf,
)
from services.core.taxonomy import Taxonomy
from tests.support import situations as F

UTC = dt.UTC
NOV, DEC = Month(2026, 11), Month(2026, 12)


# ------------------------------------------------------------------------------- the attacker
Key = tuple[str, ...]


def attack(releases: Iterable[Release]) -> dict[Key, int]:
    """Every hidden count the published releases give away, exactly.

    Unknowns: each secret cell, keyed by (territory, month, measure, dimension, row), and each
    secret total, keyed by (territory, month, measure): the same cell or total in two
    releases is the same unknown (successive releases), and all tables of a measure share
    their total. Knowledge: the shown counts; the rules (a secret cell of a table whose total
    is shown is 1 or more; a table whose total is secret has a total of 1 to 10; a cell is
    at most its total); additive tables add up to their total. Solved by exact Gaussian
    elimination on the equations, then bound propagation to a fixpoint."""
    known: dict[Key, int] = {}
    lo: dict[Key, int] = {}
    hi: dict[Key, int] = {}
    equations: list[tuple[list[Key], Key]] = []  # sum(cells) == total
    for rel in releases:
        for t in rel.tables:
            base = (rel.scope, str(rel.month), t.measure)
            total_key = (*base, "total")
            if t.total is not None:
                known[total_key] = t.total
            else:
                lo[total_key], hi[total_key] = 1, THRESHOLD - 1
            cells = []
            for (code, _), v in zip(t.rows, t.values, strict=True):
                key = (*base, t.dimension, code)
                cells.append(key)
                if v is not None:
                    known[key] = v
                else:
                    lo.setdefault(key, 1 if t.total is not None else 0)
                    hi.setdefault(key, 10 ** 6)
                # a cell is at most its total
                hi[key] = min(hi.get(key, 10 ** 6), t.total if t.total is not None else THRESHOLD - 1)
            if t.dimension in ADDITIVE:
                equations.append((cells, total_key))
    unknown = sorted({k for k in lo if k not in known})
    found: dict[Key, int] = {}
    # 1. exact linear algebra: any unknown fixed by the equations alone
    index = {k: i for i, k in enumerate(unknown)}
    rows: list[list[Fraction]] = []
    for cells, total in equations:
        row = [Fraction(0)] * (len(unknown) + 1)
        rhs = Fraction(0)
        for key in [*cells, total]:
            sign = -1 if key == total else 1
            if key in known:
                rhs -= sign * known[key]
            else:
                row[index[key]] += sign
        row[-1] = rhs
        if any(row[:-1]):
            rows.append(row)
    pivot_row = 0
    for col in range(len(unknown)):
        pivot = next((r for r in range(pivot_row, len(rows)) if rows[r][col] != 0), None)
        if pivot is None:
            continue
        rows[pivot_row], rows[pivot] = rows[pivot], rows[pivot_row]
        p = rows[pivot_row][col]
        rows[pivot_row] = [v / p for v in rows[pivot_row]]
        for r in range(len(rows)):
            if r != pivot_row and rows[r][col] != 0:
                f = rows[r][col]
                rows[r] = [a - f * b for a, b in zip(rows[r], rows[pivot_row], strict=True)]
        pivot_row += 1
    for row in rows:
        nonzero = [i for i, v in enumerate(row[:-1]) if v != 0]
        if len(nonzero) == 1:
            found[unknown[nonzero[0]]] = int(row[-1] / row[nonzero[0]])
    # 2. bounds: each equation narrows each of its unknowns from the others' bounds
    def bound(k: Key) -> tuple[int, int]:
        return (known[k], known[k]) if k in known else (lo[k], hi[k])

    changed = True
    while changed:
        changed = False
        for cells, total in equations:
            t_lo, t_hi = bound(total)
            cell_bounds = [bound(c) for c in cells]
            s_lo, s_hi = sum(b[0] for b in cell_bounds), sum(b[1] for b in cell_bounds)
            if total not in known:
                new = (max(t_lo, s_lo), min(t_hi, s_hi))
                if new != (lo[total], hi[total]):
                    lo[total], hi[total] = new
                    changed = True
            for c, (c_lo, c_hi) in zip(cells, cell_bounds, strict=True):
                if c in known:
                    continue
                new = (max(c_lo, t_lo - (s_hi - c_hi)), min(c_hi, t_hi - (s_lo - c_lo)))
                if new != (lo[c], hi[c]):
                    lo[c], hi[c] = new
                    changed = True
    for k in unknown:
        if lo[k] == hi[k]:
            found[k] = lo[k]
    return found


def true_value(raws: dict[tuple[str, str], RawTable], key: Key) -> int:
    if key[-1] == "total":
        return next(r.total for r in raws.values() if r.measure == key[2])
    raw = raws[(key[2], key[3])]
    return raw.counts[[c for c, _ in raw.rows].index(key[4])]


# ------------------------------------------------------------------------------- data
def followups_for(situations: list, month: Month, *, seed: int, share: float) -> list:
    rnd = random.Random(seed)
    actions = {"caf": "fsl", "cpam": "ouverture_c2s_puma", "urssaf": "echeancier_paiement",
               "carsat": "plan_action_personnalise"}
    outcomes = ("propose", "accepte", "accorde", "refuse", "non_eligible", "sans_suite")
    out = []
    for k, sit in enumerate(situations):
        if rnd.random() < share:
            fund = rnd.choice([f.value for f in sit.funds])
            out.append(F.followup(0, fund, actions[fund], outcome=rnd.choice(outcomes), territory=sit.territory,
                                  recorded_at=month.start + dt.timedelta(days=rnd.randrange(27), hours=15), k=k)
                       .model_copy(update={"situation_id": sit.situation_id,
                                           "event_id": F.hex32("fu", sit.situation_id, month, k)}))
    return out


def publish(engine: sa.Engine, taxonomy: Taxonomy, month: Month) -> Release:
    rel = published_release(engine, taxonomy, territory="35", month=month, now=month.end + dt.timedelta(hours=1))
    assert rel is not None
    return rel


def raw_of(engine: sa.Engine, taxonomy: Taxonomy, month: Month) -> dict[tuple[str, str], RawTable]:
    with engine.connect() as conn:
        sits = store.situations_opened_before(conn, "35", month.end)
        fus = store.followups_before(conn, "35", month.end)
    return {(r.measure, r.dimension): r for r in count_month(taxonomy, sits, fus, month=month, scope="35")}


@pytest.mark.parametrize(("name", "cases", "share"), [("demo", 146, .3), ("petit_departement", 24, .4)])
def test_no_hidden_count_is_recovered_from_successive_releases(engine: sa.Engine, taxonomy: Taxonomy,
                                                               name: str, cases: int, share: float) -> None:
    """On SQLite and PostgreSQL (the releases are stored as published)."""
    sqlite_engine = engine
    nov = F.month_of_cases(cases, NOV, seed=7, start=1)
    with sqlite_engine.begin() as conn:
        store.apply_situations(conn, nov)
        store.apply_followups(conn, followups_for(nov, NOV, seed=8, share=share))
    nov_raw = raw_of(sqlite_engine, taxonomy, NOV)
    first = publish(sqlite_engine, taxonomy, NOV)
    # December: new cases, late follow-ups on November's, and November's cases updated
    # (a new priority): what a recomputation of November would change
    dec = F.month_of_cases(cases, DEC, seed=9, start=10_000)
    with sqlite_engine.begin() as conn:
        store.apply_situations(conn, dec)
        store.apply_situations(conn, [F.situation(n, version=2, funds=tuple(f.value for f in s.funds),
                                                  priority="rouge", occurred_at=dt.datetime(2026, 12, 3, tzinfo=UTC))
                                      for n, s in enumerate(nov[:12], start=1)])
        store.apply_followups(conn, followups_for(dec, DEC, seed=10, share=share)
                              + followups_for(nov, DEC, seed=11, share=share))
    dec_raw = raw_of(sqlite_engine, taxonomy, DEC)
    second = publish(sqlite_engine, taxonomy, DEC)
    again = publish(sqlite_engine, taxonomy, NOV)
    assert again == first  # November as published, not recomputed
    assert raw_of(sqlite_engine, taxonomy, NOV) != nov_raw  # ... though its data changed since

    releases = [first, second, again]
    hidden = [(r, t) for r in releases for t in r.tables for v in t.values if v is None]
    assert hidden, "nothing was hidden: the test data do not exercise the secrecy"
    found = attack(releases)
    assert found == {}, f"{name}: recovered {found}"
    # and nothing published shows 1 to 10 persons
    for r in releases:
        for t in r.tables:
            assert not any(v is not None and primary_secret(v) for v in (*t.values, t.total)), t
    # the published counts are the true ones
    for rel, raw in ((first, nov_raw), (second, dec_raw)):
        for t in rel.tables:
            exact = raw[(t.measure, t.dimension)]
            assert all(v is None or v == c for v, c in zip(t.values, exact.counts, strict=True))
            assert t.total is None or t.total == exact.total
    if name == "petit_departement":
        cells = [v for r in releases for t in r.tables for v in t.values]
        assert sum(v is None for v in cells) > sum(v not in (None, 0) for v in cells)  # mostly under 11


def test_the_attack_breaks_a_primary_only_suppression(sqlite_engine: sa.Engine, taxonomy: Taxonomy) -> None:
    """The same attacker against tables with only the primary suppression: it recovers counts."""
    nov = F.month_of_cases(60, NOV, seed=3, start=1, prio=(("rouge", .05), ("orange", .55), ("vert", .4)))
    with sqlite_engine.begin() as conn:
        store.apply_situations(conn, nov)
    raws = raw_of(sqlite_engine, taxonomy, NOV)

    def primary_only(raw: RawTable) -> Table:
        if primary_secret(raw.total):
            return Table(raw.measure, raw.dimension, raw.rows, (None,) * len(raw.counts), None)
        return Table(raw.measure, raw.dimension, raw.rows,
                     tuple(None if primary_secret(v) else v for v in raw.counts), raw.total)

    naive = Release("35", NOV, NOV.end, tuple(primary_only(r) for r in raws.values()))
    found = attack([naive])
    assert found, "the attack recovered nothing from a primary-only suppression"
    assert all(true_value(raws, k) == v for k, v in found.items())
    assert attack([Release("35", NOV, NOV.end, tuple(protect(r) for r in raws.values()))]) == {}


@pytest.mark.parametrize(("counts", "hidden"), [
    ((3, 40, 50), {0, 1}),         # one small cell: the next smallest goes with it
    ((5, 6, 40), {0, 1}),          # two small cells adding up to 11: enough
    ((1, 1, 30, 20), {0, 1, 3}),   # 1 + 1 is 2, not 11: a third cell
    ((0, 12, 13), set()),          # zeros and counts of 11 or more are shown
    ((0, 4, 0), {0, 1, 2}),        # a total under 11: the whole table
])
def test_protect_rules(counts: tuple[int, ...], hidden: set[int]) -> None:
    rows = tuple((f"c{i}", f"c{i}") for i in range(len(counts)))
    t = protect(RawTable("situations", "priorite", rows, counts, sum(counts)))
    assert {i for i, v in enumerate(t.values) if v is None} == hidden
    assert (t.total is None) == (sum(counts) < THRESHOLD)


def test_exports_show_secret_cells_as_s(taxonomy: Taxonomy) -> None:
    rows = (("rouge", "Rouge"), ("orange", "Orange"), ("vert", "Vert"))
    rel = Release("35", NOV, NOV.end, (protect(RawTable("situations", "priorite", rows, (3, 40, 50), 93)),))
    text = render_csv([rel]).decode("utf-8-sig")
    assert "situations;priorite;rouge;Rouge;s" in text and "situations;priorite;vert;Vert;50" in text
    assert ";3\r\n" not in text and ";40\r\n" not in text
    assert render_pdf([rel]).startswith(b"%PDF")
