"""Sealed signals end to end (contract §2.1, §4.4), on the real broker: the fund's SDK asks
the key endpoint, seals, signs and sends; a correlator worker that requires sealing opens
them. A key fetched, then replaced by a withdrawal before the signal is sent: the receipt
says ``cle_signal_remplacee``, and the fund's next normal run (a publish; a flush alike)
reads it, seals the signal again under the person's new key and sends it: accepted, nothing
lost, nothing for an operator to do. A key fetched, then destroyed by the person's objection:
the receipt says ``opposition`` at once, and the signal is not sent again (its outbox row
says why). The signal topic never holds the person members in clear."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from stdnum.fr import nir as stdnum_nir

from services.core.types import Fund
from services.platform.kafka import consumer
from services.platform.settings import Settings
from services.platform.topics import signal_topic
from services.producer.consent import record_file
from services.producer.keys import init_exchange_key, init_fund_keys
from services.producer.outbox import Outbox
from services.producer.sdk import Publisher, SignalBuilder, SignalInput, flush_outbox, read_to_end
from tests.correlator.harness import Collector, start_worker, stop

pytestmark = pytest.mark.integration


def nir(serial: int) -> str:
    body = f"14505350{serial:05d}"  # born 1945: either purpose
    return body + stdnum_nir.calc_check_digits(body)


async def _consent(settings: Settings, collector: Collector, tmp_path: Path, kind: str, person: str,
                   purposes: str, n: int) -> None:
    before = set(collector.receipts)
    path = tmp_path / f"consent-{n}.csv"
    path.write_text("nir;reference_consentement;finalites;date_effet\n"
                    f"{person};HELP-2026-{n:06d};{purposes};\n", encoding="utf-8")
    summary = await record_file(settings, Fund.CAF, kind, path, tmp_path / f"r{n}.csv")  # type: ignore[arg-type]
    assert summary.exit_code == 0 and summary.sent == 1, summary.lines()
    await collector.until(lambda c: any(k not in before and r["signal_id"] is None
                                        for k, r in c.receipts.items()), timeout=90)


def _record(person: str, category: str, reference: str, purpose: str) -> SignalInput:
    return SignalInput(nir=person, category=category, observed_on=dt.date.today() - dt.timedelta(days=2),
                       departement="35", reference=reference, purpose=purpose)


async def _receipt_of(collector: Collector, signal_id: str, count: int) -> dict[str, object]:
    await collector.until(lambda c: sum(r["signal_id"] == signal_id for r in c.receipts.values()) >= count,
                          timeout=90)
    return [r for r in collector.receipts.values() if r["signal_id"] == signal_id][-1]


async def _topic_values(settings: Settings, topic: str) -> list[bytes]:
    cons = consumer(settings, settings.bootstrap_servers or "", group_id=None, enable_auto_commit=False)
    await cons.start()
    try:
        await cons.topics()  # the metadata, with the topic's partitions
        tps = [TopicPartition(topic, p) for p in sorted(cons.partitions_for_topic(topic) or ())]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        ends = await cons.end_offsets(tps)
        values: list[bytes] = []
        async for records in read_to_end(cons, ends):
            values += [r.value or b"" for r in records]
        return values
    finally:
        await cons.stop()


async def test_a_key_replaced_between_fetch_and_send_is_sealed_again(sealing: Settings, tmp_path: Path) -> None:
    settings = sealing
    init_exchange_key(settings.key_dir)
    init_fund_keys(settings.key_dir, Fund.CAF)
    (settings.var_dir / "correlator").mkdir(parents=True, exist_ok=True)
    person, objector = nir(4242), nir(4343)
    collector = Collector(settings.bootstrap_servers or "", settings.database_url)
    await collector.start()
    worker = start_worker(settings, "corr-sealed", tmp_path / "worker.log", env={"HELP_SIGNAL_SEALING": "required"})
    try:
        await _consent(settings, collector, tmp_path, "consentement_donne", person,
                       "acces_aux_droits,prevention_perte_autonomie", 1)
        async with Publisher(settings, Fund.CAF) as pub:
            first = await pub.publish([_record(person, "separation", "DOS-1", "acces_aux_droits")])
        assert first.sent == 1 and not first.rejected
        (sent_first,) = await _topic_values(settings, signal_topic(Fund.CAF))
        first_id = json.loads(sent_first)["signal_id"]
        assert (await _receipt_of(collector, first_id, 1))["status"] == "accepte"

        # Two keys fetched and two signals sealed now ...
        builder = SignalBuilder(settings, Fund.CAF)
        rec = _record(person, "deces_conjoint", "DOS-2", "acces_aux_droits")
        late = _record(objector, "impaye_loyer", "DOS-3", "acces_aux_droits")
        builder.prefetch([rec, late])
        row, late_row = builder.build(rec), builder.build(late)
        # ... a withdrawal (of the other purpose) replaces the first person's key, the other
        # person objects (every key destroyed) ...
        await _consent(settings, collector, tmp_path, "consentement_retire", person, "prevention_perte_autonomie", 2)
        await _consent(settings, collector, tmp_path, "opposition", objector, "", 3)
        # ... then they are sent: refused, nothing of them kept
        async with Publisher(settings, Fund.CAF, builder=builder) as pub:
            assert await pub.submit([row, late_row]) == 2
            await pub.drain()
            # (before it sent, that run settled the first signal's receipt: accepted)
            assert pub.reconciled is not None and pub.reconciled.accepted == 1 and not pub.reconciled.anything
        refused = await _receipt_of(collector, row.signal_id, 1)
        assert (refused["status"], refused["reason"]) == ("rejete", "cle_signal_remplacee"), refused
        opposed = await _receipt_of(collector, late_row.signal_id, 1)
        assert (opposed["status"], opposed["reason"]) == ("rejete", "opposition"), opposed
        letters = [d for d in collector.deadletters.values() if d["signal_id"] in (row.signal_id, late_row.signal_id)]
        assert len(letters) == 2 and all(d["raw"] == "" for d in letters)

        # The fund's next run (a publish of its next lines) settles those receipts before it
        # sends: the first signal sealed again under the new key and sent with the run's own;
        # the objector's refused for good, not sent again.
        nxt = _record(person, "impaye_loyer", "DOS-4", "acces_aux_droits")
        async with Publisher(settings, Fund.CAF) as pub:
            result = await pub.publish([nxt])
            settled = pub.reconciled
        assert settled is not None and settled.resealed == 1 and settled.refused == {"opposition": 1}, settled
        assert result.sent == 2 and result.staged == 1
        assert any("scellés à nouveau" in line and "renvoyés par cet envoi" in line for line in settled.lines())
        again = await _receipt_of(collector, row.signal_id, 2)
        assert again["status"] == "accepte", again
        with Outbox.for_fund(settings.var_dir, Fund.CAF) as box:
            reason = box._db.execute("SELECT refused, seal_key FROM outbox WHERE signal_id = ?",
                                     (late_row.signal_id,)).fetchone()
        assert reason == ("opposition", None)  # the row says why; its key forgotten
        # a flush afterwards: nothing more to send, the objector's signal not among it
        sent, left, error = await flush_outbox(Publisher(settings, Fund.CAF))
        assert (sent, left, error) == (0, 0, None)

        # Every record of the signal topic: sealed, the person members nowhere in clear; the
        # objector's signal there once, the re-sealed one twice (refused, then accepted).
        values = await _topic_values(settings, signal_topic(Fund.CAF))
        ids = [json.loads(raw)["signal_id"] for raw in values]
        assert len(values) == 5 and ids.count(late_row.signal_id) == 1 and ids.count(row.signal_id) == 2
        for raw in values:
            msg = json.loads(raw)
            assert "sealed" in msg and not {"category", "observed_on", "territory", "sealed_ref"} & set(msg)
            assert b"deces_conjoint" not in raw and b"separation" not in raw and b"DOS-" not in raw
    finally:
        stop(worker)
        await collector.stop()
