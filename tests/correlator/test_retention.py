"""Retention in the correlator: the sweep (signals older than the window leave the state
even if no further signal comes) and the purge's erasure command (state forgotten, the
situation tombstoned, nothing purged comes back with the next signal)."""

from __future__ import annotations

import datetime as dt

from services.core.messages import Pseudonym
from services.core.person import PersonState, new_person, purge_person, sweep_person
from services.core.rules import on_signal
from services.core.types import Fund
from services.correlator.engine import (
    H_ERASE,
    REPARTITION_TOPIC,
    Engine,
    Record,
    erasure_command,
    person_key,
)
from services.correlator.state import PersonStore
from services.platform.partitioning import partition_for
from services.platform.topics import ORIGIN_HEADER, ORIGIN_PURGE, SITUATIONS_TOPIC
from tests.correlator.core_fixtures import PSEUDO, TODAY, context, entry
from tests.support.signals import Funds

F = Fund
WINDOW = context().rules.fenetre_correlation_jours


def _state() -> PersonState:
    state = new_person(PSEUDO)
    for e in (entry(F.CAF, "impaye_loyer", on=TODAY), entry(F.CPAM, "non_recours_c2s_puma", on=TODAY, n=1)):
        state = on_signal(context(), state, e, today=TODAY,
                          occurred_at=dt.datetime.combine(TODAY, dt.time(12), dt.UTC)).state
    return state


def test_sweep_drops_only_signals_older_than_the_window() -> None:
    state = _state()
    assert len(state.signals) == 2 and state.situation is not None
    same = sweep_person(state, today=TODAY + dt.timedelta(days=WINDOW), window_days=WINDOW, max_signals=32)
    assert same is None  # still in the window: nothing to write
    swept = sweep_person(state, today=TODAY + dt.timedelta(days=WINDOW + 1), window_days=WINDOW,
                         max_signals=32)
    assert swept is not None and swept.signals == () and swept.seen == state.seen
    assert swept.situation == state.situation  # the casebook's retention decides (purge command)


def test_engine_sweep_over_the_store_pages() -> None:
    later = dt.datetime.combine(TODAY + dt.timedelta(days=WINDOW + 1), dt.time(), dt.UTC)
    engine = Engine(context(), Funds().registry(), clock=lambda: later)
    store = PersonStore("changelog")
    old = _state().model_dump_json().encode()
    empty = new_person(Pseudonym(key_id=PSEUDO.key_id, value="B" * 43)).model_dump_json().encode()
    store.put(b"a", 1, old)
    store.put(b"b", 2, empty)
    seen: list[bytes] = []
    while page := store.sweep_page(1):
        writes = engine.sweep(page)
        seen += [k for k, _, _ in page]
        for key, (partition, value) in writes.items():
            assert (key, partition) == (b"a", 1)
            assert PersonState.model_validate_json(value).signals == ()
            store.put(key, partition, value)
    assert sorted(seen) == [b"a", b"b"]  # one pass over every person, then an empty page
    assert store.sweep_page(1) != []  # the next pass starts
    assert engine.sweep([(b"a", 1, store.get(b"a") or b"")]) == {}  # swept once is enough


def test_purge_command_forgets_the_person_and_tombstones_the_situation() -> None:
    state = _state()
    assert state.situation is not None
    purged = purge_person(state)
    assert purged.signals == () and purged.situation is None
    assert purged.version_floor == state.situation.version and purged.seen == state.seen

    engine = Engine(context(), Funds().registry(),
                    clock=lambda: dt.datetime.combine(TODAY, dt.time(13), dt.UTC))
    key, value, partition = erasure_command(PSEUDO.key_id, PSEUDO.value, engine.partitions)
    assert partition == partition_for(PSEUDO.value, engine.partitions)
    rec = Record(REPARTITION_TOPIC, partition, 7, 0, key, value, {H_ERASE: ORIGIN_PURGE})
    pkey = person_key(PSEUDO.key_id, PSEUDO.value)
    raw = state.model_dump_json().encode()
    batch = engine.process([rec], lambda k: raw if k == pkey else None)
    (out,) = batch.outputs
    assert (out.topic, out.value, out.headers) == (SITUATIONS_TOPIC, None, ((ORIGIN_HEADER, ORIGIN_PURGE),))
    written = PersonState.model_validate_json(batch.writes[pkey][1])
    assert written.signals == () and written.situation is None
    # No state at all: the tombstone still goes (the topic's copies must go either way).
    batch = engine.process([rec], lambda k: None)
    assert [o.value for o in batch.outputs] == [None] and batch.writes == {}
    # Sent to another partition: forwarded to the person's, header kept.
    wrong = rec._replace(partition=(partition + 1) % engine.partitions)
    (fwd,) = engine.process([wrong], lambda k: None).outputs
    assert (fwd.topic, fwd.partition, fwd.headers) == (REPARTITION_TOPIC, partition, ((H_ERASE, ORIGIN_PURGE),))


def test_objection_marker_is_keyed_and_holds_no_pseudonym() -> None:
    """With a marker key, what an objection leaves on the changelog is a tombstone under
    the pseudonym and a marker under a keyed digest (no pseudonym in key or value); the
    marker still refuses the next signal, a redelivered objection re-sends the situation's
    tombstone, and a consent recorded later lifts it (the marker goes)."""
    import json

    from services.correlator.engine import MARKER_PREFIX
    from services.platform.topics import CONSENTS_TOPIC, signal_topic
    from tests.correlator.test_exchange_rules import FUNDS, NOW, _partition

    engine = Engine(context(), FUNDS.registry(), clock=lambda: NOW, marker_secret=b"k" * 32)
    table: dict[bytes, bytes] = {}

    def run(*items: tuple[str, dict[str, object]], offset: list[int] = [0]) -> list[object]:  # noqa: B006
        records = []
        for topic, msg in items:
            value = json.dumps(msg).encode()
            records.append(Record(topic, _partition(value), offset[0], int(NOW.timestamp() * 1000), None, value))
            offset[0] += 1
        batch = engine.process(records, table.get)
        for key, (_, value) in batch.writes.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        return batch.outputs

    caf, urssaf = signal_topic(Fund.CAF), signal_topic(Fund.URSSAF)
    run((caf, FUNDS.signal("m", Fund.CAF, "impaye_loyer")),
        (urssaf, FUNDS.signal("m", Fund.URSSAF, "impaye_cotisations")))
    pseudonym = FUNDS.pseudonym("m")
    assert any(pseudonym.encode() in k for k in table)
    objection = FUNDS.consent("m", "opposition", effective_at="2026-11-20T09:00:00Z")
    outputs = run((CONSENTS_TOPIC, objection))
    assert any(o.topic == SITUATIONS_TOPIC and o.value is None for o in outputs)  # type: ignore[attr-defined]
    (marker,) = table
    assert marker.startswith(MARKER_PREFIX) and pseudonym.encode() not in marker + table[marker]
    assert json.loads(table[marker])["version_floor"] == 1

    refused = run((caf, FUNDS.signal("m", Fund.CAF, "separation", n=2)))
    assert any(b'"reason":"opposition"' in (o.value or b"") for o in refused)  # type: ignore[attr-defined]
    again = run((CONSENTS_TOPIC, objection))  # read again: same answer, tombstone again
    assert any(o.topic == SITUATIONS_TOPIC and o.value is None for o in again)  # type: ignore[attr-defined]
    assert list(table) == [marker]

    run((CONSENTS_TOPIC, FUNDS.consent("m", "consentement_donne", effective_at="2026-11-20T10:00:00Z", n=3)))
    assert marker not in table and len(table) == 1
    (state,) = table.values()
    assert json.loads(state)["version_floor"] == 1 and json.loads(state)["opposed_at"] is None


def test_redelivered_erasure_command_spares_what_came_after_it() -> None:
    """kill -9 after an erasure command was applied but before its offset was committed:
    after the restart, the person's next signals may be processed before the command is read
    again (another topic). The command names when the purge was issued: the redelivered
    command erases what was received before then, not the new signals nor the situation they
    opened (which must not be tombstoned either)."""
    import json

    from services.platform.topics import signal_topic
    from tests.correlator.test_exchange_rules import FUNDS, NOW, _partition

    clock = [NOW]
    engine = Engine(context(), FUNDS.registry(), clock=lambda: clock[0], marker_secret=b"k" * 32)
    table: dict[bytes, bytes] = {}
    offsets = [0]

    def run(*records: Record) -> list[object]:
        batch = engine.process(records, table.get)
        for key, (_, value) in batch.writes.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        return batch.outputs

    def signal(fund: Fund, category: str, n: int) -> Record:
        value = json.dumps(FUNDS.signal("m", fund, category, n=n)).encode()
        offsets[0] += 1
        return Record(signal_topic(fund), _partition(value), offsets[0],
                      int(clock[0].timestamp() * 1000), None, value)

    run(signal(Fund.CAF, "impaye_loyer", 0), signal(Fund.URSSAF, "impaye_cotisations", 0))
    pkey = person_key(PSEUDO.key_id, FUNDS.pseudonym("m"))
    old = PersonState.model_validate_json(table[pkey])
    assert old.situation is not None and len(old.signals) == 2

    clock[0] = NOW + dt.timedelta(minutes=1)
    key, value, partition = erasure_command(PSEUDO.key_id, FUNDS.pseudonym("m"), engine.partitions,
                                            issued_at=clock[0])
    command = Record(REPARTITION_TOPIC, partition, 3, 0, key, value, {H_ERASE: ORIGIN_PURGE})
    first = run(command)
    assert [(o.topic, o.value) for o in first] == [(SITUATIONS_TOPIC, None)]  # type: ignore[attr-defined]
    assert PersonState.model_validate_json(table[pkey]).signals == ()

    # The restart: new signals first, then the same command read again.
    clock[0] = NOW + dt.timedelta(minutes=2)
    run(signal(Fund.CAF, "separation", 1), signal(Fund.URSSAF, "impaye_cotisations", 1))
    fresh = PersonState.model_validate_json(table[pkey])
    assert fresh.situation is not None and len(fresh.signals) == 2
    again = run(command)
    assert not any(o.topic == SITUATIONS_TOPIC for o in again)  # type: ignore[attr-defined]
    assert PersonState.model_validate_json(table[pkey]) == fresh


def test_purge_cut_off_travels_from_the_command_to_the_case_entry() -> None:
    """The purge's cut-off (its --as-of date) goes in the erasure command, the correlator's
    tombstone carries it, and the audit sink's per-case ``purge_conservation`` entry has it
    next to the time the tombstone was written."""
    from services.ledger.sink import EntryMaker
    from services.ledger.sink import Record as SinkRecord
    from services.platform.topics import CUT_OFF_HEADER

    engine = Engine(context(), Funds().registry(), clock=lambda: dt.datetime.combine(TODAY, dt.time(13), dt.UTC))
    cut_off = TODAY + dt.timedelta(days=730)
    key, value, partition = erasure_command(PSEUDO.key_id, PSEUDO.value, engine.partitions,
                                            issued_at=dt.datetime.combine(TODAY, dt.time(12), dt.UTC),
                                            cut_off=cut_off)
    rec = Record(REPARTITION_TOPIC, partition, 7, 0, key, value, {H_ERASE: ORIGIN_PURGE})
    (out,) = engine.process([rec], lambda k: None).outputs
    assert dict(out.headers) == {ORIGIN_HEADER: ORIGIN_PURGE, CUT_OFF_HEADER: cut_off.isoformat().encode()}
    written_at = dt.datetime.combine(TODAY, dt.time(13, 5), dt.UTC)
    (entry,) = EntryMaker(None).entries(SinkRecord(SITUATIONS_TOPIC, 2, 40, int(written_at.timestamp() * 1000),
                                                   out.key, None, out.headers))
    assert (entry.action, entry.cut_off, entry.time, entry.count) == ("purge_conservation", cut_off, written_at, 1)
    assert entry.case_id == out.key.decode()  # type: ignore[union-attr]


def test_purge_erases_what_was_received_before_it_was_issued() -> None:
    """A signal received before the purge was issued goes, one received after stays; the
    situation goes as soon as it shows a signal that went (its refs), and its version
    becomes the floor; a state of an earlier version (no reception time) goes whole."""
    issued = dt.datetime.combine(TODAY, dt.time(12), dt.UTC)
    state = _state()
    assert state.situation is not None
    first, second = state.signals
    before = first.model_copy(update={"received_s": int(issued.timestamp())})  # the same second: before
    after = second.model_copy(update={"received_s": int(issued.timestamp()) + 1})
    mixed = state.model_copy(update={"signals": (before, after)})
    purged = purge_person(mixed, issued)
    assert purged.signals == (after,) and purged.situation is None
    assert purged.version_floor == state.situation.version
    assert purge_person(state, issued).signals == ()  # reception time unknown: erased
    # Nothing received before: the state is left as it is (a command read again).
    fresh = mixed.model_copy(update={"signals": (after,), "situation": state.situation.model_copy(
        update={"last_event": state.situation.last_event.model_copy(update={"refs": [
            r for r in state.situation.last_event.refs if r.sealed_ref == after.sealed_ref]})})})
    assert purge_person(fresh, issued) is fresh
