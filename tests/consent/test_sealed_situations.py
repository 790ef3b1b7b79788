"""Situation events sealed under the person's data key (services/platform/sealed_situations.py):
what ``help.situations.v1`` carries of a person opens only while the person's key exists,
a situation that outlives a rotation is published again under the new key, and the
casebook sink takes what opens and skips what does not. No broker: the engine, a key
table in SQLite, the order of a checkpoint (tests/consent/test_datakeys.py's World)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from services.casebook import tables as ct
from services.casebook.sink import apply_records
from services.core.messages import (
    DeadLetter,
    SealedSituationEvent,
    SituationEvent,
    parse,
    parse_situation,
    to_wire,
)
from services.core.reasons import Reason
from services.core.types import Fund
from services.correlator.engine import H_ERASE, REPARTITION_TOPIC, Output, Record, erasure_command
from services.platform.datakeys import KeyStore, envelope, is_sealed
from services.platform.db import migrate, open_engine
from services.platform.partitioning import partition_for
from services.platform.sealed_situations import open_situations, sealed_bytes, sealed_wire
from services.platform.topics import CONSENTS_TOPIC, DEADLETTER_TOPIC, ORIGIN_PURGE, SITUATIONS_TOPIC, signal_topic
from tests.consent.test_datakeys import World
from tests.correlator.core_fixtures import PSEUDO
from tests.correlator.test_exchange_rules import FUNDS, NOW

PERSON = FUNDS.pseudonym("p")


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    engine = open_engine(f"sqlite:///{tmp_path / 'exchange.db'}")
    migrate(engine)
    return KeyStore(engine)


def _events(outputs: list[object]) -> list[bytes]:
    return [o.value for o in outputs if isinstance(o, Output) and o.topic == SITUATIONS_TOPIC and o.value]


def _opened(store: KeyStore, values: list[bytes]) -> list[SituationEvent | None]:
    with store.engine.connect() as conn:
        return open_situations(conn, [parse_situation(v) for v in values])


def _situation(w: World) -> list[bytes]:
    return _events(w.run((signal_topic(Fund.CAF), FUNDS.signal("p", Fund.CAF, "impaye_loyer", n=0)),
                         (signal_topic(Fund.URSSAF), FUNDS.signal("p", Fund.URSSAF, "impaye_cotisations", n=0))))


def test_the_wire_template_is_the_models_json() -> None:
    raw = b"HXS1" + b"s" * 16 + b"\x00\x00\x00\x07" + b"n" * 12 + bytes(range(200))
    wire = sealed_wire("a" * 32, "b" * 32, 3, raw)
    event = parse(SealedSituationEvent, wire)
    assert to_wire(event) == wire and sealed_bytes(event) == raw and envelope(sealed_bytes(event))[1] == 7


def test_the_person_members_are_sealed_and_open_with_the_key_table(store: KeyStore) -> None:
    w = World(store)
    (value,) = _situation(w)
    event = parse(SealedSituationEvent, value)
    for clear in (PERSON.encode(), b"impaye", b"caf", b"first_signal_on", PSEUDO.key_id.encode()):
        assert clear not in value, clear
    assert is_sealed(sealed_bytes(event))
    (opened,) = _opened(store, [value])
    assert opened is not None and opened.pseudonym.value == PERSON and opened.situation_id == event.situation_id
    assert opened.version == event.version and {c.code for c in opened.categories} == {
        "impaye_loyer", "impaye_cotisations"}


def test_a_rotation_that_leaves_the_situation_publishes_it_again_under_the_new_key(store: KeyStore) -> None:
    w = World(store)
    w.run((CONSENTS_TOPIC, FUNDS.consent("p", "consentement_donne", purposes=("prevention_perte_autonomie",),
                                         effective_at="2026-11-01T09:00:00Z")))
    first = _situation(w)
    # Withdrawn for a purpose the situation does not show: it stays, the key rotates.
    again = _events(w.run((CONSENTS_TOPIC, FUNDS.consent(
        "p", "consentement_retire", purposes=("prevention_perte_autonomie",),
        effective_at="2026-11-20T09:00:00Z", n=1))))
    assert len(again) == 1
    before, after = _opened(store, first), _opened(store, again)
    assert before == [None]  # the earlier copies: unreadable
    assert after[0] is not None and after[0].version == parse_situation(first[0]).version
    # The purge's command, the situation built before it: erased, nothing published again.
    key, value, partition = erasure_command(PSEUDO.key_id, PERSON, w.engine.partitions,
                                            issued_at=NOW + dt.timedelta(hours=1))
    out = w.run(Record(REPARTITION_TOPIC, partition, 99, 0, key, value, {H_ERASE: ORIGIN_PURGE}))
    assert _events(out) == [] and any(o.topic == SITUATIONS_TOPIC and o.value is None for o in out)  # type: ignore[attr-defined]
    assert _opened(store, again) == [None]


def test_an_objection_leaves_no_event_readable(store: KeyStore) -> None:
    w = World(store)
    first = _situation(w)
    out = w.run((CONSENTS_TOPIC, FUNDS.consent("p", "opposition", effective_at="2026-11-20T09:00:00Z")))
    assert _events(out) == [] and _opened(store, first) == [None]


def test_the_casebook_sink_takes_what_opens_and_skips_an_erased_persons_event(store: KeyStore) -> None:
    w = World(store)
    (value,) = _situation(w)
    sid = parse_situation(value).situation_id
    record = Record(SITUATIONS_TOPIC, 0, 0, 0, sid.encode(), value)
    with store.engine.begin() as conn:
        result = apply_records(conn, [record])
        assert result.applied.situations == 1 and result.skipped == 0
        row = conn.execute(ct.situations.select().where(ct.situations.c.situation_id == sid)).one()
        assert row.pseudonym == PERSON
        conn.execute(ct.situations.delete())
    w.run((CONSENTS_TOPIC, FUNDS.consent("p", "opposition", effective_at="2026-11-20T09:00:00Z")))
    with store.engine.begin() as conn:  # read again after the erasure (a sink behind, or replaying)
        result = apply_records(conn, [record])
        assert result.applied.situations == 0 and result.skipped == 1
        assert conn.execute(ct.situations.select()).all() == []


def _forward(w: World, msg: dict[str, object], offset: int) -> Output:
    """``msg`` read from the wrong partition: the engine forwards it to its person's."""
    value = json.dumps(msg).encode()
    right = partition_for(PERSON, w.engine.partitions)
    out = w.run(Record(signal_topic(Fund.CAF), (right + 1) % w.engine.partitions, offset, int(NOW.timestamp() * 1000),
                       PERSON.encode(), value))
    (forward,) = [o for o in out if isinstance(o, Output) and o.topic == REPARTITION_TOPIC]
    assert forward.partition == right and forward.value is not None and is_sealed(forward.value)
    for clear in (PERSON.encode(), b"impaye", b"separation", b"sealed_ref"):
        assert clear not in forward.value, clear
    return forward


def _read_back(w: World, forward: Output, offset: int) -> list[object]:
    assert forward.partition is not None and forward.value is not None
    return w.run(Record(REPARTITION_TOPIC, forward.partition, offset, forward.timestamp_ms or 0,
                        forward.key, forward.value, dict(forward.headers)))


def test_a_forwarded_signal_is_sealed_and_refused_with_nothing_kept_once_erased(store: KeyStore) -> None:
    w = World(store)
    first = _forward(w, FUNDS.signal("p", Fund.CAF, "impaye_loyer", n=0), 500)
    out = _read_back(w, first, 0)
    assert any(b'"status":"accepte"' in (o.value or b"") for o in out)  # type: ignore[attr-defined]
    second = _forward(w, FUNDS.signal("p", Fund.CAF, "separation", n=1), 501)
    w.run((CONSENTS_TOPIC, FUNDS.consent("p", "opposition", effective_at="2026-11-20T09:00:00Z")))
    out = _read_back(w, second, 1)
    (letter,) = [parse(DeadLetter, o.value) for o in out if o.topic == DEADLETTER_TOPIC]  # type: ignore[attr-defined]
    assert letter.reason is Reason.DONNEES_EFFACEES and letter.raw == "" and letter.detail.endswith(";raw_withheld")
    assert letter.source.topic == signal_topic(Fund.CAF) and letter.source.offset == 501
    (receipt,) = [o for o in out if o.topic == "help.receipts.caf.v1"]  # type: ignore[attr-defined]
    assert b'"reason":"donnees_effacees"' in receipt.value  # type: ignore[attr-defined]
