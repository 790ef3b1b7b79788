"""What a flush or a publish settles before it sends (``services.producer.receipts.Settler``
with ``sends_now``): the receipts' window, a re-seal that cannot be done now, the refusals
for an unknown signing key. The run on the real broker, re-seal and objection included, is
``tests/consent/test_sealed_signals_e2e.py``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from services.core.reasons import Reason
from services.core.types import Fund
from services.errors import ConfigurationError
from services.platform.settings import Settings
from services.platform.topics import load_topic_specs, receipt_topic, signal_topic
from services.producer.keys import init_exchange_key, init_fund_keys
from services.producer.outbox import Outbox, Row
from services.producer.receipts import RECEIPTS_KEPT, Seen, Settler
from services.producer.sdk import SignalBuilder
from services.producer.signal_keys import SignalKeyClient
from tests.producer.test_keys_lifecycle import _row
from tests.support.local import REPO


def _down(fund: Fund, pseudonyms: list[str]) -> list[dict[str, object]]:
    raise ConfigurationError("the key endpoint at http://127.0.0.1:9 does not answer", "start it")


def test_a_sending_run_seals_again_when_it_can_and_leaves_unknown_keys_waiting(offline_settings: Settings) -> None:
    init_exchange_key(offline_settings.key_dir)
    signing = init_fund_keys(offline_settings.key_dir, Fund.CAF).signing
    builder = SignalBuilder(offline_settings, Fund.CAF)
    rows = [_row(builder, n) for n in range(3)]
    assert all(r.seal for r in rows)  # sealed: each keeps its key until its receipt
    topic = signal_topic(Fund.CAF)
    receipts = {
        rows[0].signal_id: [Seen(False, Reason.CLE_SIGNATURE_INCONNUE.value, topic, 0, 0)],
        rows[1].signal_id: [Seen(False, Reason.CLE_SIGNAL_REMPLACEE.value, topic, 0, 1)],
        rows[2].signal_id: [Seen(False, Reason.OPPOSITION.value, topic, 0, 2)],
    }
    with Outbox.for_fund(offline_settings.var_dir, Fund.CAF) as box:
        box.add(rows)
        box.mark_sent([r.signal_id for r in rows], topic, {0: 2}, [(0, n) for n in range(3)])

        # The key endpoint does not answer: the refused one waits as it was, said so.
        down = Settler(offline_settings, Fund.CAF, box, sends_now=True, client=SignalKeyClient(Fund.CAF, _down))
        down.apply(receipts)
        result = down.finish()
        assert (result.resealed, result.reseal_waiting, result.requeued) == (0, 1, 0)
        assert result.unknown_waiting == {signing: 1} and result.refused == {"opposition": 1}
        text = "\n".join(result.lines())
        assert "non scellés à nouveau" in text and "does not answer" in text
        assert "receipts --fund caf` les remet en file" in text  # not sent again before the key is registered
        st = box.status()
        assert (st.pending, st.awaiting_receipt, st.refused) == (0, 2, 1)
        (opposed,) = box._db.execute("SELECT refused, seal_key FROM outbox WHERE signal_id = ?",
                                     (rows[2].signal_id,)).fetchall()
        assert opposed == ("opposition", None)

        # The next run, the endpoint back: sealed again under the person's current key, pending.
        again = Settler(offline_settings, Fund.CAF, box, sends_now=True)
        again.apply(receipts)
        result = again.finish()
        assert (result.resealed, result.reseal_waiting, result.awaiting) == (1, 0, 0)
        (pending,) = box.pending(10)
        assert pending.signal_id == rows[1].signal_id and pending.value != rows[1].value
        resealed = json.loads(pending.value)
        assert resealed["signal_id"] == rows[1].signal_id and "sealed" in resealed
        assert "renvoyés par cet envoi" in "\n".join(result.lines())


def test_the_receipts_are_read_from_the_oldest_sending_still_awaiting_one(tmp_path: Path) -> None:
    topic = signal_topic(Fund.CAF)
    with Outbox(tmp_path / "o.db") as box:
        assert box.awaiting_since(dt.datetime(2000, 1, 1, tzinfo=dt.UTC)) == (0, None)
        rows = [Row(f"{i:032x}", "2026-11-01", b"k", b"{}") for i in range(3)]
        box.add(rows)
        box.mark_sent([r.signal_id for r in rows], topic, {0: 2}, [(0, n) for n in range(3)])
        box._db.execute("UPDATE outbox SET sent_at = '2026-01-01T00:00:00.000000Z' WHERE signal_id = ?",
                        (rows[0].signal_id,))
        box._db.execute("UPDATE outbox SET sent_at = '2026-11-02T10:00:00.000000Z' WHERE signal_id = ?",
                        (rows[1].signal_id,))
        box.settle(accepted=[rows[2].signal_id])
        # one sent before the window (its receipt is gone from the topic): counted, not waited for
        n, oldest = box.awaiting_since(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
        assert (n, oldest) == (2, dt.datetime(2026, 11, 2, 10, tzinfo=dt.UTC))
        box.settle(refused=[(rows[1].signal_id, "categorie_medicale")])
        assert box.awaiting_since(dt.datetime(2026, 6, 1, tzinfo=dt.UTC)) == (1, None)


def test_the_window_is_the_receipts_topics_retention() -> None:
    specs = {s.name: s for s in load_topic_specs(REPO / "schemas" / "asyncapi.yaml")}
    for fund in Fund:
        kept_ms = int(specs[receipt_topic(fund)].config["retention.ms"])
        assert dt.timedelta(milliseconds=kept_ms) == RECEIPTS_KEPT
