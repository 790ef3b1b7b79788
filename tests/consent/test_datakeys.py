"""Per-person data keys (services/platform/datakeys.py): the correlator's state sealed
under them on the changelog, and every earlier copy unreadable once an erasure destroyed
its key. No broker: the engine, a key table in SQLite, the order of a checkpoint."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.core.messages import Pseudonym
from services.core.person import PersonState, situation_id_for
from services.core.types import Fund
from services.correlator.engine import H_ERASE, REPARTITION_TOPIC, Engine, Record, erasure_command, person_key
from services.platform.datakeys import (
    CIPHERS_MAX,
    DIGESTED,
    KeyRing,
    KeyStore,
    changelog_keys,
    data_keys,
    envelope,
    is_sealed,
    seal,
    subject_of,
    unseal,
)
from services.platform.db import open_engine
from services.platform.topics import CONSENTS_TOPIC, ORIGIN_PURGE, SITUATIONS_TOPIC, signal_topic
from tests.correlator.core_fixtures import PSEUDO, context
from tests.correlator.test_exchange_rules import FUNDS, NOW, _partition

SECRET = b"m" * 32
TOPIC = "corr-persons-changelog"


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(open_engine(f"sqlite:///{tmp_path / 'keys.db'}"))


def test_a_sealed_value_opens_only_with_its_key_topic_and_person() -> None:
    key, other = b"k" * 32, b"o" * 32
    raw = seal(key, TOPIC, b"s" * 16, 3, b'{"a":1}')
    assert is_sealed(raw) and envelope(raw) == (b"s" * 16, 3) and b'"a"' not in raw
    assert unseal(key, TOPIC, raw) == b'{"a":1}'
    assert unseal(other, TOPIC, raw) is None
    assert unseal(key, "another-topic", raw) is None  # the topic is bound
    moved = raw[:4] + b"t" * 16 + raw[20:]
    assert unseal(key, TOPIC, moved) is None  # and the person and epoch


class World:
    """An engine sealing with a key ring, its changelog as a dict, checkpoints in order."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.ring = KeyRing(store, SECRET)
        self.engine = Engine(context(), FUNDS.registry(), clock=lambda: NOW, marker_secret=SECRET,
                             sealer=self.ring, state_topic=TOPIC)
        self.table: dict[bytes, bytes] = {}
        self.log: list[bytes] = []  # every value ever written: the uncompacted changelog
        self.offset = 0

    def run(self, *items: tuple[str, dict[str, object]] | Record) -> list[object]:
        records = []
        for item in items:
            if isinstance(item, Record):
                records.append(item)
                continue
            topic, msg = item
            value = json.dumps(msg).encode()
            self.offset += 1
            records.append(Record(topic, _partition(value), self.offset, int(NOW.timestamp() * 1000),
                                  FUNDS.pseudonym("p").encode(), value))
        self.ring.prefetch(r.key for r in records if r.key and r.topic != REPARTITION_TOPIC)
        batch = self.engine.process(records, self.load)
        self.store.insert(self.ring.take_new())  # 1. new keys, before the writes
        for key, (_, value) in batch.writes.items():  # 2. the writes
            if value is None:
                self.table.pop(key, None)
            else:
                self.table[key] = value
                self.log.append(value)
        self.store.destroy(self.ring.take_retired())  # 3. retired keys, before the commit
        return batch.outputs

    def load(self, key: bytes) -> bytes | None:
        """The state under an engine key, or under a changelog key (``DIGESTED``), as the
        worker's store answers (this table is keyed by person keys)."""
        if key.startswith(DIGESTED):
            digest = changelog_keys(SECRET)
            key = next((k for k in self.table if digest(k) == key[len(DIGESTED):]), key)
        return self.table.get(key)

    def stored_keys(self) -> list[tuple[str, int]]:
        with self.store.engine.connect() as conn:
            # (keys only: a tombstone, an empty key, keeps the epoch used and nothing else)
            return [(s, e) for s, e in conn.execute(sa.select(data_keys.c.subject, data_keys.c.epoch)
                                                    .where(sa.func.length(data_keys.c.key) > 0))]

    def readable(self) -> list[PersonState]:
        """What a fresh reader holding the key table opens of every value ever written."""
        ring = KeyRing(self.store, SECRET)
        value = FUNDS.pseudonym("p").encode()
        clear = [raw for raw in self.log if not is_sealed(raw)]  # only the objection's marker
        assert all(value not in raw and b"impaye" not in raw for raw in clear), clear
        opened = [ring.open(value, TOPIC, raw) for raw in self.log if is_sealed(raw)]
        return [PersonState.model_validate_json(p) for p in opened if p is not None]


def _signals(w: World, n: int) -> None:
    w.run((signal_topic(Fund.CAF), FUNDS.signal("p", Fund.CAF, "impaye_loyer", n=n)),
          (signal_topic(Fund.URSSAF), FUNDS.signal("p", Fund.URSSAF, "impaye_cotisations", n=n)))


def test_state_is_sealed_on_the_changelog_and_read_back(store: KeyStore) -> None:
    w = World(store)
    _signals(w, 0)
    pkey = person_key(PSEUDO.key_id, FUNDS.pseudonym("p"))
    raw = w.table[pkey]
    assert is_sealed(raw) and FUNDS.pseudonym("p").encode() not in raw and b"impaye" not in raw
    assert len(w.stored_keys()) == 1 and FUNDS.pseudonym("p") not in repr(w.stored_keys())  # a keyed digest
    # A fresh worker (restart): the sealed state opens, a duplicate is recognised.
    w.ring = KeyRing(store, SECRET)
    w.engine = Engine(context(), FUNDS.registry(), clock=lambda: NOW, marker_secret=SECRET,
                      sealer=w.ring, state_topic=TOPIC)
    again = w.run((signal_topic(Fund.CAF), FUNDS.signal("p", Fund.CAF, "impaye_loyer", n=0)))
    assert any(b'"reason":"doublon"' in (o.value or b"") for o in again)  # type: ignore[attr-defined]


def test_objection_destroys_every_key_of_the_person(store: KeyStore) -> None:
    w = World(store)
    _signals(w, 0)
    assert len(w.readable()) == 1
    w.run((CONSENTS_TOPIC, FUNDS.consent("p", "opposition", effective_at="2026-11-20T09:00:00Z")))
    assert w.stored_keys() == [] and w.readable() == []  # every copy on the log: unreadable
    refused = w.run((signal_topic(Fund.CAF), FUNDS.signal("p", Fund.CAF, "separation", n=2)))
    assert any(b'"reason":"opposition"' in (o.value or b"") for o in refused)  # the marker still says so


@pytest.mark.parametrize("named", ["by digests", "by pseudonym (an earlier version's command)"])
def test_withdrawal_and_purge_rotate_the_key(store: KeyStore, named: str) -> None:
    w = World(store)
    w.run((CONSENTS_TOPIC, FUNDS.consent("p", "consentement_donne", effective_at="2026-11-01T09:00:00Z")))
    _signals(w, 0)
    before = len(w.log)
    w.run((CONSENTS_TOPIC, FUNDS.consent("p", "consentement_retire", effective_at="2026-11-20T09:00:00Z", n=1)))
    # Only what was written after the withdrawal opens; the person's consent marks are in it.
    left = w.readable()
    assert len(left) == len([raw for raw in w.log if is_sealed(raw)]) - before and left and left[-1].marks
    assert [e for _, e in w.stored_keys()] == [2]

    key, value, partition = erasure_command(PSEUDO.key_id, FUNDS.pseudonym("p"), w.engine.partitions,
                                            secret=SECRET if named == "by digests" else None,
                                            issued_at=NOW + dt.timedelta(hours=1))
    if named == "by digests":  # the command and its record key name no one without the marker key
        assert FUNDS.pseudonym("p").encode() not in key + value and key == subject_of(SECRET, FUNDS.pseudonym(
            "p").encode()).hex().encode()
    out = w.run(Record(REPARTITION_TOPIC, partition, 99, 0, key, value, {H_ERASE: ORIGIN_PURGE}))
    assert [e for _, e in w.stored_keys()] == [3] and len(w.readable()) == 1  # the state after the purge only
    assert [o.key for o in out if o.topic == SITUATIONS_TOPIC and o.value is None] == [  # type: ignore[attr-defined]
        situation_id_for(Pseudonym(key_id=PSEUDO.key_id, value=FUNDS.pseudonym("p"))).encode()]


def test_a_purge_of_a_person_with_no_state_destroys_the_keys_a_fund_was_handed(store: KeyStore) -> None:
    """The key endpoint handed a fund the person's key, the correlator holds no state of
    them: a command naming the person by digests destroys the key all the same, and
    tombstones the situation it names."""
    w = World(store)
    person = FUNDS.pseudonym("nobody-held")
    store.current([subject_of(SECRET, person.encode())])
    key, value, partition = erasure_command(PSEUDO.key_id, person, w.engine.partitions, secret=SECRET,
                                            issued_at=NOW)
    out = w.run(Record(REPARTITION_TOPIC, partition, 7, 0, key, value, {H_ERASE: ORIGIN_PURGE}))
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(data_keys.c.epoch, data_keys.c.key).where(
            data_keys.c.subject == subject_of(SECRET, person.encode()).hex())).all()
    assert [(e, bytes(k)) for e, k in rows] == [(1, b"")]  # a tombstone: the epoch stays used
    assert [o.key for o in out if o.topic == SITUATIONS_TOPIC] == [  # type: ignore[attr-defined]
        situation_id_for(Pseudonym(key_id=PSEUDO.key_id, value=person)).encode()]


def test_a_crash_before_the_keys_are_destroyed_is_redriven(store: KeyStore) -> None:
    """kill -9 after the new state was written, before the old keys were destroyed: the
    objection is read again after the restart (its offset was not committed) and destroys
    them then; a crash before the new key was stored leaves the old state readable."""
    w = World(store)
    _signals(w, 0)
    objection = (CONSENTS_TOPIC, FUNDS.consent("p", "opposition", effective_at="2026-11-20T09:00:00Z"))
    # A worker that processes the objection and dies before destroying the keys.
    crashed = World(store)
    crashed.table, crashed.log = dict(w.table), list(w.log)
    value = json.dumps(objection[1]).encode()
    rec = Record(CONSENTS_TOPIC, _partition(value), 50, int(NOW.timestamp() * 1000),
                 FUNDS.pseudonym("p").encode(), value)
    crashed.ring.prefetch([rec.key or b""])
    batch = crashed.engine.process([rec], crashed.table.get)
    for key, (_, v) in batch.writes.items():  # written, then the process dies
        crashed.table.pop(key, None) if v is None else crashed.table.__setitem__(key, v)
    assert crashed.readable() != []  # the old state's key is still there
    restarted = World(store)
    restarted.table, restarted.log = crashed.table, crashed.log
    restarted.run(rec)  # read again
    assert restarted.stored_keys() == [] and restarted.readable() == []


def test_the_sweep_rotates_the_key_of_a_person_it_trims(store: KeyStore) -> None:
    """Signals past the correlation window leave the state: their earlier copies go too."""
    from services.correlator.state import PersonStore
    from services.platform.datakeys import changelog_key

    w = World(store)
    _signals(w, 0)
    persons = PersonStore(TOPIC, lambda k: changelog_key(SECRET, k))
    for key, value in w.table.items():
        persons.put(key, 0, value)
    (digest, _, raw), = persons.sweep_page(10)
    assert FUNDS.pseudonym("p").encode() not in digest  # the changelog's key names no one
    later = NOW + dt.timedelta(days=context().rules.fenetre_correlation_jours + 1)
    w.engine.clock = lambda: later
    writes = w.engine.sweep([(digest, 0, raw)])
    (pkey, (_, value)), = writes.items()
    assert pkey == person_key(PSEUDO.key_id, FUNDS.pseudonym("p"))  # written back under the person's key
    w.store.insert(w.ring.take_new())
    w.log.append(value)
    w.store.destroy(w.ring.take_retired())
    (left,) = w.readable()  # only the swept state opens now
    assert left.signals == ()


def test_a_dead_letter_of_a_checked_signal_is_sealed_and_erased_with_the_person(store: KeyStore) -> None:
    """A signal refused after the checks (here a replay, ``doublon``) keeps its payload in
    the dead letter, sealed under the person's key: readable until the person objects."""
    import base64

    from services.core.messages import DeadLetter, parse
    from services.platform.topics import DEADLETTER_TOPIC

    w = World(store)
    signal = (signal_topic(Fund.CAF), FUNDS.signal("p", Fund.CAF, "impaye_loyer", n=0))
    w.run(signal)
    outputs = w.run(signal)  # the replay, at another position
    (letter,) = [parse(DeadLetter, o.value) for o in outputs if o.topic == DEADLETTER_TOPIC]  # type: ignore[attr-defined]
    assert letter.reason.value == "doublon" and letter.detail.endswith(";raw_sealed")
    sealed = base64.b64decode(letter.raw)
    assert is_sealed(sealed) and FUNDS.pseudonym("p").encode() not in sealed
    fresh = KeyRing(store, SECRET)
    assert fresh.open(None, DEADLETTER_TOPIC, sealed) == json.dumps(signal[1]).encode()
    w.run((CONSENTS_TOPIC, FUNDS.consent("p", "opposition", effective_at="2026-11-20T09:00:00Z")))
    assert KeyRing(store, SECRET).open(None, DEADLETTER_TOPIC, sealed) is None
    # Refused before the checks (not JSON): no person to seal it for, nothing of it kept
    # but its size and digest.
    bad = w.run(Record(signal_topic(Fund.CAF), 0, 999, 0, None, b'{"signal_id": '))
    (kept,) = [parse(DeadLetter, o.value) for o in bad if o.topic == DEADLETTER_TOPIC]  # type: ignore[attr-defined]
    assert kept.raw == "" and kept.detail.endswith(";raw_withheld") and kept.envelope is None
    assert (kept.raw_size, kept.raw_sha256) == (14, hashlib.sha256(b'{"signal_id": ').hexdigest())


def test_the_ring_stays_bounded_and_reloads_what_it_forgot(store: KeyStore) -> None:
    """Its memory must not grow with the persons: keys held for ``max_subjects`` persons,
    ciphers for at most CIPHERS_MAX keys; a forgotten person's key is read back from the table."""
    ring = KeyRing(store, SECRET, max_subjects=50)
    persons = [f"pseudo-{i}".encode() for i in range(CIPHERS_MAX + 10)]
    sealed = []
    for start in range(0, len(persons), 40):  # batches of 40 persons, their keys stored between
        batch = persons[start:start + 40]
        ring.prefetch(batch)
        sealed += [ring.seal(p, TOPIC, b"state of " + p) for p in batch]
        store.insert(ring.take_new())
    assert len(ring._keys) <= 50 and len(ring._subjects) <= 51
    assert 0 < len(ring._ciphers) <= CIPHERS_MAX
    assert ring.open(persons[0], TOPIC, sealed[0]) == b"state of " + persons[0]  # evicted, reloaded
    assert ring.open(persons[-1], TOPIC, sealed[-1]) == b"state of " + persons[-1]
