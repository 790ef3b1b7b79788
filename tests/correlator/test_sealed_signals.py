"""Sealed signals at the correlator (contract §2.1, check 11a): the person members open
with the person's key derived for the fund, under the topic, signal and person they were
sealed for; a key replaced by an erasure, a member that does not open, a signal in clear
where sealing is required: each refused with its reason and nothing of the message kept."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from services.core.messages import DeadLetter, Receipt, parse
from services.core.signal_seal import fund_key, seal_message
from services.core.types import Fund
from services.correlator.engine import Engine, Record
from services.platform.datakeys import KeyRing, KeyStore
from services.platform.db import open_engine
from services.platform.topics import CONSENTS_TOPIC, DEADLETTER_TOPIC, signal_topic
from tests.correlator.core_fixtures import context
from tests.correlator.test_exchange_rules import FUNDS, NOW, _partition
from tests.support.signalkeys import LocalKeys
from tests.support.signals import Funds

SECRET = b"m" * 32


class World:
    def __init__(self, store: KeyStore, *, accept_clear: bool = True) -> None:
        self.store = store
        self.ring = KeyRing(store, SECRET)
        self.keys = LocalKeys(store, SECRET)
        self.funds = Funds(keys=FUNDS.keys, now=FUNDS.now, sealing=self.keys)
        self.engine = Engine(context(), self.funds.registry(), clock=lambda: NOW, marker_secret=SECRET,
                             sealer=self.ring, state_topic="persons", accept_clear=accept_clear)
        self.table: dict[bytes, bytes] = {}
        self.offset = 0

    def run(self, *items: tuple[str, dict[str, object]]) -> tuple[list[Receipt], list[DeadLetter]]:
        records = []
        for topic, msg in items:
            value = json.dumps(msg).encode()
            self.offset += 1
            key = json.loads(value)["pseudonym"]["value"].encode()
            records.append(Record(topic, _partition(value), self.offset, int(NOW.timestamp() * 1000), key, value))
        self.ring.prefetch(r.key for r in records if r.key)
        batch = self.engine.process(records, self.table.get)
        self.store.insert(self.ring.take_new())
        for key, (_, value) in batch.writes.items():
            if value is None:
                self.table.pop(key, None)
            else:
                self.table[key] = value
        self.store.destroy(self.ring.take_retired())
        receipts = [parse(Receipt, o.value) for o in batch.outputs if o.topic.startswith("help.receipts.")]
        dead = [parse(DeadLetter, o.value) for o in batch.outputs if o.topic == DEADLETTER_TOPIC]
        return receipts, dead


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(open_engine(f"sqlite:///{tmp_path / 'keys.db'}"))


def _reasons(receipts: list[Receipt]) -> list[str | None]:
    return [None if r.reason is None else r.reason.value for r in receipts]


def test_a_sealed_signal_is_opened_and_judged_as_in_clear(store: KeyStore) -> None:
    w = World(store)
    caf = w.funds.signal("p", Fund.CAF, "impaye_loyer")
    assert "sealed" in caf and "category" not in caf and "impaye" not in json.dumps(caf)
    receipts, dead = w.run((signal_topic(Fund.CAF), caf),
                           (signal_topic(Fund.URSSAF), w.funds.signal("p", Fund.URSSAF, "impaye_cotisations")))
    assert _reasons(receipts) == [None, None] and not dead
    # the policy saw the opened category: a medical one is refused as in clear
    receipts, _ = w.run((signal_topic(Fund.CPAM), w.funds.signal("q", Fund.CPAM, "affection_longue_duree")))
    assert _reasons(receipts) in (["categorie_medicale"], ["categorie_inconnue"])


def test_a_member_moved_or_altered_does_not_open_and_nothing_is_kept(store: KeyStore) -> None:
    w = World(store)
    good = w.funds.signal("p", Fund.CAF, "impaye_loyer", n=1)
    subject, epoch, key = w.keys(Fund.CAF, good["pseudonym"]["value"])
    clear = FUNDS.signal("p", Fund.CAF, "impaye_loyer", n=2)
    unsigned = {k: v for k, v in clear.items() if k != "signature"}
    # another fund's key (a fund holds only its own), another topic, another person's subject
    other_fund = seal_message(fund_key(b"x" * 32, "urssaf"), signal_topic(Fund.CAF), subject, epoch, unsigned)
    other_topic = seal_message(key, signal_topic(Fund.URSSAF), subject, epoch, unsigned)
    other_subject = seal_message(key, signal_topic(Fund.CAF), b"\x07" * 16, epoch, unsigned)
    moved = (other_fund, other_topic, other_subject)
    receipts, dead = w.run(*((signal_topic(Fund.CAF), FUNDS.resign(m)) for m in moved))
    assert _reasons(receipts) == ["scelle_illisible"] * 3
    assert all(d.raw == "" and d.detail.endswith(";raw_withheld") for d in dead) and len(dead) == 3


def test_a_key_replaced_by_an_erasure_is_told_to_the_fund(store: KeyStore) -> None:
    w = World(store)
    w.run((signal_topic(Fund.CAF), w.funds.signal("p", Fund.CAF, "impaye_loyer", n=1)))
    stale = w.funds.signal("p", Fund.CAF, "impaye_loyer", n=2)  # sealed before the withdrawal
    copy = w.funds.signal("p", Fund.CAF, "impaye_loyer", n=1)   # a copy of the accepted one, likewise
    # a withdrawal of the other purpose: the keys replaced, the signals' purpose still open
    w.run((CONSENTS_TOPIC, w.funds.consent("p", "consentement_retire", purposes=("prevention_perte_autonomie",),
                                           effective_at="2026-11-20T09:00:00Z")))
    receipts, dead = w.run((signal_topic(Fund.CAF), stale), (signal_topic(Fund.CAF), copy))
    assert _reasons(receipts) == ["cle_signal_remplacee"] * 2
    assert dead[0].raw == "" and base64.b64decode(dead[0].raw) == b""
    # sealed again under the key the endpoint gives now: each opens and is judged
    receipts, _ = w.run((signal_topic(Fund.CAF), w.funds.signal("p", Fund.CAF, "impaye_loyer", n=2)),
                        (signal_topic(Fund.CAF), w.funds.signal("p", Fund.CAF, "impaye_loyer", n=1)))
    assert _reasons(receipts) == [None, "doublon"]


@pytest.mark.parametrize("erasure", ["withdrawal", "objection"])
def test_a_key_replaced_by_an_erasure_that_settles_the_signal_says_why_at_once(store: KeyStore,
                                                                                erasure: str) -> None:
    """Sealing again would only have the signal refused after: the fund is told the reason
    that stands (its purpose withdrawn, whatever the basis: contract §12 check 17; the
    person's objection), not asked to seal it again."""
    w = World(store)
    w.run((signal_topic(Fund.CAF), w.funds.signal("p", Fund.CAF, "impaye_loyer", n=1)))
    stale = w.funds.signal("p", Fund.CAF, "impaye_loyer", n=2)  # sealed before the erasure
    kind, reason = (("consentement_retire", "consentement_retire") if erasure == "withdrawal"
                    else ("opposition", "opposition"))
    w.run((CONSENTS_TOPIC, w.funds.consent("p", kind, effective_at="2026-11-20T09:00:00Z")))
    receipts, dead = w.run((signal_topic(Fund.CAF), stale))
    assert _reasons(receipts) == [reason]
    assert dead[0].raw == "" and dead[0].detail.endswith(";raw_withheld")


def test_a_signal_in_clear_is_refused_where_sealing_is_required(store: KeyStore) -> None:
    w = World(store, accept_clear=False)
    receipts, dead = w.run((signal_topic(Fund.CAF), FUNDS.signal("p", Fund.CAF, "impaye_loyer")),
                           (signal_topic(Fund.CAF), w.funds.signal("p", Fund.CAF, "impaye_loyer", n=1)))
    assert _reasons(receipts) == ["signal_non_scelle", None]
    # its payload is kept sealed under the person's key, as any refusal after the checks
    assert dead[0].detail.endswith(";raw_sealed")
    accepting = World(store)
    receipts, _ = accepting.run((signal_topic(Fund.CAF), FUNDS.signal("r", Fund.CAF, "impaye_loyer")))
    assert _reasons(receipts) == [None]


def test_a_signal_refused_for_an_objection_leaves_no_readable_copy(store: KeyStore) -> None:
    w = World(store)
    w.run((signal_topic(Fund.CAF), w.funds.signal("p", Fund.CAF, "impaye_loyer", n=1)))
    w.run((CONSENTS_TOPIC, w.funds.consent("p", "opposition", effective_at="2026-11-20T09:00:00Z")))
    # the fund, which does not know, asks a key (a new one: the earlier ones are destroyed)
    late = w.funds.signal("p", Fund.CAF, "impaye_loyer", n=2)
    value = late["pseudonym"]["value"]
    subject, epoch = bytes.fromhex(late["sealed"]["subject"]), late["sealed"]["epoch"]
    keys = store.load([subject])[subject]
    assert keys[epoch] and not any(keys[e] for e in keys if e < epoch)  # the earlier: tombstone only
    receipts, dead = w.run((signal_topic(Fund.CAF), late))
    assert _reasons(receipts) == ["opposition"] and dead[0].raw == ""
    # that key is gone too: the copy on the topic opens for no one
    assert not any(store.load([subject])[subject].values())
    assert KeyRing(store, SECRET).data_key(value.encode(), subject, epoch) is None
