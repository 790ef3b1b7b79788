"""The casebook repository on SQLite and on the real PostgreSQL: idempotent effects,
case numbers, erasure on objection, tracking records in the same transaction."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from services.casebook import store
from services.casebook import tables as t
from services.casebook.sink import SINK_TOPICS, BatchResult, apply_records
from services.core.messages import to_wire
from services.errors import TransientError
from services.platform.db import migrate
from services.platform.topics import CONSENTS_TOPIC, FOLLOWUPS_TOPIC, SITUATIONS_TOPIC
from services.platform.tracking import Record, TrackedConsumer, load_positions
from tests.support import situations as F

pytestmark = pytest.mark.integration
UTC = dt.UTC


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[object, ...]]]:
    out = {}
    with engine.connect() as conn:
        for table in (t.situations, t.followups, t.case_sequences, t.erased_situations, t.objections):
            pk = list(table.primary_key.columns)
            out[table.name] = [tuple(r) for r in conn.execute(sa.select(table).order_by(*pk))]
    return out


def test_migrate_is_idempotent(engine: sa.Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        assert store.count_rows(conn, t.situations) == 0


def test_same_events_twice_give_the_same_state(engine: sa.Engine) -> None:
    events = [F.situation(i) for i in range(20)] + [F.situation(3, version=2, priority="rouge")]
    fus = [F.followup(1, "caf", "fsl"), F.followup(2, "urssaf", "echeancier_paiement")]
    with engine.begin() as conn:
        assert store.apply_situations(conn, events) == 20
        assert store.apply_followups(conn, fus) == 2
    first = snapshot(engine)
    with engine.begin() as conn:
        assert store.apply_situations(conn, events) == 0
        assert store.apply_followups(conn, fus) == 0
    assert snapshot(engine) == first


def test_latest_version_wins_whatever_the_order(engine: sa.Engine) -> None:
    base = dt.datetime(2026, 11, 3, 9, tzinfo=UTC)
    v1 = F.situation(7, version=1, occurred_at=base, priority="vert")
    v2 = F.situation(7, version=2, occurred_at=base + dt.timedelta(days=2), priority="orange")
    v3 = F.situation(7, version=3, occurred_at=base + dt.timedelta(days=5), priority="rouge",
                     funds=("caf", "urssaf", "cpam"))
    for event in (v3, v1, v2):  # out of order, one per transaction
        with engine.begin() as conn:
            store.apply_situations(conn, [event])
    with engine.connect() as conn:
        sit = store.situation_by_id(conn, v1.situation_id)
    assert sit is not None
    assert (sit.version, sit.priority, sit.funds) == (3, "rouge", ("caf", "urssaf", "cpam"))
    assert sit.opened_at == base  # the opening, learnt late, still counts
    assert sit.case_number == "35-2026-11-0001"  # assigned once, at first sight


def test_case_numbers_are_per_territory_and_month_and_stable(engine: sa.Engine) -> None:
    oct_ = dt.datetime(2026, 10, 2, tzinfo=UTC)
    nov = dt.datetime(2026, 11, 2, tzinfo=UTC)
    with engine.begin() as conn:
        store.apply_situations(conn, [F.situation(1, occurred_at=oct_), F.situation(2, occurred_at=nov),
                                      F.situation(3, occurred_at=nov + dt.timedelta(hours=1)),
                                      F.situation(4, occurred_at=nov, territory="61")])
    with engine.begin() as conn:
        store.apply_situations(conn, [F.situation(5, occurred_at=nov + dt.timedelta(days=3)),
                                      F.situation(2, version=2, occurred_at=nov + dt.timedelta(days=9))])
    with engine.connect() as conn:
        numbers = {n: store.situation_by_id(conn, F.hex32("situation", n)).case_number  # type: ignore[union-attr]
                   for n in range(1, 6)}
    assert numbers == {1: "35-2026-10-0001", 2: "35-2026-11-0001", 3: "35-2026-11-0002",
                       4: "61-2026-11-0001", 5: "35-2026-11-0003"}


def test_objection_erases_the_person_and_keeps_it_erased(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        store.apply_situations(conn, [F.situation(1, person="p1"), F.situation(2, person="p1"),
                                      F.situation(3, person="p2")])
        store.apply_followups(conn, [F.followup(1, "caf", "fsl"), F.followup(3, "caf", "fsl")])
    with engine.begin() as conn:
        assert store.apply_consents(conn, [F.objection("p1")]) == 2
    with engine.begin() as conn:  # a replay of old events brings nothing back
        store.apply_situations(conn, [F.situation(1, person="p1"), F.situation(2, version=2, person="p1")])
        store.apply_followups(conn, [F.followup(1, "caf", "fsl", k=1)])
        store.apply_consents(conn, [F.objection("p1")])
    with engine.connect() as conn:
        remaining = [r.situation_id for r in conn.execute(sa.select(t.situations.c.situation_id))]
        fus = [r.situation_id for r in conn.execute(sa.select(t.followups.c.situation_id))]
        pseudonyms = [r.pseudonym for r in conn.execute(sa.select(t.situations.c.pseudonym))]
    assert remaining == [F.hex32("situation", 3)]
    assert fus == [F.hex32("situation", 3)]
    assert F.pseudonym("p1").value not in pseudonyms
    # A later situation (after a new consent) is accepted again.
    later = F.situation(9, person="p1", occurred_at=dt.datetime(2026, 12, 2, tzinfo=UTC))
    with engine.begin() as conn:
        assert store.apply_situations(conn, [later]) == 1


def _records(topic: str, events: list[object], partition: int = 0, start: int = 0) -> list[Record]:
    return [Record(topic, partition, start + i, 0, None, to_wire(e))  # type: ignore[arg-type]
            for i, e in enumerate(events)]


def _apply(engine: sa.Engine, name: str, records: list[Record]) -> BatchResult:
    """One poll of the casebook sink's tracked consumer."""
    return TrackedConsumer(engine, name, SINK_TOPICS, apply_records).process(records).result


def test_offsets_are_stored_with_the_effect(engine: sa.Engine) -> None:
    recs = (_records(SITUATIONS_TOPIC, [F.situation(i) for i in range(10)])
            + _records(FOLLOWUPS_TOPIC, [F.followup(1, "caf", "fsl")], partition=2, start=40)
            + _records(CONSENTS_TOPIC, [F.objection(5)], partition=1, start=7)
            + [Record(SITUATIONS_TOPIC, 0, 10, 0, None, b"{not json")])
    result = _apply(engine, "test", recs)
    assert (result.applied.situations, result.applied.followups, result.applied.erased, result.skipped) == \
        (10, 1, 1, 1)
    with engine.connect() as conn:
        assert load_positions(conn, "test") == {(SITUATIONS_TOPIC, 0): 11, (FOLLOWUPS_TOPIC, 2): 41,
                                                (CONSENTS_TOPIC, 1): 8}
    state = snapshot(engine)
    _apply(engine, "test", recs)  # redelivered after a crash: nothing changes
    assert snapshot(engine) == state


def test_a_failed_batch_writes_neither_effect_nor_offset(engine: sa.Engine) -> None:
    ok = F.situation(1)
    with engine.begin() as conn:
        conn.execute(sa.insert(t.case_sequences).values(territory="35", year_month="2026-11", last_value=0))
        # A row that will collide with the next case number: the batch must fail whole.
        row: dict[str, object] = {c.name: None for c in t.situations.columns}
        row.update(situation_id="f" * 32, case_number="35-2026-11-0001", version=1, kind="ouverte",
                   territory="35", pseudonym_key_id="k-1", pseudonym="x" * 43, detail={},
                   priority="vert", first_signal_on=dt.date(2026, 1, 1),
                   last_signal_on=dt.date(2026, 1, 1), opened_at=dt.datetime(2026, 1, 1, tzinfo=UTC),
                   updated_at=dt.datetime(2026, 1, 1, tzinfo=UTC))
        conn.execute(sa.insert(t.situations).values(row))
    with pytest.raises(TransientError):
        _apply(engine, "test", _records(SITUATIONS_TOPIC, [ok]))
    with engine.connect() as conn:
        assert load_positions(conn, "test") == {}
        assert store.situation_by_id(conn, ok.situation_id) is None
