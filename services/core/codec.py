"""Bytes on the wire: the canonical form (RFC 8785) and the templates, each fast path
beside the reference it must equal.

Everything here has one obviously-right implementation (the *reference*) and, where the
hot paths need it, a faster one that is proved byte-identical to it by property tests
(``tests/core/test_codec.py``). A fast path never decides alone what it cannot prove: it
hands anything unusual to its reference.

Canonical form (RFC 8785, JSON Canonicalization Scheme)
    :func:`canonical_reference` is the ``rfc8785`` package (pure Python). For *plain* JSON
    — objects, arrays, ASCII strings and keys, integers within ±(2**53 - 1), booleans and
    null, no floats — RFC 8785 is exactly "keys sorted, no whitespace": keys sort by UTF-16
    code units, which for ASCII is Python's own string order; string escaping is the same
    table (``\\b \\f \\n \\r \\t``, ``\\u00xx`` in lower case for the other control
    characters, ``\\"`` and ``\\\\``, nothing else); integers in that range print the same.
    Two fast paths rest on that:

    - :func:`canonical` (any value): proves the value plain (:func:`plain_members`), then
      ``orjson`` with sorted keys; signatures are made and checked over it, the producer's
      signals and receipts are written with it;
    - :func:`canonical_model` (a model whose fields are declared in alphabetical order and
      hold only plain values, as a ledger entry): pydantic's own compact JSON.

Wire templates
    :func:`splice_signature` writes a signed message from its unsigned canonical form, the
    signature member in its sorted place (reference: :func:`canonical` of the whole
    message). :class:`ReceiptWriter` writes the correlator's receipts from a template
    (reference: ``to_wire(Receipt(...))``), keeping what it remembers between calls as its
    own fields.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import orjson
import rfc8785
from pydantic import BaseModel

from services.core.reasons import Reason
from services.core.types import SIGNAL_ID_PATTERN, TOPIC_PATTERN, Fund, format_timestamp

# ----------------------------------------------------------------------- canonical form


def canonical_reference(value: Any) -> bytes:
    """RFC 8785 of ``value`` by the general ``rfc8785`` implementation: the referee.

    Raises ``rfc8785.CanonicalizationError`` for what JCS cannot represent."""
    return rfc8785.dumps(value)


_INT_MAX = 2**53 - 1  # RFC 8785 (I-JSON): integers beyond this are not exact in a double
_SORTED = orjson.OPT_SORT_KEYS
#: The same form for plain values, for what orjson refuses to write (nesting over 254 levels).
_json_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                   check_circular=False, allow_nan=False).encode


def plain_members(value: Any) -> int:
    """The number of object members in ``value`` if it is JSON made only of dicts, lists,
    ASCII strings, safe ints, bools and null; -1 if it is anything else.

    (Leaves are tested inline, containers by recursion: a call per leaf cost more, and so
    did one shared loop for the values of dicts and lists, hence the two copies of it.
    The count serves the correlator's duplicate-member check, see ``checks.load_json``.)"""
    t = type(value)
    if t is dict:
        n = len(value)
        for k, v in value.items():
            if type(k) is not str or not k.isascii():
                return -1
            tv = type(v)
            if tv is str:
                if not v.isascii():
                    return -1
            elif tv is dict or tv is list:
                inner = plain_members(v)
                if inner < 0:
                    return -1
                n += inner
            elif tv is int:
                if not -_INT_MAX <= v <= _INT_MAX:
                    return -1
            elif v is not None and tv is not bool:
                return -1
        return n
    if t is list:
        n = 0
        for v in value:
            tv = type(v)
            if tv is str:
                if not v.isascii():
                    return -1
            elif tv is dict or tv is list:
                inner = plain_members(v)
                if inner < 0:
                    return -1
                n += inner
            elif tv is int:
                if not -_INT_MAX <= v <= _INT_MAX:
                    return -1
            elif v is not None and tv is not bool:
                return -1
        return n
    if t is str:
        return 0 if value.isascii() else -1
    if t is int:
        return 0 if -_INT_MAX <= value <= _INT_MAX else -1
    return 0 if value is None or t is bool else -1


def is_plain(value: Any) -> bool:
    """True if ``value`` is JSON of the plain kind (see :func:`plain_members`)."""
    return plain_members(value) >= 0


def canonical(value: Any, *, plain: bool | None = None) -> bytes:
    """RFC 8785 (JCS) form of ``value``: ``orjson`` when provably equal, else the reference.

    ``plain=True`` says the caller has already established that ``value`` is plain (as
    :func:`plain_members` defines it); by default it is checked here."""
    try:
        if plain or (plain is None and is_plain(value)):
            try:
                return orjson.dumps(value, option=_SORTED)
            except orjson.JSONEncodeError:  # deeper than orjson writes (254 levels)
                return _json_canonical(value).encode()
    except RecursionError:
        pass  # absurdly deep: let the reference decide (it raises)
    return canonical_reference(value)


def canonical_model(model: BaseModel) -> bytes:
    """RFC 8785 of ``model`` as pydantic dumps it to JSON, written by pydantic-core.

    Exactly JCS for a model whose fields are declared in alphabetical order (nested models
    too) and hold only ASCII strings from patterns, safe integers and null: pydantic-core
    writes compact JSON in declaration order. The model must guarantee that shape (the
    ledger entry does, and a test checks the field order); the reference is
    ``canonical_reference(model.model_dump(mode="json"))``."""
    return model.__pydantic_serializer__.to_json(model)


def is_canonical(data: bytes) -> bool:
    """True if ``data`` is a JSON object already in its canonical form."""
    try:
        document = json.loads(data)
    except ValueError:
        return False
    if not isinstance(document, dict):
        return False
    try:
        return canonical(document) == data
    except rfc8785.CanonicalizationError:
        return False


# ----------------------------------------------------------------------- reading JSON


class DuplicateMember(ValueError):
    """A JSON object names the same member twice."""


def unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of duplicate names, other parsers the first: a signed message
    # could then say one thing to us and another to an auditor's tool (a medical category
    # hidden in front of an accepted one). RFC 7493 (I-JSON) forbids duplicates: so do we.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DuplicateMember
    return obj


#: The end of an object member's name: a closing quote, optional whitespace, the colon.
_NAME_END = re.compile(rb'"[ \t\n\r]*:')


def load_json(raw: bytes) -> tuple[Any, bool]:
    """The JSON value of ``raw``, and whether it is plain (see :func:`plain_members`).

    Raises :class:`DuplicateMember`, ``ValueError``, ``UnicodeDecodeError`` or
    ``RecursionError`` exactly as ``json.loads(raw, object_pairs_hook=unique_members)``
    does, and returns what it returns: that is the reference, taken whenever the fast path
    cannot prove the same answer.

    Fast path: ``orjson`` parses, and duplicates are ruled out by counting.
    In valid JSON every member's name ends with a quote, optional whitespace and the colon,
    so ``raw`` holds at least as many such sequences as members (more only when a string
    holds an escaped quote before a colon), and the parsed objects hold at most that many
    members (fewer exactly when a name repeats). The counts equal therefore means no name
    repeats; anything else (a difference, a non-plain value, a text orjson refuses) takes
    the reference path, which decides."""
    try:
        obj = orjson.loads(raw)
        members = plain_members(obj)
    except (orjson.JSONDecodeError, RecursionError):
        pass
    else:
        if members >= 0 and members == len(_NAME_END.findall(raw)):
            return obj, True
    return load_json_reference(raw), False


def load_json_reference(raw: bytes) -> Any:
    """The JSON value of ``raw`` by the standard library, refusing repeated names: the
    reference :func:`load_json` must equal."""
    return json.loads(raw, object_pairs_hook=unique_members)


# ----------------------------------------------------------------------- wire templates


def splice_signature(unsigned: bytes, alg: str, key_id: str, value: str) -> bytes:
    """The signed message whose unsigned canonical form is ``unsigned``, in canonical form:
    the ``signature`` member (``alg``, ``key_id``, ``value``) in its sorted place.

    ``canonical({**message, "signature": {...}})`` (the reference) for messages whose members
    after "signature" in sort order start with ``"territory"`` (every signal) and whose
    values hold no quote (they match contract patterns); ``alg``, ``key_id`` and ``value``
    are ASCII without quote or backslash (Ed25519, a key id, base64url)."""
    member = f',"signature":{{"alg":"{alg}","key_id":"{key_id}","value":"{value}"}}'
    head, sep, tail = unsigned.partition(b',"territory":')
    if not sep:
        raise ValueError("no territory member to place the signature before")
    return head + member.encode("ascii") + sep + tail


def append_signature(unsigned: bytes, alg: str, key_id: str, value: str) -> bytes:
    """:func:`splice_signature` for messages whose members all sort before "signature" (a
    sealed signal: its last member is ``signal_id``): the member goes last."""
    if not unsigned.endswith(b"}") or len(unsigned) < 3:
        raise ValueError("not a canonical JSON object")
    member = f',"signature":{{"alg":"{alg}","key_id":"{key_id}","value":"{value}"}}}}'
    return unsigned[:-1] + member.encode("ascii")


_SIGNAL_ID = re.compile(SIGNAL_ID_PATTERN)
_TOPIC = re.compile(TOPIC_PATTERN)
# The receipt's template is written out as f-strings in ReceiptWriter.wire (several times
# faster than str.format with its arguments): member order and text as Receipt writes them.


def receipt_reference(receipt_id: str, fund: Fund, signal_id: str | None, reason: Reason | None,
                      source: tuple[str, int, int], processed_at: dt.datetime) -> bytes:
    """``to_wire(Receipt(...))`` for these values: the model validates (or raises)."""
    from services.core.messages import Receipt, SourcePosition, to_wire  # messages imports signing

    topic, partition, offset = source
    return to_wire(Receipt(
        schema_version="1.0", receipt_id=receipt_id, fund=fund, signal_id=signal_id,
        status="accepte" if reason is None else "rejete", reason=reason,
        source=SourcePosition(topic=topic, partition=partition, offset=offset),
        processed_at=processed_at,
    ))


class ReceiptWriter:
    """Receipts from a template, byte for byte :func:`receipt_reference`.

    The template is used only when every value is one the model accepts and that JSON needs
    no escaping for (hex ids, an ``help.*`` topic of ``[a-z0-9.-]``, the enums' codes —
    written as the ``str`` they are, bounded integers, a UTC timestamp); for anything else
    the model is built, and validates (or raises) exactly as before. Remembers the text of
    the last timestamp (the engine's clock gives one per batch) and the topics found to
    match the pattern (bounded: topics come from the broker)."""

    __slots__ = ("_moment", "_moment_text", "_plain_topics", "max_topics")

    def __init__(self, max_topics: int = 1000) -> None:
        self.max_topics = max_topics
        self._moment: dt.datetime | None = None
        self._moment_text: str | None = None
        self._plain_topics: set[str] = set()

    def _utc_text(self, value: dt.datetime) -> str | None:
        """``format_timestamp(value)`` if ``value`` is in UTC, else None."""
        if value is self._moment:
            return self._moment_text
        text = format_timestamp(value) if value.utcoffset() == dt.timedelta(0) else None
        self._moment, self._moment_text = value, text
        return text

    def _plain_topic(self, topic: str) -> bool:
        if topic in self._plain_topics:
            return True
        if _TOPIC.fullmatch(topic) is None:
            return False
        if len(self._plain_topics) < self.max_topics:
            self._plain_topics.add(topic)
        return True

    def wire(self, receipt_id: str, fund: Fund, signal_id: str | None, reason: Reason | None,
             source: tuple[str, int, int], processed_at: dt.datetime) -> bytes:
        """The receipt's bytes, as :func:`receipt_reference` writes them."""
        topic, partition, offset = source
        if (type(fund) is Fund and (reason is None or type(reason) is Reason)
                and _SIGNAL_ID.fullmatch(receipt_id) is not None
                and (signal_id is None or _SIGNAL_ID.fullmatch(signal_id) is not None)
                and type(partition) is int and 0 <= partition <= 100_000
                and type(offset) is int and offset >= 0
                and self._plain_topic(topic) and (when := self._utc_text(processed_at)) is not None):
            # A StrEnum member formats as its code (str.__format__): no ``.value`` read.
            sid = "null" if signal_id is None else f'"{signal_id}"'
            status = '"accepte","reason":null' if reason is None else f'"rejete","reason":"{reason}"'
            return (f'{{"schema_version":"1.0","receipt_id":"{receipt_id}","fund":"{fund}","signal_id":{sid},'
                    f'"status":{status},"source":{{"topic":"{topic}","partition":{partition},'
                    f'"offset":{offset}}},"processed_at":"{when}"}}').encode()
        return receipt_reference(receipt_id, fund, signal_id, reason, source, processed_at)
