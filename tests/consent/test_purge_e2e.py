"""The retention purge reaches the correlator, on the real broker: producer SDK → correlator
worker (subprocess) → casebook sink → purge (``--as-of`` two years ahead, as an auditor's
probe does) → a new signal about the same person opens a case with only the new signals:
nothing purged comes back (categories, sealed references)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from stdnum.fr import nir as stdnum_nir

from services.app.purge import apply_purge, send_erasures
from services.casebook import tables as ct
from services.casebook.retention import plan_purge
from services.casebook.sink import CasebookSink
from services.core.registry import load_registry
from services.core.types import Fund
from services.ledger.entries import parse_entry
from services.ledger.store import Ledger
from services.platform.db import open_engine
from services.platform.settings import Settings
from services.producer.keys import init_exchange_key, init_fund_keys, load_exchange_key, registry_path
from services.producer.nir import normalise
from services.producer.pseudonym import pseudonym_value
from services.producer.sdk import Publisher, SignalInput
from tests.correlator.harness import Collector, start_worker, stop

pytestmark = pytest.mark.integration


def nir(serial: int) -> str:
    body = f"16505350{serial:05d}"
    return body + stdnum_nir.calc_check_digits(body)


async def _until(check: object, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.3)


async def _publish(settings: Settings, person: str, items: list[tuple[Fund, str, str]]) -> None:
    for fund, category, reference in items:
        async with Publisher(settings, fund) as pub:
            result = await pub.publish([SignalInput(
                nir=person, category=category, observed_on=dt.date.today() - dt.timedelta(days=3),
                departement="35", reference=reference)])
            assert not result.rejected and result.sent == 1, result


async def test_a_signal_after_a_purge_opens_a_case_with_only_the_new_signal(
        settings: Settings, tmp_path: Path) -> None:
    (settings.var_dir / "correlator").mkdir(parents=True, exist_ok=True)
    init_exchange_key(settings.key_dir)
    for fund in (Fund.CAF, Fund.URSSAF):
        init_fund_keys(settings.key_dir, fund)
    person = nir(5151)
    _, key = load_exchange_key(settings.key_dir, load_registry(registry_path(settings.key_dir)))
    pseudo = pseudonym_value(key, normalise(person))
    engine = open_engine(settings.database_url)
    collector = Collector(settings.bootstrap_servers or "", settings.database_url)
    await collector.start()
    stop_sink = asyncio.Event()
    sink = CasebookSink(settings, engine, settings.bootstrap_servers or "", group="cb-purge-e2e",
                        outbox_every_s=60)
    sink_task = asyncio.create_task(sink.run(stop_sink))
    worker = start_worker(settings, "corr-purge-e2e", tmp_path / "worker.log")

    def stored() -> list[dict[str, object]]:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(ct.situations).where(ct.situations.c.pseudonym == pseudo))]

    def mine() -> list[dict[str, object]]:
        return [s for s in collector.situations if s["pseudonym"]["value"] == pseudo]
    try:
        await _publish(settings, person, [(Fund.CAF, "impaye_loyer", "DOS-CAF-OLD"),
                                          (Fund.URSSAF, "impaye_cotisations", "DOS-URS-OLD")])
        await collector.until(lambda c: bool(mine()), timeout=90)
        old = mine()[-1]
        old_refs = {r["sealed_ref"]["value"] for r in old["refs"]}
        await _until(lambda: len(stored()) == 1)

        # The purge, two years ahead: the situation is past its period.
        plan = plan_purge(engine, settings, as_of=dt.datetime.now(dt.UTC) + dt.timedelta(days=730))
        assert plan.situation_ids == [old["situation_id"]]
        assert await send_erasures(settings, settings.bootstrap_servers or "", plan) == 1
        ledger = Ledger(engine)
        assert apply_purge(engine, ledger, plan) == 1
        (entry,) = [parse_entry(d) for _, d in ledger.query(action="purge_conservation")]
        assert entry.time < dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)  # the run's time

        # The correlator erased its state and tombstoned the situation.
        await collector.until(lambda c: old["situation_id"] in c.tombstones, timeout=60)
        await _until(lambda: stored() == [])  # the casebook sink applies the tombstone in its own time

        # New signals about the same person: a new case, with only them.
        seen = len(mine())
        await _publish(settings, person, [(Fund.CAF, "separation", "DOS-CAF-NEW"),
                                          (Fund.URSSAF, "demande_action_sociale_urssaf", "DOS-URS-NEW")])
        await collector.until(lambda c: len(mine()) > seen, timeout=90)
        new = mine()[-1]
        assert new["version"] > old["version"]
        assert {c["code"] for c in new["categories"]} == {"separation", "demande_action_sociale_urssaf"}
        assert not old_refs & {r["sealed_ref"]["value"] for r in new["refs"]}, "a purged sealed reference came back"
        await _until(lambda: len(stored()) == 1)
        (row,) = stored()
        detail = row["detail"]
        assert isinstance(detail, dict)
        assert {c["code"] for c in detail["categories"]} == {"separation", "demande_action_sociale_urssaf"}
        assert not old_refs & {r["sealed_ref"]["value"] for r in detail["refs"]}
    finally:
        stop(worker)
        stop_sink.set()
        await sink_task
        await collector.stop()
        engine.dispose()
