"""Times the monthly worklist (query + HTML + CSV) for 10,000 and 100,000 situations on SQLite.

Run: ``.venv/bin/python -m bench.worklist [--repeat N]``. Target: under 10 s for 100,000
situations. The situations are valid contract events (as the correlator publishes them),
loaded through the casebook's own repository; every one of them is on the month's worklist
(worst case). Each size is timed ``--repeat`` times (default 3) on the same store and the
median run is reported, with the machine's load average: the bench machine is shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import emit
from services.casebook import store
from services.casebook.model import Month
from services.casebook.render import render_csv, render_html
from services.casebook.worklist import load_worklist
from services.core.messages import (
    FollowupEvent,
    FundRef,
    Pseudonym,
    SealedRef,
    SharedCategory,
    SituationEvent,
)
from services.core.taxonomy import Taxonomy
from services.core.types import Fund, Outcome, Priority, Purpose
from services.platform.db import open_engine
from services.platform.runtime import paused_gc
from services.platform.settings import load_settings

UTC = dt.UTC
FUND_SETS = [(Fund.CAF, Fund.URSSAF), (Fund.CAF, Fund.CPAM), (Fund.CPAM, Fund.CARSAT, Fund.CAF)]
CATS = {Fund.CAF: "impaye_loyer", Fund.URSSAF: "impaye_cotisations", Fund.CPAM: "non_recours_c2s_puma",
        Fund.CARSAT: "retraite_isole"}
ALL = [Fund.CAF, Fund.CPAM, Fund.URSSAF, Fund.CARSAT]


def _b64(n: int, *seed: object) -> str:
    import base64

    raw = hashlib.sha256(repr(seed).encode()).digest() * 2
    return base64.urlsafe_b64encode(raw[:n]).rstrip(b"=").decode()


def situations(count: int) -> list[SituationEvent]:
    start = dt.datetime(2026, 11, 1, tzinfo=UTC)
    prios = [Priority.ROUGE, Priority.ORANGE, Priority.VERT]
    out = []
    for i in range(count):
        funds = FUND_SETS[i % 3]
        occurred = start + dt.timedelta(seconds=i * 20)
        out.append(SituationEvent(
            schema_version="1.0", event_id=f"{i:032x}", situation_id=f"{i + 1:032x}", version=1,
            kind="ouverte", occurred_at=occurred, territory="35",
            pseudonym=Pseudonym(key_id="exch-2026-01", value=_b64(32, "p", i)),
            funds=list(funds),
            categories=[SharedCategory(code=CATS[f], fund=f, purposes=[Purpose.ACCES_AUX_DROITS], visible_to=ALL)
                        for f in funds],
            purposes=[Purpose.ACCES_AUX_DROITS], priority=prios[i % 3], rules=["multi_organismes"],
            first_signal_on=occurred.date() - dt.timedelta(days=10), last_signal_on=occurred.date(),
            refs=[FundRef(fund=f, sealed_ref=SealedRef(key_id=f"{f.value}-seal-1", value=_b64(40, "r", f, i)))
                  for f in funds],
        ))
    return out


def followups(count: int) -> list[FollowupEvent]:
    at = dt.datetime(2026, 11, 25, tzinfo=UTC)
    return [FollowupEvent(schema_version="1.0", event_id=f"f{i:031x}", situation_id=f"{i + 1:032x}",
                          territory="35", fund=Fund.CAF, action="fsl", outcome=Outcome.PROPOSE, recorded_at=at,
                          recorded_by="agent.caf35") for i in range(0, count, 7)]


def run(count: int, folder: Path, repeat: int) -> dict[str, Any]:
    taxonomy = load_settings().taxonomy
    engine = open_engine(f"sqlite:///{folder / f'bench-{count}.db'}")
    t0 = time.perf_counter()
    with paused_gc():  # setting up the store is not what is measured
        events = situations(count)
        with engine.begin() as conn:
            for i in range(0, count, 5000):
                store.apply_situations(conn, events[i:i + 5000])
            store.apply_followups(conn, followups(count))
        del events
    gc.collect()
    load_s = time.perf_counter() - t0
    runs = []
    for _ in range(repeat):
        runs.append(once(engine, taxonomy, count))
        gc.collect()  # each run starts as the CLI does: nothing of the previous one left
    engine.dispose()
    result = sorted(runs, key=lambda r: r[3])[(len(runs) - 1) // 2]  # the median run by total (a real run)
    return {**dict(zip(PHASES, result, strict=True)), "load_s": load_s,
            "runs_total_s": [r[3] for r in runs]}


PHASES = ("query_s", "html_s", "csv_s", "total_s", "html_mb", "csv_mb")


def once(engine: sa.Engine, taxonomy: Taxonomy, count: int) -> tuple[float, ...]:
    """One worklist, as ``help-exchange worklist`` builds it (the collector paused): query,
    then HTML, then CSV."""
    with paused_gc():
        t0 = time.perf_counter()
        wl = load_worklist(engine, taxonomy, month=Month(2026, 11), territory="35", fund=None,
                           close_after_months=6)
        query_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        html = render_html(wl).encode("utf-8")
        html_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        csv = render_csv(wl)
        csv_s = time.perf_counter() - t0
    assert len(wl.cases) == count, (len(wl.cases), count)
    return (query_s, html_s, csv_s, query_s + html_s + csv_s, len(html) / 1e6, len(csv) / 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worklist")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per size (median reported)")
    args = parser.parse_args()
    print(f"worklist benchmark (SQLite, every situation on the month's worklist; median of {args.repeat} runs; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start)")
    print(f"{'situations':>10} {'query+build':>12} {'HTML':>8} {'CSV':>8} {'total':>8}   sizes")
    ok = True
    figures: dict[str, Any] = {"repeat": args.repeat}
    with tempfile.TemporaryDirectory(prefix="bench-worklist-") as tmp:
        for count in (10_000, 100_000):
            r = run(count, Path(tmp), args.repeat)
            runs = ", ".join(f"{t:.2f}" for t in r["runs_total_s"])
            print(f"{count:>10,} {r['query_s']:>11.2f}s {r['html_s']:>7.2f}s {r['csv_s']:>7.2f}s "
                  f"{r['total_s']:>7.2f}s   HTML {r['html_mb']:.1f} MB, CSV {r['csv_mb']:.1f} MB "
                  f"(runs: {runs} s; loading the store: {r['load_s']:.1f}s; "
                  f"load average now {os.getloadavg()[0]:.1f})")
            figures.update({f"{k}_{count}": v for k, v in r.items()})
            if count == 100_000:
                ok = r["total_s"] < 10.0
                print(f"target < 10 s for 100,000: {'met' if ok else 'MISSED'}")
    figures["load_average"] = os.getloadavg()[0]
    emit("worklist", figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
