"""kill -9 of the correlator while it applies objections and the purge's erasure commands:
after the restart no copy is left behind. Every person's latest state on the changelog
(read from offset 0 with a plain client) holds no signal and no situation, every situation
is tombstoned after its last event, and a new signal is refused (objection) or opens a case
with only itself and its partner (purge)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from stdnum.fr import nir as stdnum_nir

from services.app.purge import send_erasures
from services.casebook.retention import PurgePlan
from services.core.registry import load_registry
from services.core.types import Fund
from services.correlator.engine import Engine
from services.platform.datakeys import KeyRing, KeyStore, changelog_key, is_sealed
from services.platform.db import open_engine
from services.platform.markers import marker_key
from services.platform.settings import Settings
from services.producer.consent import record_file
from services.producer.keys import init_exchange_key, init_fund_keys, load_exchange_key, registry_path
from services.producer.nir import normalise
from services.producer.pseudonym import pseudonym_value
from services.producer.sdk import Publisher, SignalInput
from tests.correlator.core_fixtures import context
from tests.correlator.harness import Collector, start_worker, stop

pytestmark = pytest.mark.integration
APP_ID = "corr-erasure-crash"
PEOPLE = 24


def nir(serial: int) -> str:
    body = f"17505350{serial:05d}"
    return body + stdnum_nir.calc_check_digits(body)


async def _signals(settings: Settings, people: list[str], tag: str, categories: tuple[str, str]) -> None:
    for fund, category in zip((Fund.CAF, Fund.URSSAF), categories, strict=True):
        async with Publisher(settings, fund) as pub:
            result = await pub.publish([SignalInput(
                nir=p, category=category, observed_on=dt.date.today() - dt.timedelta(days=2),
                departement="35", reference=f"DOS-{tag}-{i}") for i, p in enumerate(people)])
            assert not result.rejected and result.sent == len(people), result


async def _latest_states(bootstrap: str, topic: str) -> tuple[dict[bytes, bytes | None], list[bytes]]:
    """The latest value per key, and every value ever written, from offset 0."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    latest: dict[bytes, bytes | None] = {}
    every: list[bytes] = []
    try:
        tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        idle = 0
        while idle < 8:
            batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for r in records:
                    if r.key is not None and not r.key.startswith(b"\x00"):
                        latest[r.key] = r.value
                        if r.value is not None:
                            every.append(r.value)
    finally:
        await consumer.stop()
    return latest, every


@pytest.mark.parametrize("seed", [21, 5])  # kill after ~0.13 s and ~0.5 s
async def test_kill_9_while_erasing_leaves_no_copy(settings: Settings, tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    (settings.var_dir / "correlator").mkdir(parents=True, exist_ok=True)
    init_exchange_key(settings.key_dir)
    for fund in (Fund.CAF, Fund.URSSAF):
        init_fund_keys(settings.key_dir, fund)
    key_id, key = load_exchange_key(settings.key_dir, load_registry(registry_path(settings.key_dir)))
    people = [nir(9000 + i) for i in range(PEOPLE)]
    pseudo = {p: pseudonym_value(key, normalise(p)) for p in people}
    objectors, purged = people[: PEOPLE // 2], people[PEOPLE // 2:]
    collector = Collector(settings.bootstrap_servers or "", settings.database_url)
    await collector.start()
    log = tmp_path / "worker.log"
    worker = start_worker(settings, APP_ID, log)
    try:
        await _signals(settings, people, "old", ("impaye_loyer", "impaye_cotisations"))
        wanted = set(pseudo.values())
        await collector.until(lambda c: {s["pseudonym"]["value"] for s in c.situations} >= wanted,
                              timeout=120)
        sid = {s["pseudonym"]["value"]: s["situation_id"] for s in collector.situations}
        old_refs = {r["sealed_ref"]["value"] for s in collector.situations for r in s["refs"]}

        # The objections and the purge's commands, then kill -9 while they are applied.
        path = tmp_path / "oppositions.csv"
        path.write_text("nir;reference_consentement;finalites;date_effet\n"
                        + "".join(f"{p};OPP-2026-{i};;\n" for i, p in enumerate(objectors)), encoding="utf-8")
        summary = await record_file(settings, Fund.CAF, "opposition", path, tmp_path / "r.csv")
        assert summary.sent == len(objectors), summary.lines()
        plan = PurgePlan(as_of=dt.datetime.now(dt.UTC),
                         persons={sid[pseudo[p]]: (key_id, pseudo[p]) for p in purged})
        assert await send_erasures(settings, settings.bootstrap_servers or "", plan) == len(purged)
        await asyncio.sleep(rnd.uniform(0.0, 0.8))
        stop(worker, kill=True)
        worker = start_worker(settings, APP_ID, log)

        await collector.until(lambda c: {sid[v] for v in wanted} <= set(c.tombstones), timeout=120)
        # Signals after: refused for the objectors, a new case of the new ones for the purged.
        seen = len(collector.situations)
        await _signals(settings, people, "new", ("separation", "demande_action_sociale_urssaf"))
        new_people = {pseudo[p] for p in purged}

        def fresh(c: Collector) -> dict[str, dict[str, object]]:
            return {s["pseudonym"]["value"]: s for s in c.situations[seen:]}
        await collector.until(lambda c: set(fresh(c)) >= new_people, timeout=120)
        await collector.until(lambda c: sum(1 for r in c.receipts.values()
                                            if r["reason"] == "opposition") >= 2 * len(objectors), timeout=120)
        after = fresh(collector)
        assert not set(after) & {pseudo[p] for p in objectors}
        for value in new_people:
            event = after[value]
            assert {c["code"] for c in event["categories"]} == {"separation", "demande_action_sociale_urssaf"}
            assert not old_refs & {r["sealed_ref"]["value"] for r in event["refs"]}  # type: ignore[union-attr]
    finally:
        stop(worker)
        await collector.stop()

    # The changelog, latest state per person: nothing of the old signals anywhere; and every
    # value ever written, from offset 0: what still opens holds none of the old signals.
    topic = f"{APP_ID}-persons-changelog"
    states, every = await _latest_states(settings.bootstrap_servers or "", topic)
    secret = marker_key(settings)
    marker_of = Engine(context(), load_registry(registry_path(settings.key_dir)),
                       marker_secret=secret).marker_key
    ring = KeyRing(KeyStore(open_engine(settings.database_url)), secret)
    for p in objectors:
        person = f"{key_id}/{pseudo[p]}".encode()
        assert states[changelog_key(secret, person)] is None  # the person's key: a tombstone
        marker = states[changelog_key(secret, marker_of(person))]
        assert marker is not None and pseudo[p].encode() not in marker
        assert json.loads(marker)["opposed_at"]
    for p in purged:
        raw = states[changelog_key(secret, f"{key_id}/{pseudo[p]}".encode())] or b""
        state = json.loads(ring.open(pseudo[p].encode(), topic, raw) or b"{}")
        assert {s["category"] for s in state["signals"]} == {"separation", "demande_action_sociale_urssaf"}
    opened = [ring.open(None, topic, raw) for raw in every if is_sealed(raw)]
    assert len(opened) > len(purged) and not any(is_sealed(raw) is False and b"signals" in raw for raw in every)
    for plain in opened:
        assert plain is None or not any(ref.encode() in plain for ref in old_refs), plain
