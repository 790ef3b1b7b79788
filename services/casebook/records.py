"""What the casebook remembers of the meetings themselves: the meetings held (date,
territory, participants by fund) and the statistics releases as published (frozen).

SQL reads and writes only; the rules are in :mod:`services.casebook.meeting` and
:mod:`services.casebook.stats`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from services.casebook import store
from services.casebook import tables as t
from services.casebook.model import Month, aware, check_fund, check_territory
from services.casebook.stats import Release, release
from services.core.taxonomy import Taxonomy
from services.core.types import ACTOR_PATTERN
from services.errors import InputError

_ACTOR = re.compile(ACTOR_PATTERN)
MAX_PARTICIPANTS = 40


@dataclass(frozen=True)
class Meeting:
    meeting_id: int
    territory: str
    held_at: dt.datetime
    participants: Mapping[str, tuple[str, ...]]
    recorded_by: str

    @property
    def held_on(self) -> str:
        return f"{self.held_at:%d/%m/%Y}"


def check_participants(participants: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Fund code -> user ids (functions, no names): checked, deduplicated, sorted."""
    out: dict[str, list[str]] = {}
    count = 0
    for fund, users in participants.items():
        code = check_fund(fund).value
        for user in users:
            if not _ACTOR.fullmatch(user or ""):
                raise InputError(f"participant invalide : {user!r}",
                                 "un identifiant d'utilisateur sans nom, par exemple agent.caf35")
            count += 1
        out[code] = sorted(set(out.get(code, [])) | set(users))
    if count > MAX_PARTICIPANTS:
        raise InputError(f"{count} participants", f"une réunion en compte au plus {MAX_PARTICIPANTS}")
    return out


def record_meeting(engine: sa.Engine, *, territory: str, held_at: dt.datetime,
                   participants: Mapping[str, Sequence[str]], recorded_by: str,
                   now: dt.datetime | None = None) -> Meeting:
    check_territory(territory)
    clean = check_participants(participants)
    if not _ACTOR.fullmatch(recorded_by or ""):
        raise InputError(f"identifiant d'utilisateur invalide : {recorded_by!r}", "par exemple secretaire.35")
    now = now or dt.datetime.now(dt.UTC)
    if held_at > now + dt.timedelta(days=1):
        raise InputError(f"réunion datée du {held_at:%d/%m/%Y}, dans le futur",
                         "enregistrez une réunion le jour où elle se tient, ou après")
    with engine.begin() as conn:
        result = conn.execute(t.meetings.insert().values(territory=territory, held_at=held_at, participants=clean,
                                                         recorded_at=now, recorded_by=recorded_by))
        key = result.inserted_primary_key
        meeting_id = int(key[0]) if key else 0
    return Meeting(meeting_id, territory, held_at, {k: tuple(v) for k, v in clean.items()}, recorded_by)


def _meeting(row: Sequence[Any]) -> Meeting:
    raw = row[3] if isinstance(row[3], dict) else store._json(row[3])
    return Meeting(int(row[0]), str(row[1]), aware(store._time(row[2])),
                   {str(k): tuple(map(str, v)) for k, v in dict(raw).items()}, str(row[4]))


def meetings_before(engine: sa.Engine, territory: str, before: dt.datetime, limit: int = 2) -> list[Meeting]:
    """The latest meetings of ``territory`` held before ``before``, newest first."""
    m = t.meetings
    with engine.connect() as conn:
        rows = conn.execute(sa.select(m.c.id, m.c.territory, m.c.held_at, m.c.participants, m.c.recorded_by)
                            .where(m.c.territory == territory, m.c.held_at < before)
                            .order_by(m.c.held_at.desc(), m.c.id.desc()).limit(limit)).all()
    return [_meeting(r) for r in rows]


def published_release(engine: sa.Engine, taxonomy: Taxonomy, *, territory: str, month: Month, now: dt.datetime,
                      rule_titles: Mapping[str, str] | None = None) -> Release | None:
    """The month's statistics as published: stored if already published; computed, stored
    and returned if the month has ended; None for a month not ended (never published early)."""
    r = t.stats_releases
    with engine.connect() as conn:
        body = conn.execute(sa.select(r.c.body).where(r.c.scope == territory, r.c.month == str(month))).scalar()
    if body is not None:
        return Release.from_dict(body if isinstance(body, dict) else store._json(body))
    if now < month.end:
        return None
    with engine.connect() as conn:
        situations = store.situations_opened_before(conn, territory, month.end)
        followups = store.followups_before(conn, territory, month.end)
    rel = release(taxonomy, situations, followups, month=month, scope=territory, now=now, rule_titles=rule_titles)
    try:
        with engine.begin() as conn:
            conn.execute(r.insert().values(scope=territory, month=str(month), published_at=now, body=rel.to_dict()))
    except IntegrityError:  # published meanwhile by another request: that one stands
        return published_release(engine, taxonomy, territory=territory, month=month, now=now,
                                 rule_titles=rule_titles)
    return rel


def meeting_context(engine: sa.Engine, territory: str, month: Month) -> tuple[Meeting | None, Meeting | None]:
    """(the month's meeting if recorded, the meeting before it): the worklist of ``month``
    shows what changed since the previous one, its minutes list the month's participants."""
    found = meetings_before(engine, territory, month.end, limit=2)
    if found and found[0].held_at >= month.start:
        return found[0], (found[1] if len(found) > 1 else None)
    return None, (found[0] if found else None)
