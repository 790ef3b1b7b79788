"""The data protection officer's probe, on a broker of its own: three people, one who
objects, one who withdraws consent for a purpose, one whose case the retention purge
removes; then every topic read from offset 0 with a Kafka client of the test's own (librdkafka),
every table, every file under the data directory. What is left about each person must be
what docs/erasure.md allows, place by place (``after erasure`` column): nothing where it
says *erased*. "Readable" includes what the exchange itself could still open: every value
sealed under a person's data key (situation events, forwarded records, dead letters) is
tried with the key table, as an insider holding the database would."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from stdnum.fr import nir as stdnum_nir

from services.app import purge
from services.casebook import tables as ct
from services.casebook.followups import flush_outbox, record_followup
from services.casebook.sink import CasebookSink
from services.core.messages import ConsentKind, SealedMembers
from services.core.registry import load_registry
from services.core.signal_seal import fund_key, open_members
from services.core.types import Fund
from services.correlator.engine import REPARTITION_TOPIC
from services.ledger import tables as lt
from services.platform.datakeys import KeyRing, KeyStore, data_keys, is_sealed, subject_of
from services.platform.db import open_engine
from services.platform.markers import marker_key
from services.platform.partitioning import partition_for
from services.platform.sealed_situations import read_situations
from services.platform.settings import Settings
from services.platform.topics import signal_topic
from services.producer.consent import record_file
from services.producer.keys import init_exchange_key, init_fund_keys, load_exchange_key, registry_path
from services.producer.nir import normalise
from services.producer.pseudonym import pseudonym_value
from services.producer.sdk import Publisher, SignalInput
from tests.consent.test_inventory import rows
from tests.correlator.harness import Collector, publish, start_worker, stop
from tests.support.cli import wired_group

pytestmark = pytest.mark.integration


#: The purge command, as `help-exchange` registers it (errors reach the test).
purge_group = wired_group(purge.register)
APP_ID = "corr-erasure-probe"


def nir(serial: int) -> str:
    body = f"14505350{serial:05d}"
    return body + stdnum_nir.calc_check_digits(body)


async def _until(check: object, timeout: float = 90.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.3)


async def _consent(settings: Settings, collector: Collector, tmp_path: Path, kind: ConsentKind,
                   person: str, purposes: str, n: int) -> None:
    before = set(collector.receipts)
    path = tmp_path / f"consent-{n}.csv"
    path.write_text("nir;reference_consentement;finalites;date_effet\n"
                    f"{person};HELP-2026-{n:06d};{purposes};\n", encoding="utf-8")
    summary = await record_file(settings, Fund.CAF, kind, path, tmp_path / f"r{n}.csv")
    assert summary.exit_code == 0 and summary.sent == 1, summary.lines()
    await collector.until(lambda c: any(k not in before and r["signal_id"] is None
                                        for k, r in c.receipts.items()), timeout=90)


async def _signals(settings: Settings, person: str, tag: str, consent: bool = False) -> None:
    for fund, category in ((Fund.CAF, "separation"), (Fund.URSSAF, "impaye_cotisations")):
        async with Publisher(settings, fund) as pub:
            result = await pub.publish([SignalInput(
                nir=person, category=category, observed_on=dt.date.today() - dt.timedelta(days=3),
                departement="35", reference=f"DOS-{tag}-{fund.value.upper()}",
                consent_ref="HELP-2026-000001" if consent and fund is Fund.CAF else None)])
            assert not result.rejected and result.sent == 1, result


def _family(topic: str) -> str:
    """The inventory's name of a topic."""
    for fund in Fund:
        topic = topic.replace(f".{fund.value}.", ".<fund>.")
    return topic.replace(f"{APP_ID}-persons-changelog", "<app id>-persons-changelog")


def _read_every_topic_now(bootstrap: str, timeout: float = 60.0) -> dict[str, list[bytes]]:
    """Every record (key NUL value) of every topic from offset 0, with librdkafka
    (confluent-kafka's consumer): not the aiokafka consumers the services read with, no commits."""
    import random
    import time

    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{random.random()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    found: dict[str, list[bytes]] = {}
    try:
        meta = consumer.list_topics(timeout=10)
        tps = [TopicPartition(t, p, 0) for t, tm in sorted(meta.topics.items()) if not t.startswith("__")
               for p in sorted(tm.partitions)]
        consumer.assign(tps)
        # The embedded broker reports a floor of the true end offset: read until every
        # partition stays quiet for 3 s, not up to the reported end.
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 3.0:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"probe consumer: {msg.error()}")
            quiet_since = time.monotonic()
            found.setdefault(msg.topic(), []).append((msg.key() or b"") + b"\x00" + (msg.value() or b""))
    finally:
        consumer.close()
    return found


async def _read_every_topic(bootstrap: str) -> dict[str, list[bytes]]:
    return await asyncio.to_thread(_read_every_topic_now, bootstrap)


def _nothing_opens(settings: Settings, engine: sa.Engine, topics: dict[str, list[bytes]],
                   pseudo: dict[str, str], refs: dict[str, set[str]]) -> None:
    """The situation events and the forwarded records, opened with the exchange's own key
    table: nothing of the three people opens any more; and in clear, no forwarded record
    says anything of them (the purge's commands name the pseudonym: the inventory's
    *remains*, 7 days)."""
    ring = KeyRing(KeyStore(engine), marker_key(settings))
    situations = [r.partition(b"\x00")[2] for r in topics["help.situations.v1"]]
    events = [v for v in situations if v]
    assert len(events) >= 3 and all(b'"sealed"' in v for v in events), events[:1]
    opened = read_situations(engine, events)
    people = set(pseudo.values())
    left = [e for e in opened if e is not None and e.pseudonym.value in people]
    assert not left, f"help.situations.v1: {len(left)} events of the three people still open"
    forwards = [r.partition(b"\x00")[2] for r in topics[REPARTITION_TOPIC]]
    sealed = [v for v in forwards if is_sealed(v)]
    assert len(sealed) >= 3, "the misrouted copies were forwarded sealed"
    assert [v for v in sealed if ring.open(None, REPARTITION_TOPIC, v) is not None] == []
    for who in pseudo:
        hits = [v for v in forwards if any(x.encode() in v for x in refs[who])
                or b'"category"' in v or b'"signature"' in v]
        assert not hits, f"{REPARTITION_TOPIC} holds {who}'s signal in clear: {hits[0][:300]!r}"


async def test_what_is_left_after_objection_withdrawal_and_purge(
        sealing: Settings, collector: Collector, tmp_path: Path) -> None:
    settings = sealing  # signals sealed by the funds, and only sealed ones taken
    (settings.var_dir / "correlator").mkdir(parents=True, exist_ok=True)
    init_exchange_key(settings.key_dir)
    for fund in (Fund.CAF, Fund.URSSAF):
        init_fund_keys(settings.key_dir, fund)
    _, key = load_exchange_key(settings.key_dir, load_registry(registry_path(settings.key_dir)))
    people = {"objection": nir(8101), "withdrawal": nir(8102), "purge": nir(8103)}
    pseudo = {who: pseudonym_value(key, normalise(n)) for who, n in people.items()}
    engine = open_engine(settings.database_url)
    stop_sink = asyncio.Event()
    sink = CasebookSink(settings, engine, settings.bootstrap_servers or "", group="cb-probe",
                        outbox_every_s=1)
    sink_task = asyncio.create_task(sink.run(stop_sink))
    worker = start_worker(settings, APP_ID, tmp_path / "worker.log", env={"HELP_SIGNAL_SEALING": "required"})

    def case(who: str) -> tuple[str, str] | None:
        with engine.connect() as conn:
            row = conn.execute(sa.select(ct.situations.c.situation_id, ct.situations.c.case_number)
                               .where(ct.situations.c.pseudonym == pseudo[who])).first()
        return None if row is None else (row[0], row[1])

    refs: dict[str, set[str]] = {}
    broken: list[tuple[str, bytes, bytes, int]] = []
    try:
        await _consent(settings, collector, tmp_path, "consentement_donne", people["withdrawal"],
                       "acces_aux_droits", 1)
        for who in people:
            await _signals(settings, people[who], who, consent=who == "withdrawal")
        await collector.until(lambda c: {s["pseudonym"]["value"] for s in c.situations} >= set(pseudo.values()))
        for s in collector.situations:
            for who, p in pseudo.items():
                if s["pseudonym"]["value"] == p:
                    refs.setdefault(who, set()).update(r["sealed_ref"]["value"] for r in s["refs"])
        await _until(lambda: all(case(who) for who in people))
        cases = {who: case(who) for who in people}
        # Each person's CAF signal read again from another partition (a producer with another
        # partitioner): forwarded to the person's partition on the repartition topic, then
        # refused there as a replay (`doublon`, at another position).
        sent = await _read_every_topic(settings.bootstrap_servers or "")
        copies = []
        for p in pseudo.values():
            (raw,) = [r.partition(b"\x00")[2] for r in sent[signal_topic(Fund.CAF)]
                      if r.partition(b"\x00")[0] == p.encode()]
            wrong = (partition_for(p, settings.partitions) + 1) % settings.partitions
            copies.append((signal_topic(Fund.CAF), p.encode(), raw, wrong))
        await publish(settings.bootstrap_servers or "", copies)
        await collector.until(lambda c: sum(d["reason"] == "doublon" for d in c.deadletters.values()) == 3)
        # And each one refused before its checks, twice: cut short (not JSON) and with its
        # signature altered: no verified person, so its dead letter keeps no payload.
        for topic, key, raw, _ in copies:
            msg = json.loads(raw)
            value = msg["signature"]["value"]
            msg["signature"]["value"] = ("B" if value[0] == "A" else "A") + value[1:]
            part = partition_for(key.decode(), settings.partitions)
            broken += [(topic, key, raw[:-2], part), (topic, key, json.dumps(msg).encode(), part)]
        await publish(settings.bootstrap_servers or "", broken)
        await collector.until(lambda c: sum(d["reason"] in ("json_invalide", "signature_invalide")
                                            for d in c.deadletters.values()) == 6)
        # A follow-up on each case, published (the outbox keeps it until then).
        for who in people:
            c = cases[who]
            assert c is not None
            record_followup(engine, settings.taxonomy, case_number=c[1], fund="caf",
                            action="aide_financiere_individuelle", outcome="accorde",
                            user="agent.caf-35.0042")
        # The flush or the sink's own timer publishes them (each row claimed by one sender).
        await flush_outbox(settings, engine, settings.bootstrap_servers or "")

        def published() -> int:
            with engine.connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(ct.outbox).where(
                    ct.outbox.c.published_at.is_not(None))).scalar_one()
        await _until(lambda: published() == 3)

        # The three rights.
        await _consent(settings, collector, tmp_path, "opposition", people["objection"], "", 2)
        await _consent(settings, collector, tmp_path, "consentement_retire", people["withdrawal"],
                       "acces_aux_droits", 3)
        await _until(lambda: case("objection") is None and case("withdrawal") is None)
        # The purge, from the command line, two years ahead (as the probe did).
        ahead = (dt.date.today() + dt.timedelta(days=730)).isoformat()
        result = await asyncio.to_thread(CliRunner().invoke, purge_group, ["purge", "--as-of", ahead],
                                         obj={"settings": settings})
        assert result.exit_code == 0, result.output
        assert "personnes effacées de l'état du corrélateur              : 1" in result.output, result.output
        erased = {c[0] for c in cases.values() if c is not None}
        await collector.until(lambda c: erased <= set(c.tombstones))
        await asyncio.sleep(2.0)  # the sink applies the tombstones
        # Signals after: refused for the objection and the withdrawal (dead letters: no payload).
        await _signals(settings, people["objection"], "after-o")
        await _signals(settings, people["withdrawal"], "after-w")
        # (The second fund's may meet the key the first one's refusal just replaced: refused
        # for that key, with no payload kept either.)
        await collector.until(lambda c: sum(1 for d in c.deadletters.values() if d["reason"] in (
            "opposition", "consentement_retire", "cle_signal_remplacee")) == 4)
    finally:
        stop(worker)
        stop_sink.set()
        await sink_task

    inventory = rows()
    assert inventory["help.signals.<fund>.v1"][-1].startswith("minimal")
    may_remain = {place for place, cells in inventory.items() if not cells[-1].startswith("erased")}

    # 1. Every topic from offset 0, with a client of the test's own.
    topics = await _read_every_topic(settings.bootstrap_servers or "")
    assert {"help.situations.v1", "help.deadletter.v1", f"{APP_ID}-persons-changelog",
            REPARTITION_TOPIC} <= set(topics)
    _nothing_opens(settings, engine, topics, pseudo, refs)
    followups = topics.get("help.followups.v1", [])
    # Three follow-ups, each once: the sink's own timer and flush_outbox both publish the
    # outbox, each row claimed by one of them.
    event_ids = {json.loads(r.partition(b"\x00")[2])["event_id"] for r in followups}
    assert len(event_ids) == len(followups) == 3 and all(b'"sealed"' in r for r in followups), followups[:1]
    for topic, records in topics.items():
        family = _family(topic)
        assert family in inventory, f"{topic}: not in docs/erasure.md"
        # What the follow-ups said was done: readable nowhere (sealed, their keys destroyed).
        hits = [r for r in records if b"aide_financiere_individuelle" in r or b"accorde" in r]
        assert not hits, f"{topic} still holds a follow-up's action or outcome: {hits[0][:300]!r}"
        if family in may_remain:
            continue
        for who, p in pseudo.items():
            hits = [r for r in records if p.encode() in r or any(x.encode() in r for x in refs[who])]
            assert not hits, f"{topic} ({inventory[family][-1]}) still holds {who}'s data: {hits[0][:300]!r}"

    # 2. Every casebook table: nothing about the three people (the ledger keeps its minimal form).
    # The correlator's data keys: none left for the objector; for the others, only keys made
    # after their erasure (every key of their earlier states destroyed).
    secret = marker_key(settings)
    with engine.connect() as conn:
        keys = {who: {e: bytes(k) for e, k in conn.execute(sa.select(data_keys.c.epoch, data_keys.c.key).where(
            data_keys.c.subject == subject_of(secret, p.encode()).hex()))} for who, p in pseudo.items()}
    # (a destroyed epoch stays as a tombstone: an empty key)
    epochs = {who: [e for e, k in found.items() if k] for who, found in keys.items()}
    assert epochs["objection"] == [] and len(epochs["withdrawal"]) == 1 and len(epochs["purge"]) == 1, epochs
    assert min(epochs["withdrawal"] + epochs["purge"]) > 1, epochs
    # The signal topics: every record sealed, and none of the three people's opens with any
    # key the exchange still holds (each derived for the record's fund), nor with any other.
    signal_records = {t: r for t, r in topics.items() if _family(t) == "help.signals.<fund>.v1"}
    # (no "after" for the purge; each person's misrouted CAF copy is a record of its own, and
    # so is each of its two broken copies)
    assert sum(len(r) for r in signal_records.values()) == 2 * 2 * len(people) - 2 + len(copies) + len(broken)
    for topic, records in signal_records.items():
        fund = topic.split(".")[2]
        for record in records:
            if any(record.partition(b"\x00")[2] == value for _, _, value, _ in broken):
                continue
            msg = json.loads(record.partition(b"\x00")[2])
            assert "sealed" in msg and not {"category", "observed_on", "territory", "sealed_ref"} & set(msg), msg
            who = next(w for w, p in pseudo.items() if msg["pseudonym"]["value"] == p)
            sealed = SealedMembers.model_validate(msg["sealed"])
            for data_key in [k for found in keys.values() for k in found.values() if k]:
                opened = open_members(fund_key(data_key, fund), topic, msg["signal_id"], sealed)
                assert opened is None, f"{topic}: {who}'s signal {msg['signal_id']} still opens"
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ct.case_keys)).scalar_one() == 0
        for table in ct.metadata.sorted_tables:
            text = repr([tuple(r) for r in conn.execute(sa.select(table))])
            for who, p in pseudo.items():
                assert p not in text, f"{table.name} holds {who}'s pseudonym"
                assert not any(x in text for x in refs[who]), f"{table.name} holds {who}'s sealed refs"
                assert "accorde" not in text, f"{table.name} holds a follow-up's outcome"
        for table in lt.metadata.sorted_tables:
            text = repr([tuple(r) for r in conn.execute(sa.select(table))])
            assert not any(x in text for who in people for x in refs[who]), table.name
    engine.dispose()

    # 3. Every file under the data directory but the funds' own outboxes (fund side).
    fund_side = settings.var_dir / "outbox"
    for path in settings.var_dir.rglob("*"):
        if not path.is_file() or fund_side in path.parents:
            continue
        data = path.read_bytes()
        for who in people:
            for x in refs[who]:
                assert x.encode() not in data, f"{path} holds {who}'s sealed reference"
