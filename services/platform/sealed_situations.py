"""Situation events sealed under the person's data key, on ``help.situations.v1``.

The topic is compacted, but a log keeps every copy until compaction (the embedded broker
never compacts, Apache Kafka never compacts the active segment; replicas and backups keep
theirs): a tombstone does not make the earlier events unreadable. So the correlator writes
each event with its person members sealed (:class:`~services.core.messages.SealedSituationEvent`)
under the person's current data key (:mod:`services.platform.datakeys`, associated data =
the topic, the subject and the epoch), which every erasure destroys; the event id, the
situation id and the version stay readable (the compacted record's key, what the ledger
names).

Readers (the casebook sink, the audit sink, the demo, the test collectors) open an event
with the key table, in the exchange's database: an event whose key is gone is an erased
person's, taken as nothing (skipped), never an error. At each rotation that leaves a
situation the correlator publishes its latest event again under the new key (a redelivered
version), so a reader behind it still gets the current situation.
"""

from __future__ import annotations

import binascii
import functools
import json
import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from services.core.messages import SealedSituationEvent, SituationEvent, parse, parse_situation, to_wire
from services.platform.datakeys import envelope, load_keys, unseal
from services.platform.topics import SITUATIONS_TOPIC

log = logging.getLogger("help_exchange.platform.sealed_situations")

_WIRE = (b'{"schema_version":"1.0","event_id":"%s","situation_id":"%s","version":%d,'
         b'"sealed":{"alg":"A256GCM","value":"%s"}}')


def sealed_wire(event_id: str, situation_id: str, version: int, sealed: bytes) -> bytes:
    """``to_wire(SealedSituationEvent(...))`` of an event sealed as ``sealed`` (the value of
    :func:`services.platform.datakeys.seal`), written from a template: the ids are
    lower-case hex, the value base64 (``tests/consent/test_sealed_situations.py``)."""
    return _WIRE % (event_id.encode(), situation_id.encode(), version, binascii.b2a_base64(sealed, newline=False))


def sealed_bytes(event: SealedSituationEvent) -> bytes:
    """The sealed value an event carries (its base64 decoded)."""
    return binascii.a2b_base64(event.sealed.value)


def _opened(event: SealedSituationEvent, key: bytes | None) -> SituationEvent | None:
    # No key, or an empty one (the tombstone of a destroyed epoch, datakeys.KeyStore.destroy):
    # an erased person's event.
    if not key:
        return None
    plain = unseal(key, SITUATIONS_TOPIC, sealed_bytes(event))
    if plain is None:
        log.warning("situation %s v%d: its sealed members do not open under its key; skipped",
                    event.situation_id, event.version)
        return None
    opened = parse(SituationEvent, plain)
    if (opened.event_id, opened.situation_id, opened.version) != (event.event_id, event.situation_id,
                                                                  event.version):
        log.warning("situation %s v%d: its sealed members name another event; skipped",
                    event.situation_id, event.version)
        return None
    return opened


def open_situations(conn: sa.Connection, events: Sequence[SituationEvent | SealedSituationEvent],
                    ) -> list[SituationEvent | None]:
    """Each event in clear: a sealed one opened with its person's key (one query for the
    batch), None if that key was destroyed (an erased person) or it does not open."""
    sealed = [e for e in events if isinstance(e, SealedSituationEvent)]
    if not sealed:
        return [e for e in events if isinstance(e, SituationEvent)]
    envelopes: dict[int, tuple[bytes, int]] = {}
    for s in sealed:
        try:
            envelopes[id(s)] = envelope(sealed_bytes(s))
        except ValueError:
            continue
    keys = load_keys(conn, {subject for subject, _ in envelopes.values()})
    out: list[SituationEvent | None] = []
    for e in events:
        if isinstance(e, SituationEvent):
            out.append(e)
            continue
        env = envelopes.get(id(e))
        if env is None:
            log.warning("situation %s v%d: not a sealed value; skipped", e.situation_id, e.version)
            out.append(None)
            continue
        out.append(_opened(e, keys.get(env[0], {}).get(env[1])))
    return out


def read_situation(conn: sa.Connection, value: bytes) -> SituationEvent | None:
    """One record's event in clear (None: an erased person's). Raises as :func:`parse`."""
    return open_situations(conn, [parse_situation(value)])[0]


def read_situations(engine: sa.Engine, values: Sequence[bytes]) -> list[SituationEvent | None]:
    """:func:`read_situation` of many records, one connection; a record that does not parse
    is None too (with a warning)."""
    parsed: list[SituationEvent | SealedSituationEvent | None] = []
    for v in values:
        try:
            parsed.append(parse_situation(v))
        except ValidationError as exc:
            log.warning("situation record skipped: %s", exc.errors()[0].get("type", "invalid"))
            parsed.append(None)
    present = [p for p in parsed if p is not None]
    with engine.connect() as conn:
        opened = iter(open_situations(conn, present))
    return [None if p is None else next(opened) for p in parsed]


@functools.lru_cache(maxsize=4)
def _key_table(database_url: str) -> sa.Engine:
    from services.platform.db import make_engine

    return make_engine(database_url)


def situation_docs(database_url: str, values: Sequence[bytes]) -> list[dict[str, Any] | None]:
    """Situation records as the JSON objects of their events in clear (the demo's and the
    tests' readers); a sealed one opened with the key table of ``database_url`` (the
    correlator's, which made it), None if its key is gone. Records in clear are taken as
    they are, without the database."""
    if not any(b'"sealed"' in v for v in values):
        return [json.loads(v) for v in values]
    return [None if e is None else json.loads(to_wire(e))
            for e in read_situations(_key_table(database_url), values)]
