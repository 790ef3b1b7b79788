"""The codec's fast paths are equal to the obviously-right references they replace.

- :func:`codec.canonical` against the ``rfc8785`` package (RFC 8785/JCS), on arbitrary
  JSON values, including those it must hand over to the reference (floats, non-ASCII, big
  integers), and errors alike;
- :func:`codec.canonical_model` against the reference on a model declared in
  alphabetical order (the ledger's entries have their own property test,
  ``tests/ledger/test_entries.py``);
- :func:`codec.load_json` against ``json.loads`` with the duplicate-name hook, on JSON
  texts with repeated names, odd whitespace, escaped quotes before colons and invalid bytes;
- :func:`codec.splice_signature` against the canonical form of the whole signed message;
- :class:`codec.ReceiptWriter` against ``to_wire(Receipt(...))``, byte for byte, and
  refusing (by the model's own ValidationError) what the model refuses.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError, create_model

from services.core import codec, signing
from services.core.codec import DuplicateMember, ReceiptWriter, load_json, load_json_reference
from services.core.messages import Receipt, SourcePosition, to_wire
from services.core.reasons import Reason
from services.core.types import Fund, Outcome, Priority, Purpose, WireEnum
from services.platform.topics import signal_topic
from tests.support.signals import Funds, wire

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
    assert _outcome(codec.canonical, value) == _outcome(rfc8785.dumps, value)


@settings(max_examples=300, deadline=None)
@given(_plain_json)
def test_canonical_takes_the_fast_path_for_plain_json(value: Any) -> None:
    assert codec.is_plain(value)
    assert codec.canonical(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [
    {"a": 1.0}, {"é": 1}, {"a": "é"}, {"a": 2**53}, {"a": -(2**53)}, {"a": (1, 2)}, {"a": "\ud800"},
    {"a": Fund.CAF}, {1: "a"},
])
def test_canonical_leaves_anything_unusual_to_rfc8785(value: Any) -> None:
    assert not codec.is_plain(value)
    assert _outcome(codec.canonical, value) == _outcome(rfc8785.dumps, value)


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


@settings(max_examples=1500, deadline=None)
@given(_texts(), _ws, st.sampled_from([b"", b"x", b"\xff", b"\x00"]))
def test_load_json_equals_the_reference_parser(text: str, pad: str, junk: bytes) -> None:
    for raw in (f"{pad}{text}{pad}".encode(), text.encode() + junk):
        fast = _load_outcome(lambda r: load_json(r)[0], raw)
        ref = _load_outcome(load_json_reference, raw)
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
        return ReceiptWriter().wire(receipt_id, fund, signal_id, reason, (topic, partition, offset), processed_at)

    try:
        expected: bytes | None = model()
    except ValidationError:
        expected = None
    if expected is None:
        with pytest.raises(ValidationError):
            fast()
    else:
        assert fast() == expected


def test_is_canonical_says_which_bytes_are_the_canonical_form() -> None:
    assert codec.is_canonical(b'{"a":1,"b":[true,null]}')
    assert not codec.is_canonical(b'{"b":1,"a":2}')
    assert not codec.is_canonical(b'{"a": 1}')
    assert not codec.is_canonical(b"[1]") and not codec.is_canonical(b"{")


# ---------------------------------------------------------------------- models
class _Inner(BaseModel):
    key_id: str
    value: str


class _Sorted(BaseModel):
    """Fields in alphabetical order, plain values only: what canonical_model requires."""

    alpha: str | None = None
    count: int | None = None
    items: tuple[str, ...] = ()
    subject: _Inner | None = None
    zeta: bool = False


_safe_ints = st.integers(-(2**53) + 1, 2**53 - 1)


@settings(max_examples=400, deadline=None)
@given(st.builds(_Sorted, alpha=st.none() | _ascii, count=st.none() | _safe_ints,
                 items=st.lists(_ascii, max_size=4).map(tuple),
                 subject=st.none() | st.builds(_Inner, key_id=_ascii, value=_ascii), zeta=st.booleans()))
def test_canonical_model_equals_the_reference(model: _Sorted) -> None:
    assert codec.canonical_model(model) == codec.canonical_reference(model.model_dump(mode="json"))


# ---------------------------------------------------------------------- signature splice
_token = st.from_regex(r"\A[A-Za-z0-9_.:-]{1,24}\Z")
_signal_like = st.fixed_dictionaries({
    "category": _token, "emitted_at": _token, "emitter": _token, "fund": _token,
    "legal_basis": st.fixed_dictionaries({"code": _token, "conditions": st.lists(_token, max_size=3)}),
    "observed_on": _token, "pseudonym": st.fixed_dictionaries({"key_id": _token, "value": _token}),
    "purpose": _token, "schema_version": _token,
    "sealed_ref": st.fixed_dictionaries({"key_id": _token, "value": _token}),
    "signal_id": _token, "territory": _token,
})


@settings(max_examples=300, deadline=None)
@given(_signal_like, _token, st.from_regex(r"\A[A-Za-z0-9_-]{86}\Z"))
def test_splice_signature_equals_the_canonical_signed_message(message: dict[str, Any], key_id: str,
                                                              value: str) -> None:
    signed = {**message, "signature": {"alg": signing.ALG, "key_id": key_id, "value": value}}
    spliced = codec.splice_signature(codec.canonical(message), signing.ALG, key_id, value)
    assert spliced == codec.canonical_reference(signed)


def test_splice_signature_refuses_a_message_without_territory() -> None:
    with pytest.raises(ValueError):
        codec.splice_signature(b'{"a":"b"}', signing.ALG, "k", "v")


def test_a_receipt_writer_remembers_only_bounded_topics() -> None:
    writer = ReceiptWriter(max_topics=2)
    at = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    for i in range(5):
        topic = f"help.signals.t{i}.v1"
        got = writer.wire("a" * 32, Fund.CAF, None, None, (topic, 0, i), at)
        assert got == codec.receipt_reference("a" * 32, Fund.CAF, None, None, (topic, 0, i), at)
    assert len(writer._plain_topics) == 2


# ---------------------------------------------------------------------- enums on the wire
@pytest.mark.parametrize("enum", [Fund, Purpose, Priority, Outcome, Reason])
def test_wire_enums_write_their_code_as_a_plain_enum_does(enum: type[WireEnum]) -> None:
    """WireEnum changes how the code is written (no ``.value`` read), not what is written."""
    model = create_model("Carrier", one=(enum, ...), many=(list[enum], ...),  # type: ignore[valid-type]
                         keyed=(dict[enum, int], ...), maybe=(enum | None, None))  # type: ignore[valid-type]
    members = list(enum)
    carrier = model(one=members[0], many=members, keyed={m: i for i, m in enumerate(members)})
    assert carrier.model_dump_json().encode() == json.dumps(
        {"one": members[0].value, "many": [m.value for m in members],
         "keyed": {m.value: i for i, m in enumerate(members)}, "maybe": None}, separators=(",", ":")).encode()
    assert carrier.model_dump()["one"] is members[0]  # Python-mode dumps keep the member
    assert model.model_validate_json(carrier.model_dump_json()) == carrier


@given(data=st.binary(max_size=300))
def test_b64u_is_unpadded_urlsafe_base64(data: bytes) -> None:
    import base64

    assert signing.b64u(data) == base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
    assert signing.b64u_decode(signing.b64u(data)) == data
