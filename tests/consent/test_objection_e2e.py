"""An objection, end to end on the real broker: producer SDK → correlator worker (subprocess)
→ casebook sink → `objection record` → erasure everywhere but the ledger; and the audit
sink's idempotency (a replay appends nothing)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from stdnum.fr import nir as stdnum_nir

from services.app.bootstrap import CASES
from services.casebook import tables as ct
from services.casebook.model import Month
from services.casebook.render import render
from services.casebook.sink import CasebookSink
from services.casebook.worklist import load_worklist
from services.core.registry import load_registry
from services.core.types import Fund
from services.ledger.entries import Action, parse_entry
from services.ledger.sink import AuditSink
from services.ledger.store import Ledger
from services.platform import tracking
from services.platform.db import open_engine
from services.platform.settings import Settings
from services.producer.consent import record_file
from services.producer.keys import init_exchange_key, init_fund_keys, load_exchange_key, registry_path
from services.producer.nir import normalise
from services.producer.pseudonym import pseudonym_value
from services.producer.sdk import Publisher, SignalInput
from tests.correlator.harness import Collector, start_worker, stop

pytestmark = pytest.mark.integration


def nir(serial: int) -> str:
    body = f"15505350{serial:05d}"
    return body + stdnum_nir.calc_check_digits(body)


async def _until(check: object, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.3)


async def test_objection_erases_everything_but_the_ledger(settings: Settings, collector: Collector,
                                                          tmp_path: Path) -> None:
    # The correlator's Faust data dir needs its parent (see the report: the worker could create it).
    (settings.var_dir / "correlator").mkdir(parents=True, exist_ok=True)
    init_exchange_key(settings.key_dir)
    for fund in (Fund.CAF, Fund.URSSAF):
        init_fund_keys(settings.key_dir, fund)
    person = nir(4242)
    _, key = load_exchange_key(settings.key_dir, load_registry(registry_path(settings.key_dir)))
    pseudo = pseudonym_value(key, normalise(person))
    today = dt.date.today()

    engine = open_engine(settings.database_url)
    stop_sink = asyncio.Event()
    sink = CasebookSink(settings, engine, settings.bootstrap_servers or "", group="cb-e2e",
                        outbox_every_s=60)
    sink_task = asyncio.create_task(sink.run(stop_sink))
    worker = start_worker(settings, "corr-objection-e2e", tmp_path / "worker.log")
    try:
        # Two funds signal the same person: a shared situation opens.
        for fund, category in ((Fund.CAF, "impaye_loyer"), (Fund.URSSAF, "impaye_cotisations")):
            async with Publisher(settings, fund) as pub:
                result = await pub.publish([SignalInput(
                    nir=person, category=category, observed_on=today - dt.timedelta(days=4),
                    departement="35", reference=f"DOS-{fund.value.upper()}-1")])
                assert not result.rejected and result.sent == 1
        await collector.until(lambda c: any(s["pseudonym"]["value"] == pseudo for s in c.situations),
                              timeout=90)
        situation_id = next(s["situation_id"] for s in collector.situations
                            if s["pseudonym"]["value"] == pseudo)

        def stored() -> int:
            with engine.connect() as conn:
                return len(conn.execute(sa.select(ct.situations.c.situation_id)
                                        .where(ct.situations.c.pseudonym == pseudo)).all())
        await _until(lambda: stored() == 1)
        # The audit sink enters the situation while it can read it (as it does running beside
        # the correlator): once the person objected, the event's key is gone and a sink
        # reading it only then would enter nothing of it (docs/erasure.md).
        await AuditSink(settings, Ledger.open(settings), settings.bootstrap_servers or "", cases=CASES,
                        consumer_name="audit-e2e").run(until_idle=2.0)

        # The objection, from the fund's file.
        path = tmp_path / "oppositions.csv"
        path.write_text(f"nir;reference_consentement;finalites;date_effet\n{person};OPP-2026-1;;\n",
                        encoding="utf-8")
        summary = await record_file(settings, Fund.CAF, "opposition", path, tmp_path / "r.csv")
        assert summary.exit_code == 0 and summary.sent == 1, summary.lines()

        await collector.until(lambda c: situation_id in c.tombstones, timeout=60)
        await _until(lambda: stored() == 0)

        # A new signal about them is refused for the objection; no situation event names them.
        seen = len(collector.situations)
        async with Publisher(settings, Fund.CAF) as pub:
            result = await pub.publish([SignalInput(
                nir=person, category="separation", observed_on=today - dt.timedelta(days=1),
                departement="35", reference="DOS-CAF-2")])
        assert result.sent == 1
        await collector.until(lambda c: any(r["status"] == "rejete" and r["reason"] == "opposition"
                                            for r in c.receipts.values()), timeout=60)
        await asyncio.sleep(1.0)
        await collector.poll()
        assert all(s["pseudonym"]["value"] != pseudo for s in collector.situations[seen:])
        assert situation_id not in collector.latest_situations()
    finally:
        stop(worker)
        stop_sink.set()
        await sink_task

    # No casebook table holds the pseudonym; only the ledger does.
    with engine.connect() as conn:
        for table in ct.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                assert pseudo not in repr(tuple(row)), f"{table.name} still holds the pseudonym"
    # Nor any new worklist export.
    wl = load_worklist(engine, settings.taxonomy, month=Month.parse(f"{today:%Y-%m}"), territory="35",
                       fund=None, close_after_months=6)
    for fmt in ("csv", "json", "html"):
        assert pseudo.encode() not in render(wl, fmt)
        assert situation_id.encode() not in render(wl, fmt)

    # The ledger: the audit sink enters the story, with the pseudonym; a replay adds nothing.
    ledger = Ledger.open(settings)
    audit = AuditSink(settings, ledger, settings.bootstrap_servers or "", cases=CASES, consumer_name="audit-e2e")
    await audit.run(until_idle=2.0)
    actions = {parse_entry(d).action for _, d in ledger.query(pseudonym=pseudo)}
    assert {Action.OPPOSITION, Action.SITUATION_OUVERTE} <= actions
    assert any(parse_entry(d).reason == "opposition"
               for _, d in ledger.query(action=Action.SIGNALEMENT_REJETE.value))
    assert any(parse_entry(d).case_id == situation_id
               for _, d in ledger.query(action=Action.EFFACEMENT.value))
    size, root = ledger.size(), ledger.root()
    with engine.begin() as conn:  # forget the offsets: everything is read again
        conn.execute(sa.delete(tracking.offsets))
    again = await AuditSink(settings, ledger, settings.bootstrap_servers or "", cases=CASES,
                            consumer_name="audit-e2e").run(until_idle=2.0)
    assert again.appended == 0 and again.already_present > 0
    assert (ledger.size(), ledger.root()) == (size, root)
    engine.dispose()

