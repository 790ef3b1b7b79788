"""The correlator's fast paths are equal to the slow, obviously-right ones they replace.

- :func:`services.platform.partitioning.murmur2` (the murmurhash2 package) against aiokafka's (Kafka's partitioner);
- the person-state cache: a state and the bytes it is stored as round-trip, the engine gives
  the same outputs and writes with or without the cache, and bytes changed behind its back
  are re-validated;
- bad input the fast paths must not turn into a crash (deep nesting, an id ending in "\\n");
- the checks of a signal in canonical form (:mod:`services.correlator.canonical_signal`)
  against the general ones: the same verdict for generated signals and mutations of them.

The codec's own fast paths (canonical form, JSON loading, receipts) are proved in
``tests/core/test_codec.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from typing import Any

import pytest
from aiokafka.partitioner import murmur2 as kafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.core import signing
from services.core.codec import canonical
from services.core.person import PersonState
from services.core.reasons import Reason
from services.core.types import Fund, Purpose
from services.correlator.checks import Checker
from services.correlator.engine import Engine, Record, StateCache
from services.platform.partitioning import murmur2, partition_for
from services.platform.topics import DEADLETTER_TOPIC, signal_topic
from tests.correlator.core_fixtures import context
from tests.support.signals import EXCHANGE_KEY, RETIRED_KEY, Funds, wire


def test_verify_is_false_not_a_crash_on_absurd_nesting() -> None:
    funds = Funds()
    key = funds.registry().signing_key(Fund.CAF, funds.key_id(Fund.CAF))
    assert key is not None
    msg = json.loads(wire(funds.signal("p", Fund.CAF, "impaye_loyer")))
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert not signing.verify({**msg, "x": deep}, key)


def _nested(depth: int) -> Any:
    deep: Any = []
    for _ in range(depth - 1):
        deep = [deep]
    return deep


@pytest.mark.parametrize("depth", [200, 254, 255, 256, 300, 600, 900])
def test_a_deeply_nested_signed_message_is_checked_not_a_crash(depth: int) -> None:
    # orjson reads 1,024 levels but writes only 254: the canonical form must still be made
    # (here the signature holds, and the schema refuses the extra member).
    funds = Funds()
    raw = wire(funds.signal("p", Fund.CAF, "impaye_loyer", x=_nested(depth)))
    verdict = Checker(funds.registry()).check(raw, signal_topic(Fund.CAF))
    assert verdict.reason is Reason.SCHEMA_INVALIDE, verdict


@pytest.mark.parametrize("depth", [254, 255, 1000, 1023, 1024, 1025, 5000])
def test_a_deeply_nested_forged_member_is_refused_not_a_crash(depth: int) -> None:
    funds = Funds()
    raw = wire(funds.signal("p", Fund.CAF, "impaye_loyer"))
    forged = b'{"x":' + b"[" * depth + b"]" * depth + b"," + raw[1:]
    verdict = Checker(funds.registry()).check(forged, signal_topic(Fund.CAF))
    assert verdict.reason in (Reason.JSON_INVALIDE, Reason.SIGNATURE_INVALIDE), verdict


# ---------------------------------------------------------------------- partitioner
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_murmur2_equals_kafkas(data: bytes) -> None:
    assert murmur2(data) == kafka_murmur2(data)


def test_partition_for_known_values() -> None:
    v = Funds().pseudonym("someone")
    assert partition_for(v, 8) == (kafka_murmur2(v.encode()) & 0x7FFFFFFF) % 8


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.integers(min_value=1, max_value=64))
def test_partition_for_equals_kafkas_partitioner(value: str, partitions: int) -> None:
    assert partition_for(value, partitions) == (kafka_murmur2(value.encode()) & 0x7FFFFFFF) % partitions
    assert murmur2(bytearray(value.encode())) == kafka_murmur2(value.encode())  # not only bytes


# ---------------------------------------------------------------------- engine and state cache
AT = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


def _records(funds: Funds, people: int, start_offset: int = 0) -> list[Record]:
    out, offsets = [], dict[tuple[str, int], int]()
    for i in range(people):
        for fund, cat in ((Fund.CAF, "impaye_loyer"), (Fund.URSSAF, "impaye_cotisations"),
                          (Fund.CAF, "separation")):
            m = funds.signal(f"p{i}", fund, cat)
            v = m["pseudonym"]["value"]
            t, p = signal_topic(fund), partition_for(v, 8)
            o = offsets.get((t, p), start_offset)
            offsets[(t, p)] = o + 1
            out.append(Record(t, p, o, int(AT.timestamp() * 1000), v.encode(), wire(m)))
    return out


def _run(engine: Engine, records: list[Record], table: dict[bytes, bytes], size: int) -> list[Any]:
    seen = []
    for i in range(0, len(records), size):
        batch = engine.process(records[i:i + size], table.get)
        for k, (_, v) in batch.writes.items():
            table[k] = v
        seen.append((batch.outputs, batch.writes, batch.accepted, batch.rejected))
    return seen


def test_engine_same_results_with_and_without_the_state_cache() -> None:
    funds = Funds(now=AT)
    records = _records(funds, 12)
    cached = Engine(context(), funds.registry(), clock=lambda: AT)
    uncached = Engine(context(), funds.registry(), clock=lambda: AT, state_cache=StateCache(0))
    a = _run(cached, records, {}, 5)
    b = _run(uncached, records, {}, 5)
    assert a == b
    assert cached.states.hits > 0 and uncached.states.hits == 0
    assert sum(x[2] for x in a) == len(records)


def test_state_cache_revalidates_bytes_it_did_not_see() -> None:
    funds = Funds(now=AT)
    records = _records(funds, 1)
    engine = Engine(context(), funds.registry(), clock=lambda: AT)
    table: dict[bytes, bytes] = {}
    _run(engine, records[:1], table, 1)
    (key, raw), = table.items()
    state = PersonState.model_validate_json(raw)
    assert engine.states.get(key, raw) == state
    # Another worker's value for this person (after a rebalance): different bytes.
    other = state.model_copy(update={"consents": (Purpose.ACCES_AUX_DROITS,)}).model_dump_json().encode()
    assert engine.states.get(key, other) is None
    table[key] = b'{"not": "a state"}'
    with pytest.raises(ValidationError):
        engine.process(records[1:2], table.get)


def test_states_round_trip_through_their_bytes() -> None:
    funds = Funds(now=AT)
    engine = Engine(context(), funds.registry(), clock=lambda: AT, state_cache=StateCache(0))
    table: dict[bytes, bytes] = {}
    _run(engine, _records(funds, 6), table, 4)
    for raw in table.values():
        state = PersonState.model_validate_json(raw)
        assert state.model_dump_json().encode() == raw
        assert PersonState.model_validate_json(state.model_dump_json()) == state


def test_state_cache_is_bounded() -> None:
    cache = StateCache(2)
    s = PersonState.model_validate_json(
        b'{"pseudonym":{"key_id":"xk-20260101-aaaa","value":"' + b"A" * 43 + b'"}}')
    for k in (b"a", b"b", b"c"):
        cache.put(k, b"x", s)
    assert len(cache) == 2 and cache.get(b"a", b"x") is None and cache.get(b"c", b"x") is s


@pytest.mark.parametrize("raw", [
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' + b"[" * 990 + b"]" * 990 + b"}",
])
def test_deeply_nested_input_is_a_dead_letter_not_a_crash(raw: bytes) -> None:
    funds = Funds()
    engine = Engine(context(), funds.registry(), clock=lambda: AT)
    rec = Record(signal_topic(Fund.CAF), 0, 7, int(time.time() * 1000), b"k", raw)
    batch = engine.process([rec], lambda key: None)
    assert batch.rejected == 1
    dls = [json.loads(o.value or b"") for o in batch.outputs if o.topic == DEADLETTER_TOPIC]
    assert len(dls) == 1 and dls[0]["reason"] in {Reason.JSON_INVALIDE.value, Reason.SCHEMA_INVALIDE.value}


def test_signal_id_with_a_final_newline_is_rejected_not_a_crash() -> None:
    funds = Funds()
    m = funds.signal("p", Fund.CAF, "impaye_loyer")
    m = {**m, "signal_id": m["signal_id"] + "\n"}
    engine = Engine(context(), funds.registry(), clock=lambda: AT)
    v = m["pseudonym"]["value"]
    rec = Record(signal_topic(Fund.CAF), partition_for(v, 8), 3, int(time.time() * 1000), v.encode(), wire(m))
    batch = engine.process([rec], lambda key: None)
    assert batch.rejected == 1
    receipts = [json.loads(o.value or b"") for o in batch.outputs if o.topic.startswith("help.receipts")]
    assert receipts[0]["signal_id"] is None and receipts[0]["reason"] == Reason.SIGNATURE_INVALIDE.value



# ---------------------------------------------------------------------- the step's fast path
# services.core.trusted: the step's models built from values already valid, the situation
# contents compared field by field, a state's bytes written around its event's bytes. The
# reference (fast=False) validates every model; both must give the same models and bytes.
_CATEGORIES = [(c.fund, c.code, c.purposes) for c in context().taxonomy.categories if c.exchangeable]
_steps_st = st.lists(
    st.tuples(st.sampled_from(_CATEGORIES), st.integers(0, 3), st.integers(0, 450), st.booleans(),
              st.integers(0, 3)),
    min_size=1, max_size=30,
)


def _same_model(a: Any, b: Any) -> None:
    assert a == b
    assert a.model_dump_json() == b.model_dump_json()
    assert a.__pydantic_fields_set__ == b.__pydantic_fields_set__


@settings(max_examples=200, deadline=None)
@given(_steps_st, st.integers(0, 5))
def test_fast_step_equals_the_reference(steps: list[Any], floor: int) -> None:
    from services.core.person import new_person
    from services.core.rules import on_signal
    from services.correlator.checks import CheckedSignal
    from services.correlator.engine import _EVENT_JSON, _entry, _new_person, _trusted_signal
    from tests.correlator.core_fixtures import PSEUDO, TODAY

    ctx = context()
    engine = Engine(ctx, Funds().registry(), clock=lambda: AT)
    ref = new_person(PSEUDO).model_copy(update={"version_floor": floor})
    fast = _new_person(PSEUDO, True).model_copy(update={"version_floor": floor})
    _same_model(_new_person(PSEUDO, True), new_person(PSEUDO))
    day = 0
    for n, ((fund, code, purposes), tens, gap, last, seq) in enumerate(steps):
        day += gap // 3 if n % 4 else gap  # mostly close together, sometimes past a closure
        on = TODAY + dt.timedelta(days=day)
        sig = CheckedSignal(f"{n:02d}{seq}".ljust(32, "a"), fund, code,
                            purposes[-1] if last and len(purposes) > 1 else purposes[0], on,
                            f"{51 + tens}", (PSEUDO.key_id, PSEUDO.value),
                            (f"{fund.value}-seal-1", "S" * (40 + n)), "L115-2-1", (), 0, AT)
        position = f"{signal_topic(fund)}:0:{n}"
        assert _trusted_signal(sig, position)
        entry_ref, entry_fast = _entry(sig, position, 1_780_000_000 + n, False), \
            _entry(sig, position, 1_780_000_000 + n, True)
        _same_model(entry_fast, entry_ref)
        occurred = dt.datetime.combine(on, dt.time(12, n % 60), tzinfo=dt.UTC)
        a = on_signal(ctx, ref, entry_ref, today=on, occurred_at=occurred)
        b = on_signal(ctx, fast, entry_fast, today=on, occurred_at=occurred, fast=True)
        _same_model(b.state, a.state)
        if a.state.situation is not None:
            assert b.state.situation is not None
            _same_model(b.state.situation, a.state.situation)
            _same_model(b.state.situation.last_event, a.state.situation.last_event)
        assert len(a.events) == len(b.events)
        for x, y in zip(a.events, b.events, strict=True):
            _same_model(y, x)
            engine._event_bytes[id(y)] = (y, _EVENT_JSON(y))
        # The state's bytes written around its event's bytes, as the reference dumps it.
        assert engine._state_bytes(b.state) == a.state.model_dump_json().encode()
        ref, fast = a.state, b.state


def test_state_bytes_around_a_closed_situation_equal_the_dump() -> None:
    from services.core.person import new_person
    from services.core.rules import close_idle, on_signal
    from services.correlator.engine import _EVENT_JSON
    from tests.correlator.core_fixtures import PSEUDO, TODAY, entry

    ctx = context()
    state = new_person(PSEUDO)
    for e in (entry(Fund.CAF, "impaye_loyer"), entry(Fund.URSSAF, "impaye_cotisations")):
        state = on_signal(ctx, state, e, today=TODAY, occurred_at=AT, fast=True).state
    closed = close_idle(ctx, state, TODAY + dt.timedelta(days=400))
    assert closed.state.situation is not None and closed.state.situation.closed_on is not None
    engine = Engine(ctx, Funds().registry(), clock=lambda: AT)
    (event,) = closed.events
    engine._event_bytes[id(event)] = (event, _EVENT_JSON(event))
    assert engine._state_bytes(closed.state) == closed.state.model_dump_json().encode()
    # An event object not written in this batch (or another with the same id): the full dump.
    engine._event_bytes = {id(event): (object(), b"{}")}
    assert engine._state_bytes(closed.state) == closed.state.model_dump_json().encode()


def test_fast_step_refuses_what_the_reference_refuses() -> None:
    """Values the guards cannot show valid take the models, which raise as before."""
    from services.core.person import new_person
    from services.core.rules import on_signal
    from tests.correlator.core_fixtures import PSEUDO, TODAY, entry

    ctx = context()
    state = on_signal(ctx, new_person(PSEUDO), entry(Fund.CAF, "impaye_loyer"), today=TODAY,
                      occurred_at=AT).state
    local = dt.datetime(2026, 6, 1, 14, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    for fast in (False, True):
        with pytest.raises(ValidationError, match="UTC"):
            on_signal(ctx, state, entry(Fund.URSSAF, "impaye_cotisations"), today=TODAY,
                      occurred_at=local, fast=fast)


def test_engine_fast_and_reference_give_the_same_bytes() -> None:
    """The whole engine, both ways, over signals, a third fund, replays, a misrouted record,
    a consent and an objection: the same outputs and state writes, batch after batch."""
    funds = Funds(now=AT)
    records = _records(funds, 10)
    replays = [r._replace(offset=r.offset + 1000) for r in records[:3]]
    misrouted = records[4]._replace(partition=(records[4].partition + 1) % 8, offset=5000)
    consents = []
    for i, kind in enumerate(("consentement_donne", "opposition")):
        c = funds.consent(f"p{i + 1}", kind, n=i)
        v = c["pseudonym"]["value"]
        consents.append(Record("help.consents.v1", partition_for(v, 8), 100 + i,
                               int(AT.timestamp() * 1000), v.encode(), wire(c)))
    stream = records + replays + [misrouted] + consents + records[:2]
    fast = _run(Engine(context(), funds.registry(), clock=lambda: AT), stream, {}, 7)
    reference = _run(Engine(context(), funds.registry(), clock=lambda: AT, fast=False), stream, {}, 7)
    assert fast == reference
    assert sum(x[3] for x in fast) >= len(replays)  # the replays were refused, not accepted


# ---------------------------------------------------------------------- canonical signals
# services.correlator.canonical_signal: a signal in canonical form read by one pattern. The
# reference (Checker(fast=False)) parses, proves plain, writes the canonical form and
# validates with the model; both must give the same verdict, whatever the bytes.
def _sealing(fund: Fund, pseudonym_value: str) -> tuple[bytes, int, bytes]:
    return hashlib.sha256(pseudonym_value.encode()).digest()[:16], 7, b"k" * 32


_CANON_FUNDS = Funds(sealing=_sealing)
_CANON_CHECKERS = (Checker(_CANON_FUNDS.registry()), Checker(_CANON_FUNDS.registry(), fast=False))
_PREVIOUS = st.one_of(
    st.none(), st.none(), st.none(),
    st.just({"key_id": RETIRED_KEY, "value": "B" * 43}),
    st.just({"key_id": "xk-20240101-gone", "value": "C" * 43}),
    st.just({"key_id": EXCHANGE_KEY, "value": "D" * 43}),
)
_BASES = st.one_of(
    st.lists(st.sampled_from(["cumul_fragilites", "accord_oral", "abc", "x", "A_b"]), max_size=9).map(
        lambda c: {"code": "L115-2-1", "conditions": c}),
    st.just({"code": "L115-2-1"}),
    st.sampled_from(["HELP-2026-000123", "help-1", "AB-1-2-3-4-5"]).map(
        lambda r: {"code": "consentement", "consent_ref": r}),
)
#: At most one member changed (after signing, then signed again): mostly none.
_OVERRIDES = st.one_of(st.just({}), st.just({}), st.just({}), st.sampled_from([
    {"observed_on": v} for v in ("2026-02-29", "2024-02-29", "2026-04-31", "2026-13-01", "0000-01-01")] + [
    {"emitted_at": v} for v in ("2026-02-30T10:00:00Z", "2026-06-01T10:00:00.123Z", "2026-06-01T10:00:00+00:00",
                                "0001-01-01T00:00:00Z", "2026-06-01T10:00:00Z\n")] + [
    {"emitter": v} for v in ("urssaf-ca", "caf-zz", "caf-", "msa-0001")] + [
    {"territory": v} for v in ("2A", "00", "976", "99")] + [
    {"purpose": v} for v in ("prevention_perte_autonomie", "autre")] + [
    {"schema_version": "1.1"}, {"schema_version": 1}, {"extra": "x"}, {"signal_id": "A" * 32}]))


@st.composite
def _canonical_signals(draw: st.DrawFn) -> tuple[bytes, str]:
    fund = draw(st.sampled_from([Fund.CAF, Fund.URSSAF, Fund.MSA]))
    msg = _CANON_FUNDS.signal(
        f"p{draw(st.integers(0, 9))}", fund,
        draw(st.sampled_from(["impaye_loyer", "impaye_cotisations", "x", "a" * 48])),
        legal_basis=draw(_BASES), key_id=draw(st.sampled_from([EXCHANGE_KEY, RETIRED_KEY])),
        signer=(signer := draw(st.sampled_from([None, None, None, Fund.CPAM]))), clear=draw(st.booleans()))
    changes = draw(_OVERRIDES)  # (after sealing: a sealed signal's person members become extra ones)
    previous = draw(_PREVIOUS)
    if previous is not None:
        changes["pseudonym_previous"] = previous
    epoch = draw(st.sampled_from([None, None, None, 0, 4_294_967_295, 4_294_967_296, 10**12]))
    if epoch is not None and "sealed" in msg:
        changes["sealed"] = {**msg["sealed"], "epoch": epoch}
    if changes:
        msg = _CANON_FUNDS.resign({**msg, **changes}, signer)
    raw = canonical(msg)
    mutation = draw(st.sampled_from(["none", "none", "none", "byte", "space", "signature"]))
    if mutation == "byte":
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:]
    elif mutation == "space":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + b" " + raw[at:]
    elif mutation == "signature":  # a valid-looking signature of other bytes
        value = msg["signature"]["value"]
        raw = raw.replace(value.encode(), (("A" if value[0] != "A" else "B") + value[1:]).encode())
    topic = signal_topic(draw(st.sampled_from([fund, fund, fund, Fund.CPAM])))
    return raw, topic


@settings(max_examples=1500, deadline=None)
@given(_canonical_signals())
def test_canonical_signals_get_the_references_verdict(case: tuple[bytes, str]) -> None:
    raw, topic = case
    fast, reference = (checker.check(raw, topic) for checker in _CANON_CHECKERS)
    assert fast == reference
    if reference.signal is not None:
        assert fast.signal is not None and fast.signal.emitted_at.tzinfo is reference.signal.emitted_at.tzinfo


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([Fund.CAF, Fund.URSSAF, Fund.MSA, Fund.CPAM]), st.integers(0, 10**6),
       st.sampled_from(["impaye_loyer", "impaye_cotisations", "a" * 48, "abc"]),
       st.lists(st.sampled_from(["cumul_fragilites", "accord_oral", "abc"]), max_size=8),
       st.sampled_from(["HELP-2026-000123", "AB-1-2-3-4", ""]), st.booleans(), st.booleans(),
       st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31), timezones=st.just(dt.UTC)))
def test_well_formed_canonical_signals_take_the_fast_path(
        fund: Fund, person: int, category: str, conditions: list[str], consent: str, sealed: bool,
        linked: bool, at: dt.datetime) -> None:
    from services.correlator import canonical_signal

    basis = {"code": "consentement", "consent_ref": consent} if consent else {"code": "L115-2-1",
                                                                             "conditions": conditions}
    msg = Funds(keys=_CANON_FUNDS.keys, now=at, sealing=_sealing).signal(
        f"p{person}", fund, category, legal_basis=basis, clear=not sealed)
    if linked:
        msg = _CANON_FUNDS.resign({**msg, "pseudonym_previous": {"key_id": RETIRED_KEY, "value": "B" * 43}})
    raw = canonical(msg)
    assert canonical_signal.match(raw.decode()) is not None
    fast, reference = (checker.check(raw, signal_topic(fund)) for checker in _CANON_CHECKERS)
    assert fast == reference
    assert reference.reason is (Reason.LIEN_PSEUDONYME_PERIME if linked else None)


@pytest.mark.parametrize("sealed", [False, True])
@pytest.mark.parametrize("variant", ["law", "conditions", "consent", "previous"])
def test_the_producers_form_takes_the_fast_path(sealed: bool, variant: str) -> None:
    # The fast path is no dead code: what the producers write (the canonical form) matches.
    from services.correlator import canonical_signal

    bases = {"conditions": {"code": "L115-2-1", "conditions": ["cumul_fragilites", "accord_oral"]},
             "consent": {"code": "consentement", "consent_ref": "HELP-2026-000123"}}
    msg = _CANON_FUNDS.signal("p", Fund.CAF, "impaye_loyer", legal_basis=bases.get(variant), clear=not sealed)
    if variant == "previous":
        msg = _CANON_FUNDS.resign({**msg, "pseudonym_previous": {"key_id": RETIRED_KEY, "value": "B" * 43}})
    raw = canonical(msg)
    found = canonical_signal.match(raw.decode())
    assert found is not None and (found.re is canonical_signal.SEALED) is sealed
    assert canonical_signal.unsigned(raw, found) == signing.signing_input(msg)
    assert canonical_signal.conditions(found) == tuple(msg["legal_basis"].get("conditions", ()))
    # and not what the pattern cannot vouch for: another member order, whitespace
    assert canonical_signal.match(wire(msg).decode()) is None
    assert canonical_signal.match(raw.decode().replace(",", ", ", 1)) is None
