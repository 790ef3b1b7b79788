"""The correlator's fast paths are equal to the slow, obviously-right ones they replace.

- :func:`services.core.signing.canonical` against the ``rfc8785`` package (RFC 8785/JCS), on
  arbitrary JSON values, including those it must hand over to ``rfc8785`` (floats,
  non-ASCII, big integers), and errors alike;
- :func:`services.platform.partitioning.murmur2` (the murmurhash2 package) against aiokafka's (Kafka's partitioner);
- :func:`services.correlator.engine.receipt_wire` against ``to_wire(Receipt(...))``, byte for
  byte, and refusing (by the model's own ValidationError) what the model refuses;
- the person-state cache: a state and the bytes it is stored as round-trip, the engine gives
  the same outputs and writes with or without the cache, and bytes changed behind its back
  are re-validated;
- :func:`services.correlator.checks.load_json` against ``json.loads`` with the duplicate-name
  hook, on JSON texts with repeated names, odd whitespace, escaped quotes before colons and
  invalid bytes;
- bad input the fast paths must not turn into a crash (deep nesting, an id ending in "\\n").
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
import rfc8785
from aiokafka.partitioner import murmur2 as kafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.core import signing
from services.core.messages import Receipt, SourcePosition, to_wire
from services.core.person import PersonState
from services.core.reasons import Reason
from services.core.types import Fund, Purpose
from services.correlator.checks import Checker, DuplicateMember, _unique_members, load_json
from services.correlator.engine import Engine, Record, StateCache, receipt_wire
from services.platform.partitioning import murmur2, partition_for
from services.platform.topics import DEADLETTER_TOPIC, signal_topic
from tests.correlator.core_fixtures import context
from tests.correlator.factory import Funds, wire

# ---------------------------------------------------------------------- canonical JSON
_ascii = st.text(st.characters(max_codepoint=0x7F), max_size=12)
_any_text = st.text(max_size=12)  # every code point, lone surrogates included
_ints = st.one_of(st.integers(-(2**53) + 1, 2**53 - 1), st.integers())
_scalars = st.one_of(st.none(), st.booleans(), _ints, st.floats(allow_nan=False, allow_infinity=False),
                     _ascii, _any_text)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.one_of(_ascii, _any_text), inner, max_size=5)),
    max_leaves=30,
)
_plain_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1), _ascii),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_ascii, inner, max_size=5)),
    max_leaves=30,
)


def _outcome(f: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", f(value)
    except rfc8785.CanonicalizationError as exc:
        return "error", type(exc)


@settings(max_examples=600, deadline=None)
@given(_json)
def test_canonical_equals_rfc8785_on_any_json(value: Any) -> None:
    assert _outcome(signing.canonical, value) == _outcome(rfc8785.dumps, value)


@settings(max_examples=300, deadline=None)
@given(_plain_json)
def test_canonical_takes_the_fast_path_for_plain_json(value: Any) -> None:
    assert signing._plain(value)
    assert signing.canonical(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [
    {"a": 1.0}, {"é": 1}, {"a": "é"}, {"a": 2**53}, {"a": -(2**53)}, {"a": (1, 2)}, {"a": "\ud800"},
    {"a": Fund.CAF}, {1: "a"},
])
def test_canonical_leaves_anything_unusual_to_rfc8785(value: Any) -> None:
    assert not signing._plain(value)
    assert _outcome(signing.canonical, value) == _outcome(rfc8785.dumps, value)


def test_a_real_signal_is_canonicalised_without_rfc8785(monkeypatch: pytest.MonkeyPatch) -> None:
    funds = Funds()
    msg = json.loads(wire(funds.signal("p", Fund.CAF, "impaye_loyer")))
    expected = rfc8785.dumps({k: v for k, v in msg.items() if k != "signature"})

    def boom(value: Any) -> bytes:
        raise AssertionError("slow path taken")

    monkeypatch.setattr(rfc8785, "dumps", boom)
    assert signing.signing_input(msg) == expected
    key = funds.registry().signing_key(Fund.CAF, funds.key_id(Fund.CAF))
    assert key is not None and signing.verify(msg, key)
    assert not signing.verify({**msg, "territory": "52"}, key)


# ---------------------------------------------------------------------- JSON loading
_ws = st.text(st.sampled_from(" \t\n\r"), max_size=2)
# Names and strings made to trip a counter of '":': escaped quotes, colons, backslashes.
_tricky = st.lists(st.sampled_from(['a', 'b', ':', '\\"', '\\\\', ' ', '\\u0041', 'é', '\\ud800']),
                  max_size=6).map(lambda t: '"' + "".join(t) + '"')


def _texts() -> st.SearchStrategy[str]:
    scalars = st.one_of(st.sampled_from(["null", "true", "false", "1", "-0", "1.5", "1e3",
                                         "9007199254740993", "NaN"]), _tricky)

    def containers(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        member = st.tuples(_tricky, _ws, _ws, inner).map(lambda m: f"{m[0]}{m[1]}:{m[2]}{m[3]}")
        objects = st.lists(member, max_size=4).map(lambda ms: "{" + ",".join(ms) + "}")
        arrays = st.lists(inner, max_size=4).map(lambda vs: "[" + ",".join(vs) + "]")
        return st.one_of(objects, arrays)

    return st.recursive(scalars, containers, max_leaves=12)


def _load_outcome(f: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", f(raw)
    except DuplicateMember:
        return "error", DuplicateMember
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return "error", ValueError if isinstance(exc, ValueError) else type(exc)


def _reference(raw: bytes) -> Any:
    return json.loads(raw, object_pairs_hook=_unique_members)


@settings(max_examples=1500, deadline=None)
@given(_texts(), _ws, st.sampled_from([b"", b"x", b"\xff", b"\x00"]))
def test_load_json_equals_the_reference_parser(text: str, pad: str, junk: bytes) -> None:
    for raw in (f"{pad}{text}{pad}".encode(), text.encode() + junk):
        fast = _load_outcome(lambda r: load_json(r)[0], raw)
        ref = _load_outcome(_reference, raw)
        assert fast == ref, raw
        if fast[0] == "ok":  # same value and same types (1 is not 1.0, True is not 1)
            assert json.dumps(fast[1], sort_keys=True) == json.dumps(ref[1], sort_keys=True)


@pytest.mark.parametrize("raw", [
    b'{"a":1,"a":2}', b'{"a":1, "a" :2}', b'{"a" \n: 1,"b":{"c":1,"c":1}}',
    b'[{"x":"\\":"},{"x":1,"x":1}]', b'{"a\\":":1,"a\\":":2}',
])
def test_load_json_refuses_every_repeated_name(raw: bytes) -> None:
    with pytest.raises(DuplicateMember):
        load_json(raw)


def test_a_real_signal_is_loaded_without_the_reference_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = wire(Funds().signal("p", Fund.CAF, "impaye_loyer"))
    expected = json.loads(raw)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("slow path taken")

    monkeypatch.setattr(json, "loads", boom)
    assert load_json(raw) == (expected, True)


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


# ---------------------------------------------------------------------- receipts
_hex = st.text("0123456789abcdef", min_size=32, max_size=32)
_topics = st.one_of(st.sampled_from([signal_topic(f) for f in Fund] + ["help.consents.v1"]),
                    st.from_regex(r"\Ahelp\.[a-z0-9.-]{3,20}\Z"),
                    st.text(max_size=20), st.just("help.signals.caf.v1\n"))
_when = st.one_of(
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)),
    st.datetimes(min_value=dt.datetime(2000, 1, 2), max_value=dt.datetime(2100, 1, 1),
                 timezones=st.just(dt.timezone(dt.timedelta(hours=2)))),
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1)),  # naive
)


@settings(max_examples=600, deadline=None)
@given(receipt_id=st.one_of(_hex, st.just("A" * 32), st.just("a" * 32 + "\n")),
       fund=st.sampled_from(list(Fund)),
       signal_id=st.one_of(st.none(), _hex, st.just("0" * 32 + "\n"), st.text(max_size=33)),
       reason=st.one_of(st.none(), st.sampled_from(list(Reason))),
       topic=_topics, partition=st.integers(-2, 100_002), offset=st.integers(-2, 2**63),
       processed_at=_when)
def test_receipt_wire_equals_the_model(receipt_id: str, fund: Fund, signal_id: str | None,
                                       reason: Reason | None, topic: str, partition: int, offset: int,
                                       processed_at: dt.datetime) -> None:
    def model() -> bytes:
        return to_wire(Receipt(
            schema_version="1.0", receipt_id=receipt_id, fund=fund, signal_id=signal_id,
            status="accepte" if reason is None else "rejete", reason=reason,
            source=SourcePosition(topic=topic, partition=partition, offset=offset),
            processed_at=processed_at))

    def fast() -> bytes:
        return receipt_wire(receipt_id, fund, signal_id, reason, (topic, partition, offset), processed_at)

    try:
        expected: bytes | None = model()
    except ValidationError:
        expected = None
    if expected is None:
        with pytest.raises(ValidationError):
            fast()
    else:
        assert fast() == expected


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

