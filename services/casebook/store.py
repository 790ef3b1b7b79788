"""The casebook repository: idempotent effects of situation, follow-up and consent events,
the follow-up outbox, and the reads of the review.

Every ``apply_*`` function takes a connection inside a transaction opened by the caller
(the tracked consumer, :mod:`services.platform.tracking`), so effects and consumed
offsets are written atomically. Effects are idempotent:

- a situation is upserted by ``situation_id`` only if its ``version`` is higher than the
  stored one (replays and out-of-order versions change nothing); its case number is
  assigned once, at first sight, and never changes;
- a follow-up is inserted by ``event_id`` once;
- an objection or a withdrawn consent erases the person's situations (found by pseudonym)
  and their follow-ups, and remembers the erased ids so that a replay cannot bring them back;
  the objection itself is remembered under a keyed digest of the pseudonym, and the erased
  situation under a keyed digest of its id (:class:`Markers`, with a key only the exchange's
  casebook holds), so that after an erasure no casebook table holds the pseudonym or a
  value anyone holding it could recompute (only the ledger keeps the pseudonym); markers
  live as long as closed cases (``HELP_RETENTION_CLOSED_MONTHS``), then the purge drops them;
- a tombstone (a null value on the compacted ``help.situations.v1``, from the correlator's
  erasure or a retention purge) deletes the situation and its follow-ups.

The same code runs on SQLite and PostgreSQL (plain selects then inserts/updates, no
dialect-specific upsert); a situation always comes on the same partition (its key is the
situation id), so one sink instance owns it and there is no write race on it. The case
sequence, shared across partitions, is read ``FOR UPDATE`` on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic_core import from_json

from services.casebook import casekeys
from services.casebook import tables as t
from services.casebook.model import Followup, Situation, aware, format_case_number
from services.core.messages import ConsentEvent, FollowupEvent, SituationEvent, to_wire
from services.core.signing import b64u

CHUNK = 900  # SQLite's bound parameters per statement, with margin
T = TypeVar("T")

ERASING_KINDS = frozenset({"opposition", "consentement_retire"})


def objection_key(pseudonym: str) -> str:
    """The unkeyed marker of a pseudonym (SHA-256 under a fixed label, base64url): what
    :class:`Markers` without a key stores. Anyone holding the pseudonym can recompute it:
    the sink uses a keyed :class:`Markers` instead."""
    return b64u(hashlib.sha256(b"help-exchange/casebook-objection/v1\x00" + pseudonym.encode()).digest())


@dataclass(frozen=True)
class Markers:
    """The "do not process" markers of the casebook: what ``casebook_objections`` and
    ``casebook_erased_situations`` store instead of the pseudonym and the situation id.

    With a key (:func:`services.casebook.config.marker_key`, held by the exchange's casebook
    alone): HMAC-SHA-256 under that key, base64url for a person (43 characters) and hex for
    a situation (32): enough to recognise the person's later events, and nothing anyone
    holding a pseudonym could recompute. Without (tests, tools that only read): the
    unkeyed forms."""

    key: bytes | None = None

    def person(self, pseudonym: str) -> str:
        if self.key is None:
            return objection_key(pseudonym)
        return b64u(hmac.digest(self.key, b"person\x00" + pseudonym.encode(), hashlib.sha256))

    def situation(self, situation_id: str) -> str:
        if self.key is None:
            return situation_id
        return hmac.digest(self.key, b"situation\x00" + situation_id.encode(), hashlib.sha256).hex()[:32]


UNKEYED = Markers()


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass
class Applied:
    """What one batch changed (for logs and tests)."""

    situations: int = 0
    followups: int = 0
    erased: int = 0

    def __iadd__(self, other: Applied) -> Applied:
        self.situations += other.situations
        self.followups += other.followups
        self.erased += other.erased
        return self


# ------------------------------------------------------------------------------- situations
def apply_situations(conn: sa.Connection, events: Iterable[SituationEvent],
                     markers: Markers = UNKEYED) -> int:
    """Upsert situations, latest version wins; returns how many rows were written."""
    best: dict[str, SituationEvent] = {}
    earliest: dict[str, dt.datetime] = {}
    reopened: dict[str, dt.datetime] = {}
    for e in events:
        sid = e.situation_id
        if sid not in best or e.version > best[sid].version:
            best[sid] = e
        if sid not in earliest or e.occurred_at < earliest[sid]:
            earliest[sid] = e.occurred_at
        if e.kind == "rouverte" and (sid not in reopened or e.occurred_at > reopened[sid]):
            reopened[sid] = e.occurred_at
    if not best:
        return 0
    ids = sorted(best)
    erased = _erased_at(conn, ids, markers)
    existing: dict[str, tuple[int, dt.datetime, dt.datetime | None]] = {}
    for chunk in _chunks(ids):
        for sid, version, opened, reopen in conn.execute(
                sa.select(t.situations.c.situation_id, t.situations.c.version,
                          t.situations.c.opened_at, t.situations.c.reopened_at)
                .where(t.situations.c.situation_id.in_(chunk))):
            existing[sid] = (version, aware(opened), aware(reopen) if reopen else None)
    keys = {markers.person(e.pseudonym.value): e.pseudonym.value for e in best.values()}
    objected: dict[str, dt.datetime] = {}
    for chunk in _chunks(sorted(keys)):
        for k, at in conn.execute(sa.select(t.objections.c.pseudonym, t.objections.c.effective_at)
                                  .where(t.objections.c.pseudonym.in_(chunk))):
            objected[keys[k]] = aware(at)

    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for sid in ids:
        e = best[sid]
        if sid in erased and e.occurred_at <= erased[sid]:
            continue  # a replay of what was erased (a later version, after a new consent, is not)
        objection = objected.get(e.pseudonym.value)
        if objection is not None and e.occurred_at <= objection:
            continue
        row = _situation_row(e)
        if sid in existing:
            version, opened, reopen = existing[sid]
            if reopened.get(sid) and (reopen is None or reopened[sid] > reopen):
                reopen = reopened[sid]
            if e.version <= version:
                if earliest[sid] < opened or reopen != existing[sid][2]:
                    updates.append({"b_id": sid, "b_version": version + 1, **row,
                                    "opened_at": min(opened, earliest[sid]), "reopened_at": reopen,
                                    "_keep": True})
                continue
            row["opened_at"] = min(opened, earliest[sid])
            row["reopened_at"] = reopen
            updates.append({"b_id": sid, "b_version": e.version, **row})
        else:
            row["opened_at"] = earliest[sid]
            row["reopened_at"] = reopened.get(sid)
            inserts.append(row)

    if inserts:
        _assign_case_numbers(conn, inserts)
        conn.execute(sa.insert(t.situations), inserts)
    full = [u for u in updates if not u.get("_keep")]
    partial = [u for u in updates if u.get("_keep")]
    if full:
        conn.execute(
            sa.update(t.situations)
            .where(t.situations.c.situation_id == sa.bindparam("b_id"))
            .where(t.situations.c.version < sa.bindparam("b_version"))
            .values({c: sa.bindparam(c) for c in _UPDATABLE}),
            [{k: v for k, v in u.items() if k in _UPDATABLE or k.startswith("b_")} for u in full],
        )
    if partial:
        conn.execute(
            sa.update(t.situations)
            .where(t.situations.c.situation_id == sa.bindparam("b_id"))
            .values(opened_at=sa.bindparam("opened_at"), reopened_at=sa.bindparam("reopened_at")),
            [{"b_id": u["b_id"], "opened_at": u["opened_at"], "reopened_at": u["reopened_at"]}
             for u in partial],
        )
    return len(inserts) + len(full)


_UPDATABLE = ("version", "kind", "territory", "pseudonym_key_id", "pseudonym", "priority", "detail",
              "first_signal_on", "last_signal_on", "opened_at", "updated_at", "reopened_at")


def _situation_row(e: SituationEvent) -> dict[str, Any]:
    return {
        "situation_id": e.situation_id,
        "version": e.version,
        "kind": e.kind,
        "territory": e.territory,
        "pseudonym_key_id": e.pseudonym.key_id,
        "pseudonym": e.pseudonym.value,
        "priority": e.priority.value,
        "detail": {
            "funds": [f.value for f in e.funds],
            "categories": [c.model_dump(mode="json") for c in e.categories],
            "purposes": [p.value for p in e.purposes],
            "rules": list(e.rules),
            "refs": [r.model_dump(mode="json") for r in e.refs],
        },
        "first_signal_on": e.first_signal_on,
        "last_signal_on": e.last_signal_on,
        "updated_at": e.occurred_at,
    }


def _assign_case_numbers(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Give each new situation the next number of its territory and month of opening."""
    rows.sort(key=lambda r: (r["opened_at"], r["situation_id"]))
    keys = sorted({(r["territory"], r["opened_at"].astimezone(dt.UTC).strftime("%Y-%m")) for r in rows})
    seq = t.case_sequences
    counters: dict[tuple[str, str], int] = {}
    present: set[tuple[str, str]] = set()
    for territory, ym in keys:
        query = sa.select(seq.c.last_value).where(seq.c.territory == territory, seq.c.year_month == ym)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        value = conn.execute(query).scalar_one_or_none()
        if value is not None:
            present.add((territory, ym))
        counters[(territory, ym)] = value or 0
    for r in rows:
        key = (r["territory"], r["opened_at"].astimezone(dt.UTC).strftime("%Y-%m"))
        counters[key] += 1
        r["case_number"] = format_case_number(key[0], key[1], counters[key])
    for (territory, ym), value in counters.items():
        if (territory, ym) in present:
            conn.execute(sa.update(seq).where(seq.c.territory == territory, seq.c.year_month == ym)
                         .values(last_value=value))
        else:
            conn.execute(sa.insert(seq).values(territory=territory, year_month=ym, last_value=value))


# ------------------------------------------------------------------------------- follow-ups
def apply_followups(conn: sa.Connection, events: Iterable[FollowupEvent],
                    markers: Markers = UNKEYED) -> int:
    """Insert follow-ups not seen yet (by event id); returns how many were new."""
    by_id = {e.event_id: e for e in events}
    if not by_id:
        return 0
    ids = sorted(by_id)
    seen: set[str] = set()
    for chunk in _chunks(ids):
        seen.update(conn.execute(sa.select(t.followups.c.event_id)
                                 .where(t.followups.c.event_id.in_(chunk))).scalars())
    erased = _erased_at(conn, sorted({e.situation_id for e in by_id.values()}), markers)
    rows = [_followup_row(by_id[i]) for i in ids if i not in seen
            and (by_id[i].situation_id not in erased or by_id[i].recorded_at > erased[by_id[i].situation_id])]
    if rows:
        conn.execute(sa.insert(t.followups), rows)
    return len(rows)


def _erased_at(conn: sa.Connection, situation_ids: Sequence[str],
               markers: Markers) -> dict[str, dt.datetime]:
    """When each of these situations was last erased (objection or withdrawal), if ever."""
    erased: dict[str, dt.datetime] = {}
    es = t.erased_situations
    by_marker = {markers.situation(sid): sid for sid in situation_ids}
    for chunk in _chunks(sorted(by_marker)):
        for marker, at in conn.execute(sa.select(es.c.situation_id, es.c.erased_at)
                                       .where(es.c.situation_id.in_(chunk))):
            erased[by_marker[marker]] = aware(at)
    return erased


def _followup_row(e: FollowupEvent) -> dict[str, Any]:
    return {
        "event_id": e.event_id, "situation_id": e.situation_id, "territory": e.territory,
        "fund": e.fund.value, "action": e.action, "outcome": e.outcome.value,
        "recorded_at": e.recorded_at, "recorded_by": e.recorded_by,
    }


# ------------------------------------------------------------------------------- consents
def apply_consents(conn: sa.Connection, events: Iterable[ConsentEvent],
                   markers: Markers = UNKEYED) -> int:
    """Apply objections and withdrawals: erase the person's situations and follow-ups.

    What was stored about a situation that occurred up to the objection is erased; only the
    situation id stays (in ``casebook_erased_situations``, with the time) so a replay of
    what occurred before does not restore it (a version that occurs later, after a new
    consent, does). A withdrawal erases only the situations that showed one of the purposes
    withdrawn (the correlator keeps the others, and erases the same ones).
    A consent given creates nothing here: the correlator decides what becomes a situation.
    """
    erased_count = 0
    for e in events:
        if e.kind not in ERASING_KINDS:
            continue
        p = e.pseudonym.value
        withdrawn = {x.value for x in e.purposes}
        ids = [sid for sid, detail in conn.execute(
            sa.select(t.situations.c.situation_id, t.situations.c.detail)
            .where(t.situations.c.pseudonym == p, t.situations.c.updated_at <= e.effective_at))
            if e.kind == "opposition" or withdrawn & set(detail.get("purposes", ()))]
        _forget_cases(conn, ids)
        for chunk in _chunks(ids):
            conn.execute(sa.delete(t.followups).where(t.followups.c.situation_id.in_(chunk)))
            conn.execute(sa.delete(t.situations).where(t.situations.c.situation_id.in_(chunk)))
            marks = sorted({markers.situation(sid) for sid in chunk})
            known = set(conn.execute(sa.select(t.erased_situations.c.situation_id)
                                     .where(t.erased_situations.c.situation_id.in_(marks))).scalars())
            if known:
                conn.execute(sa.update(t.erased_situations)
                             .where(t.erased_situations.c.situation_id.in_(sorted(known)))
                             .values(erased_at=e.effective_at))
            new = [{"situation_id": m, "erased_at": e.effective_at} for m in marks if m not in known]
            if new:
                conn.execute(sa.insert(t.erased_situations), new)
        erased_count += len(ids)
        k = markers.person(p)
        current = conn.execute(sa.select(t.objections.c.effective_at)
                               .where(t.objections.c.pseudonym == k)).scalar_one_or_none()
        if current is None:
            conn.execute(sa.insert(t.objections).values(pseudonym=k, effective_at=e.effective_at))
        elif aware(current) < e.effective_at:
            conn.execute(sa.update(t.objections).where(t.objections.c.pseudonym == k)
                         .values(effective_at=e.effective_at))
    return erased_count


def expire_markers(conn: sa.Connection, before: dt.datetime) -> int:
    """Drop the markers of erasures older than ``before`` (the purge passes the closed cases'
    retention): by then no event they guard against is kept anywhere."""
    gone = conn.execute(sa.delete(t.objections).where(t.objections.c.effective_at < before)).rowcount or 0
    gone += conn.execute(sa.delete(t.erased_situations)
                         .where(t.erased_situations.c.erased_at < before)).rowcount or 0
    return gone


def apply_tombstones(conn: sa.Connection, situation_ids: Iterable[str]) -> int:
    """Delete the situations (and their follow-ups) a tombstone names; returns how many were
    there. Not remembered as erased: a later event of the same id (the correlator's next
    version, after a purge) starts the situation again, and a replay of the topic meets the
    tombstone again after the events it follows (same key, same partition)."""
    ids = sorted(set(situation_ids))
    deleted = 0
    _forget_cases(conn, ids)
    for chunk in _chunks(ids):
        conn.execute(sa.delete(t.followups).where(t.followups.c.situation_id.in_(chunk)))
        deleted += conn.execute(sa.delete(t.situations)
                                .where(t.situations.c.situation_id.in_(chunk))).rowcount or 0
    return deleted


# ------------------------------------------------------------------------------- outbox
def add_to_outbox(conn: sa.Connection, topic: str, key: str, event: FollowupEvent,
                  now: dt.datetime) -> None:
    """The follow-up's message, its detail sealed under its case's key (made if need be)."""
    sealed = casekeys.seal_followup(event, casekeys.case_key(conn, event.situation_id, now))
    conn.execute(sa.insert(t.outbox).values(event_id=event.event_id, topic=topic, key=key,
                                            payload=to_wire(sealed).decode(), created_at=now))


#: How long a sender's claim on outbox rows holds: past it, the sender is taken for dead
#: and another sends them (a send takes well under a second; a broker down keeps none).
OUTBOX_LEASE = dt.timedelta(minutes=2)


def pending_outbox(conn: sa.Connection, limit: int = 500) -> list[tuple[int, str, str, str]]:
    ob = t.outbox
    rows = conn.execute(sa.select(ob.c.id, ob.c.topic, ob.c.key, ob.c.payload)
                        .where(ob.c.published_at.is_(None)).order_by(ob.c.id).limit(limit))
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def claim_outbox(conn: sa.Connection, claimant: str, now: dt.datetime,
                 limit: int = 500) -> list[tuple[int, str, str, str]]:
    """The rows waiting to be published that no other sender holds, claimed for
    ``claimant`` (one UPDATE: on PostgreSQL a concurrent claim waits for this one's rows and
    then finds them taken; SQLite runs one writer at a time)."""
    ob = t.outbox
    free = sa.or_(ob.c.claimed_by.is_(None), ob.c.claimed_at < now - OUTBOX_LEASE)
    waiting = (sa.select(ob.c.id).where(ob.c.published_at.is_(None), free)
               .order_by(ob.c.id).limit(limit).scalar_subquery())
    conn.execute(sa.update(ob).where(ob.c.id.in_(waiting), ob.c.published_at.is_(None), free)
                 .values(claimed_by=claimant, claimed_at=now))
    rows = conn.execute(sa.select(ob.c.id, ob.c.topic, ob.c.key, ob.c.payload)
                        .where(ob.c.claimed_by == claimant, ob.c.published_at.is_(None)).order_by(ob.c.id))
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def release_outbox(conn: sa.Connection, claimant: str) -> None:
    """Give back the rows ``claimant`` holds and did not publish (the broker failed)."""
    ob = t.outbox
    conn.execute(sa.update(ob).where(ob.c.claimed_by == claimant, ob.c.published_at.is_(None))
                 .values(claimed_by=None, claimed_at=None))


def mark_published(conn: sa.Connection, ids: Sequence[int], now: dt.datetime) -> None:
    """Published: the row keeps its ids and times, not the payload (it is on the topic now,
    and what the casebook keeps of a follow-up is in ``casebook_followups``, erased with it)."""
    for chunk in _chunks(list(ids)):
        conn.execute(sa.update(t.outbox).where(t.outbox.c.id.in_(chunk))
                     .values(published_at=now, payload="", claimed_by=None, claimed_at=None))


def _forget_cases(conn: sa.Connection, situation_ids: Sequence[str]) -> None:
    """What an erasure or a purge removes besides the situation and its follow-ups: the
    case's data key (its follow-ups on ``help.followups.v1`` are sealed under it), their
    outbox rows (an unpublished follow-up of an erased case is not published), and the
    detail of their follow-ups' access-log rows (older rows, written with action/outcome)."""
    casekeys.destroy_keys(conn, list(situation_ids))  # every copy of their follow-ups: unreadable
    for chunk in _chunks(situation_ids):
        conn.execute(sa.delete(t.outbox).where(t.outbox.c.key.in_(chunk)))
        numbers = list(conn.execute(sa.select(t.situations.c.case_number)
                                    .where(t.situations.c.situation_id.in_(chunk))).scalars())
        if numbers:
            conn.execute(sa.update(t.access_log)
                         .where(t.access_log.c.case_number.in_(numbers),
                                t.access_log.c.action == "suite_enregistree")
                         .values(detail=""))


# ------------------------------------------------------------------------------- reads
_S = t.situations
_F = t.followups


def _cols(conn: sa.Connection, *cols: sa.Column[Any]) -> list[Any]:
    """On SQLite, read dates and timestamps as text and parse them with the C-speed
    ``fromisoformat`` (SQLAlchemy's regex-based SQLite processor is several times slower),
    and JSON as text for :func:`_json` (PostgreSQL's driver decodes JSON itself)."""
    if conn.dialect.name != "sqlite":
        return list(cols)
    return [sa.type_coerce(c, sa.String).label(c.name) if isinstance(c.type, (sa.DateTime, sa.Date, sa.JSON))
            else c for c in cols]


def _sit_cols(conn: sa.Connection) -> list[Any]:
    return _cols(conn, _S.c.situation_id, _S.c.case_number, _S.c.version, _S.c.kind, _S.c.territory,
                 _S.c.pseudonym, _S.c.detail, _S.c.priority, _S.c.first_signal_on, _S.c.last_signal_on,
                 _S.c.opened_at, _S.c.updated_at, _S.c.reopened_at)


def _fu_cols(conn: sa.Connection) -> list[Any]:
    return _cols(conn, _F.c.event_id, _F.c.situation_id, _F.c.territory, _F.c.fund, _F.c.action,
                 _F.c.outcome, _F.c.recorded_at, _F.c.recorded_by)


_DATES: dict[Any, dt.date] = {}
_TIMES: dict[Any, dt.datetime] = {}


def _date(v: Any) -> dt.date:
    if isinstance(v, dt.date):
        return v
    d = _DATES.get(v)
    if d is None:
        d = _DATES[v] = dt.date.fromisoformat(v)
    return d


def _time(v: Any) -> dt.datetime:
    if isinstance(v, str):
        # SQLite gives back the UTC wall time without an offset: a "Z" makes the parse itself
        # return an aware datetime (``.replace(tzinfo=...)`` afterwards costs 5x the parse).
        try:
            return dt.datetime.fromisoformat(v + "Z")
        except ValueError:  # already carries an offset
            return aware(dt.datetime.fromisoformat(v))
    return aware(v)


def _json(v: Any) -> Any:
    """A JSON document as SQLite gives it (text), parsed by pydantic-core's Rust parser (a
    dependency already), which also shares the repeated keys: 3x the speed of ``json.loads``
    on the worklist's 100,000 details. PostgreSQL's driver hands over Python objects."""
    return from_json(v, cache_strings="keys") if isinstance(v, str) else v


def _situation(r: Sequence[Any]) -> Situation:
    d = _json(r[6])
    return Situation(r[0], r[1], r[2], r[3], r[4], r[5], tuple(d["funds"]), tuple(d["categories"]),
                     tuple(d["purposes"]), r[7], tuple(d["rules"]), tuple(d["refs"]), _date(r[8]), _date(r[9]),
                     _time(r[10]), _time(r[11]), _time(r[12]) if r[12] is not None else None)


def _followup(r: Sequence[Any]) -> Followup:
    return Followup(r[0], r[1], r[2], r[3], r[4], r[5], _time(r[6]), r[7])


def situations_opened_before(conn: sa.Connection, territory: str, end: dt.datetime) -> list[Situation]:
    return list(iter_situations_opened_before(conn, territory, end))


def iter_situations_opened_before(conn: sa.Connection, territory: str, end: dt.datetime) -> Iterator[Situation]:
    """The same, one at a time: the worklist keeps only what it shows, not 100,000 situations.
    Rows come from the driver a thousand at a time (``fetchmany``), not one call per row."""
    rows = conn.execute(sa.select(*_sit_cols(conn)).where(_S.c.territory == territory, _S.c.opened_at < end))
    for part in rows.partitions(1000):
        yield from map(_situation, part)


def followups_before(conn: sa.Connection, territory: str, end: dt.datetime) -> list[Followup]:
    rows = conn.execute(sa.select(*_fu_cols(conn)).where(_F.c.territory == territory, _F.c.recorded_at < end))
    return [_followup(r) for r in rows]


def situation_by_case(conn: sa.Connection, case_number: str) -> Situation | None:
    row = conn.execute(sa.select(*_sit_cols(conn)).where(_S.c.case_number == case_number)).first()
    return _situation(row) if row is not None else None


def situation_by_id(conn: sa.Connection, situation_id: str) -> Situation | None:
    row = conn.execute(sa.select(*_sit_cols(conn)).where(_S.c.situation_id == situation_id)).first()
    return _situation(row) if row is not None else None


def followups_of(conn: sa.Connection, situation_id: str) -> list[Followup]:
    rows = conn.execute(sa.select(*_fu_cols(conn)).where(_F.c.situation_id == situation_id)
                        .order_by(_F.c.recorded_at, _F.c.event_id))
    return [_followup(r) for r in rows]


def all_situations(conn: sa.Connection) -> list[Situation]:
    """Every stored situation (the retention purge reads them all)."""
    return [_situation(r) for r in conn.execute(sa.select(*_sit_cols(conn)))]


def all_followups(conn: sa.Connection) -> list[Followup]:
    return [_followup(r) for r in conn.execute(sa.select(*_fu_cols(conn)))]


def count_rows(conn: sa.Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
