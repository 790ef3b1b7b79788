"""Valid contract events for the casebook tests (situations, follow-ups, consents)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import random
from collections.abc import Sequence
from typing import Any

from services.casebook.model import Month
from services.core.messages import (
    ConsentEvent,
    FollowupEvent,
    FundRef,
    Pseudonym,
    SealedRef,
    SharedCategory,
    Signature,
    SituationEvent,
)
from services.core.types import Fund, Outcome, Priority, Purpose

UTC = dt.UTC


def hex32(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:32]


def b64(n_bytes: int, *seed: object) -> str:
    raw = b""
    counter = 0
    while len(raw) < n_bytes:
        raw += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return base64.urlsafe_b64encode(raw[:n_bytes]).rstrip(b"=").decode()


def pseudonym(person: object) -> Pseudonym:
    return Pseudonym(key_id="exch-2026-01", value=b64(32, "person", person))


def sealed(fund: str, person: object) -> SealedRef:
    return SealedRef(key_id=f"{fund}-seal-1", value=b64(40, "ref", fund, person))


# What each fund emits in the tests, with its visible_to as the taxonomy says.
CATEGORIES: dict[str, list[tuple[str, list[str]]]] = {
    "caf": [("impaye_loyer", ["caf", "cpam", "urssaf", "carsat"]), ("separation", ["caf", "cpam", "urssaf", "carsat"]),
            ("parent_incarcere", ["caf", "cpam"])],
    "urssaf": [("impaye_cotisations", ["urssaf", "caf", "cpam", "carsat"]),
               ("taxations_office_repetees", ["urssaf", "caf", "cpam"])],
    "cpam": [("non_recours_c2s_puma", ["cpam", "caf", "urssaf", "carsat"])],
    "carsat": [("score_fragilite_eleve", ["carsat", "cpam"]), ("retraite_isole", ["carsat", "caf", "cpam"])],
}


def situation(n: int, *, version: int = 1, territory: str = "35", funds: tuple[str, ...] = ("caf", "urssaf"),
              occurred_at: dt.datetime | None = None, kind: str | None = None, priority: str = "orange",
              person: object | None = None, categories: list[tuple[str, str, list[str]]] | None = None,
              last_signal_on: dt.date | None = None, **extra: Any) -> SituationEvent:
    """Situation ``n`` (stable id), version ``version``."""
    occurred = occurred_at or dt.datetime(2026, 11, 5, 10, 0, tzinfo=UTC)
    person = n if person is None else person
    cats = categories if categories is not None else [
        (code, fund, visible) for fund in funds for code, visible in CATEGORIES[fund][:1]]
    last = last_signal_on or occurred.date()
    return SituationEvent(
        schema_version="1.0",
        event_id=hex32("sit-event", n, version),
        situation_id=hex32("situation", n),
        version=version,
        kind=kind or ("ouverte" if version == 1 else "mise_a_jour"),  # type: ignore[arg-type]
        occurred_at=occurred,
        territory=territory,
        pseudonym=pseudonym(person),
        funds=[Fund(f) for f in funds],
        categories=[SharedCategory(code=code, fund=Fund(fund), purposes=[Purpose.ACCES_AUX_DROITS],
                                   visible_to=[Fund(v) for v in visible]) for code, fund, visible in cats],
        purposes=[Purpose.ACCES_AUX_DROITS],
        priority=Priority(priority),
        rules=["multi_organismes"],
        first_signal_on=min(last, occurred.date()) - dt.timedelta(days=3),
        last_signal_on=last,
        refs=[FundRef(fund=Fund(f), sealed_ref=sealed(f, person)) for f in funds],
        **extra,
    )


def followup(situation_n: int, fund: str, action: str, *, outcome: str = "propose", territory: str = "35",
             recorded_at: dt.datetime | None = None, k: int = 0) -> FollowupEvent:
    return FollowupEvent(
        schema_version="1.0",
        event_id=hex32("followup", situation_n, fund, action, k),
        situation_id=hex32("situation", situation_n),
        territory=territory,
        fund=Fund(fund),
        action=action,
        outcome=Outcome(outcome),
        recorded_at=recorded_at or dt.datetime(2026, 11, 20, 14, 0, tzinfo=UTC),
        recorded_by="agent.caf35",
    )


def objection(person: object, *, effective_at: dt.datetime | None = None,
              kind: str = "opposition") -> ConsentEvent:
    return ConsentEvent(
        schema_version="1.0",
        event_id=hex32("consent", person, kind),
        kind=kind,  # type: ignore[arg-type]
        fund=Fund.CAF,
        emitter="caf-35",
        pseudonym=pseudonym(person),
        purposes=[Purpose.ACCES_AUX_DROITS],
        consent_ref="HELP-2026-000123",
        effective_at=effective_at or dt.datetime(2026, 11, 25, tzinfo=UTC),
        signature=Signature(key_id="caf-sign-1", alg="Ed25519", value=b64(64, "sig", person)),
    )


FUNDS = ("caf", "cpam", "urssaf", "carsat")


DEMO_PRIORITIES = (("rouge", .04), ("orange", .64), ("vert", .32))


def month_of_cases(n: int, month: Month, *, seed: int, start: int, territory: str = "35",
                   prio: Sequence[tuple[str, float]] = DEMO_PRIORITIES) -> list[SituationEvent]:
    """``n`` situations opened during ``month``, shaped like the demo's (2 to 4 funds, one or
    two categories each, the demo's priority split by default)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        funds = tuple(sorted(rnd.sample(FUNDS, rnd.choice((2, 2, 2, 3, 4)))))
        cats = [(code, fund, visible) for fund in funds
                for code, visible in rnd.sample(CATEGORIES[fund], rnd.choice((1, 1, 2)) if len(CATEGORIES[fund]) > 1
                                                else 1)]
        priority = rnd.choices([p for p, _ in prio], [w for _, w in prio])[0]
        day = month.start + dt.timedelta(days=rnd.randrange(27), hours=9)
        out.append(situation(start + i, funds=funds, categories=cats, priority=priority, territory=territory,
                               occurred_at=day, last_signal_on=day.date()))
    return out
