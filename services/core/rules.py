"""Correlation rules as data (``schemas/rules.yaml``) and the pure functions that apply them.

:func:`on_signal` is the whole decision for one accepted signal: close the person's
situation if it has been idle too long, add the signal to the window, evaluate the rules,
and return the new state with the situation events to publish (opened, updated, closed,
reopened). :func:`close_idle` is the same closure on its own, for a periodic sweep.

Everything that appears in an event is derived from the state and the inputs only
(deterministic ids, versions and timestamps), so a replay after a crash produces
byte-identical events that consumers drop by ``event_id``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.core import glossary
from services.core.datafile import parse_data, read_yaml
from services.core.messages import (
    FundRef,
    Pseudonym,
    SharedCategory,
    SituationEvent,
)
from services.core.person import (
    PersonState,
    SignalEntry,
    SituationState,
    add_signal,
    event_id_for,
    situation_id_for,
)
from services.core.policy import Policy, recipients
from services.core.taxonomy import Taxonomy
from services.core.trusted import replace, trusted
from services.core.types import EVENT_ID_PATTERN, Code, Fund, Priority, Purpose
from services.errors import ConfigurationError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DistinctFundsRule(_Model):
    libelle: str
    #: a short plain-French title for the meeting's sheet (the libelle explains it)
    titre: Annotated[str, Field(min_length=3, max_length=60)] | None = None
    type: Literal["organismes_distincts"]
    minimum: Annotated[int, Field(ge=2, le=5)]


class RepeatRule(_Model):
    libelle: str
    #: a short plain-French title for the meeting's sheet (the libelle explains it)
    titre: Annotated[str, Field(min_length=3, max_length=60)] | None = None
    type: Literal["recidive"]
    delai_jours: Annotated[int, Field(ge=1, le=3650)]


class CategoryPlusOtherRule(_Model):
    libelle: str
    #: a short plain-French title for the meeting's sheet (the libelle explains it)
    titre: Annotated[str, Field(min_length=3, max_length=60)] | None = None
    type: Literal["categorie_et_autre_organisme"]
    fund: Annotated[Fund, Field(alias=glossary.code("fund"))]
    categories: Annotated[tuple[Code, ...], Field(min_length=1)]
    purpose: Annotated[Purpose | None, Field(alias=glossary.code("purpose"))] = None


Rule = Annotated[DistinctFundsRule | RepeatRule | CategoryPlusOtherRule, Field(discriminator="type")]


class Thresholds(_Model):
    rouge: Annotated[int, Field(ge=1)]
    orange: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.orange > self.rouge:
            raise ValueError("the orange threshold cannot be above the red one")
        return self


class LeadFundRule(_Model):
    """Which involved fund leads a situation at the meeting (chef de file).

    The first fired rule named in ``par_regle`` whose fund is involved; else the involved
    fund whose categories (those every involved fund may see) weigh most; ties by ``ordre``."""

    libelle: str
    par_regle: dict[Code, Fund] = Field(default_factory=dict)
    ordre: Annotated[tuple[Fund, ...], Field(min_length=1)]


class Rules(_Model):
    version: int
    fenetre_correlation_jours: Annotated[int, Field(ge=1, le=3650)]
    signalements_max_par_personne: Annotated[int, Field(ge=2, le=64)]
    fermeture_sans_signal_jours: Annotated[int, Field(ge=1, le=3650)]
    priorite: Thresholds
    regles: dict[Code, Rule]
    chef_de_file: LeadFundRule | None = None

    @model_validator(mode="after")
    def _at_most_one_repeat(self) -> Rules:
        repeats = [c for c, r in self.regles.items() if isinstance(r, RepeatRule)]
        if len(repeats) > 1:
            raise ValueError(f"only one 'recidive' rule may exist, found {repeats}")
        return self

    @property
    def repeat(self) -> tuple[str, RepeatRule] | None:
        for code, rule in self.regles.items():
            if isinstance(rule, RepeatRule):
                return code, rule
        return None

    def check_against(self, taxonomy: Taxonomy) -> None:
        """Refuse rules naming categories the taxonomy does not have, or of another fund."""
        if self.chef_de_file is not None:
            unknown = sorted(set(self.chef_de_file.par_regle) - set(self.regles))
            if unknown:
                raise ConfigurationError(f"rules.yaml: chef_de_file.par_regle names unknown rules {unknown}",
                                         "use the codes listed under regles")
        for code, rule in self.regles.items():
            if isinstance(rule, CategoryPlusOtherRule):
                for cat_code in rule.categories:
                    cat = taxonomy.category(cat_code)
                    if cat is None or cat.fund is not rule.fund or not cat.exchangeable:
                        raise ConfigurationError(
                            f"rules.yaml: rule {code}: category {cat_code} is not an exchangeable "
                            f"category of {rule.fund.value} in taxonomy.yaml",
                            "fix the category code in rules.yaml",
                        )


def parse_rules(data: dict[str, Any], source: str = "rules.yaml") -> Rules:
    return parse_data(Rules, data, source, "fix the rules file")


def load_rules(path: Path, taxonomy: Taxonomy | None = None) -> Rules:
    rules = parse_rules(read_yaml(path, "rules"), str(path))
    if taxonomy is not None:
        rules.check_against(taxonomy)
    return rules


@dataclass(frozen=True)
class Context:
    """The data files the decision depends on."""

    rules: Rules
    taxonomy: Taxonomy
    policy: Policy
    #: (fund, category, purposes) -> its SharedCategory: a pure function of the three data
    #: files above, so computed once per Context (frozen models, shared by the events).
    shared: dict[tuple[Fund, str, frozenset[Purpose]], SharedCategory] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)
    #: The set of (fund, category, purpose) of a window -> its :class:`Profile` (fast path).
    profiles: dict[frozenset[tuple[Fund, str, Purpose]], Profile] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)


@dataclass(frozen=True)
class Profile:
    """What the rules and a situation event take from a window of signals: a pure function of
    the set of their (fund, category, purpose) and of the data files."""

    fired: tuple[str, ...]
    funds: tuple[Fund, ...]
    categories: tuple[SharedCategory, ...]
    purposes: tuple[Purpose, ...]
    priority: Priority


def profile_of(ctx: Context, signals: tuple[SignalEntry, ...]) -> Profile:
    """:func:`fired_rules`, the sorted funds and purposes, :func:`_categories` and
    :func:`priority_of` of ``signals``, remembered by the set they depend on (bounded)."""
    key = frozenset([(s.fund, s.category, s.purpose) for s in signals])
    memo = ctx.profiles
    found = memo.get(key)
    if found is None:
        found = Profile(fired_rules(ctx, signals), tuple(sorted({s.fund for s in signals}, key=_fund_order)),
                        tuple(_categories(ctx, signals)),
                        tuple(sorted({s.purpose for s in signals}, key=_purpose_order)),
                        priority_of(ctx, signals))
        if len(memo) >= 10_000:  # the sets people's windows hold: few in practice; bounded anyway
            memo.clear()
        memo[key] = found
    return found


@dataclass(frozen=True)
class Step:
    state: PersonState
    events: tuple[SituationEvent, ...]


# ------------------------------------------------------------------------- evaluation
def fired_rules(ctx: Context, signals: tuple[SignalEntry, ...]) -> tuple[str, ...]:
    """The window rules (all but the repeat rule) that ``signals`` satisfy, in file order."""
    funds = {s.fund for s in signals}
    fired: list[str] = []
    for code, rule in ctx.rules.regles.items():
        if isinstance(rule, DistinctFundsRule):
            if len(funds) >= rule.minimum:
                fired.append(code)
        elif isinstance(rule, CategoryPlusOtherRule):
            anchor = any(s.fund is rule.fund and s.category in rule.categories
                         and (rule.purpose is None or s.purpose is rule.purpose) for s in signals)
            if anchor and funds - {rule.fund}:
                fired.append(code)
    return tuple(fired)


def priority_of(ctx: Context, signals: tuple[SignalEntry, ...]) -> Priority:
    """Sum of the weights of the distinct categories present, against the thresholds."""
    codes = {s.category for s in signals}
    total = 0
    for code in codes:
        cat = ctx.taxonomy.category(code)
        total += cat.poids if cat is not None else 0
    if total >= ctx.rules.priorite.rouge:
        return Priority.ROUGE
    if total >= ctx.rules.priorite.orange:
        return Priority.ORANGE
    return Priority.VERT


#: Declaration order of the enums (what ``list(Fund).index`` gives), computed once.
_FUND_RANK = {f: i for i, f in enumerate(Fund)}
_PURPOSE_RANK = {p: i for i, p in enumerate(Purpose)}
_fund_order = _FUND_RANK.__getitem__
_purpose_order = _PURPOSE_RANK.__getitem__


def _categories(ctx: Context, signals: tuple[SignalEntry, ...]) -> list[SharedCategory]:
    grouped: dict[tuple[Fund, str], set[Purpose]] = {}
    for s in signals:
        grouped.setdefault((s.fund, s.category), set()).add(s.purpose)
    out = []
    memo = ctx.shared
    for (fund, code), purposes in sorted(grouped.items(), key=lambda kv: (_fund_order(kv[0][0]), kv[0][1])):
        key = (fund, code, frozenset(purposes))
        shared = memo.get(key)
        if shared is None:
            cat = ctx.taxonomy.category(code)
            ordered = sorted(purposes, key=_purpose_order)
            visible = recipients(ctx.policy, cat, ordered) if cat is not None else (fund,)
            shared = SharedCategory(code=code, fund=fund, purposes=ordered, visible_to=list(visible))
            if len(memo) < 10_000:  # bounded: codes x funds x purpose sets is small
                memo[key] = shared
        out.append(shared)
    return out


def _snapshot(ctx: Context, state: PersonState, *, situation_id: str, version: int,
              kind: Literal["ouverte", "mise_a_jour", "fermee", "rouverte"],
              rules: tuple[str, ...], occurred_at: dt.datetime, fast: bool = False) -> SituationEvent:
    signals = state.signals
    latest = max(signals, key=lambda s: (s.observed_on, s.signal_id))
    refs = sorted({(s.fund, s.sealed_ref.key_id, s.sealed_ref.value): s.sealed_ref for s in signals}.items(),
                  key=lambda kv: (_fund_order(kv[0][0]), kv[0][1], kv[0][2]))[:64]
    if fast:
        known = profile_of(ctx, signals)
        funds, categories = list(known.funds), list(known.categories)
        purposes, priority = list(known.purposes), known.priority
    else:
        funds = sorted({s.fund for s in signals}, key=_fund_order)
        categories = _categories(ctx, signals)
        purposes = sorted({s.purpose for s in signals}, key=_purpose_order)
        priority = priority_of(ctx, signals)
    values: dict[str, Any] = {
        "schema_version": "1.0",
        "event_id": event_id_for(situation_id, version),
        "situation_id": situation_id,
        "version": version,
        "kind": kind,
        "occurred_at": occurred_at,
        "territory": latest.territory,
        "pseudonym": state.pseudonym,
        "funds": funds,
        "categories": categories,
        "purposes": purposes,
        "priority": priority,
        "rules": list(rules),
        "first_signal_on": min(s.observed_on for s in signals),
        "last_signal_on": latest.observed_on,
    }
    if fast and _valid_as_built(values):
        values["refs"] = [trusted(FundRef, {"fund": key[0], "sealed_ref": ref}) for key, ref in refs]
        return trusted(SituationEvent, values)
    values["refs"] = [FundRef(fund=key[0], sealed_ref=ref) for key, ref in refs]
    return SituationEvent(**values)


_HEX32 = re.compile(EVENT_ID_PATTERN)
_UTC = dt.timedelta(0)


def _valid_as_built(values: dict[str, Any]) -> bool:
    """Whether the event values :func:`_snapshot` built satisfy what :class:`SituationEvent`
    checks beyond what they hold by construction (ids from SHA-256 hex digests, territory,
    pseudonym, categories and references from validated models, rule codes from the rules
    file): the bounds that depend on the signals and the clock. If not, the model decides."""
    occurred = values["occurred_at"]
    version = values["version"]
    return (type(occurred) is dt.datetime and occurred.utcoffset() == _UTC
            and type(version) is int and version >= 1
            and _HEX32.match(values["situation_id"]) is not None
            and type(values["pseudonym"]) is Pseudonym
            and 1 <= len(values["funds"]) <= 5 and 1 <= len(values["categories"]) <= 64
            and 1 <= len(values["purposes"]) <= 2 and len(values["rules"]) <= 16)


_CONTENT_EXCLUDE = {"event_id", "version", "kind", "occurred_at"}


def _same_content(a: SituationEvent, b: SituationEvent) -> bool:
    return a.model_dump(exclude=_CONTENT_EXCLUDE) == b.model_dump(exclude=_CONTENT_EXCLUDE)


#: The fields :func:`_same_content` compares.
_CONTENT_FIELDS = tuple(f for f in SituationEvent.model_fields if f not in _CONTENT_EXCLUDE)


def _same_content_fast(a: SituationEvent, b: SituationEvent) -> bool:
    """:func:`_same_content` without dumping: nested models compare field by field as their
    dumps do (same classes, no extra or private attributes)."""
    da, db = a.__dict__, b.__dict__
    return all(da[f] == db[f] for f in _CONTENT_FIELDS)


def closure_date(ctx: Context, last_signal_on: dt.date) -> dt.date:
    return last_signal_on + dt.timedelta(days=ctx.rules.fermeture_sans_signal_jours)


def close_idle(ctx: Context, state: PersonState, today: dt.date) -> Step:
    """Close the person's open situation if no signal came for the closure period.

    The closure's time is computed (last signal + period, at midnight UTC), not read from a
    clock, so the same closure found by a sweep or by the next signal is the same event."""
    sit = state.situation
    if sit is None or sit.status != "ouverte":
        return Step(state, ())
    closes_on = closure_date(ctx, sit.last_event.last_signal_on)
    if today <= closes_on:
        return Step(state, ())
    version = sit.version + 1
    event = sit.last_event.model_copy(update={
        "event_id": event_id_for(sit.situation_id, version),
        "version": version,
        "kind": "fermee",
        "occurred_at": dt.datetime.combine(closes_on, dt.time(), tzinfo=dt.UTC),
    })
    closed = SituationState(situation_id=sit.situation_id, version=version, status="fermee",
                            closed_on=closes_on, last_event=event)
    return Step(state.model_copy(update={"situation": closed}), (event,))


def on_signal(ctx: Context, state: PersonState, entry: SignalEntry, *, today: dt.date,
              occurred_at: dt.datetime, fast: bool = False) -> Step:
    """Add an accepted signal to the person's state and say which situation events follow.

    ``today`` anchors the window and the closure; ``occurred_at`` stamps the events (the
    worker passes the message's broker timestamp, identical on a replay). ``fast``: the same
    step, its models built from values already valid (:mod:`services.core.trusted`)."""
    closing = close_idle(ctx, state, today)
    events = list(closing.events)
    state = add_signal(closing.state, entry, today=today,
                       window_days=ctx.rules.fenetre_correlation_jours,
                       max_signals=ctx.rules.signalements_max_par_personne, fast=fast)
    if not any(s.signal_id == entry.signal_id for s in state.signals):
        return Step(state, tuple(events))  # observed before the window: kept for dedup only
    fired = profile_of(ctx, state.signals).fired if fast else fired_rules(ctx, state.signals)
    sit = state.situation
    if sit is None or sit.status == "fermee":
        repeat = ctx.rules.repeat
        if sit is not None and sit.closed_on is not None and repeat is not None \
                and (today - sit.closed_on).days <= repeat[1].delai_jours:
            fired = (*fired, repeat[0])
        if not fired:
            return Step(state, tuple(events))
        situation_id = sit.situation_id if sit else situation_id_for(state.pseudonym)
        previous = max(sit.version if sit else 0, state.version_floor)
        version = previous + 1
        kind: Literal["ouverte", "rouverte"] = "rouverte" if sit is not None else "ouverte"
        event = _snapshot(ctx, state, situation_id=situation_id, version=version, kind=kind,
                          rules=fired, occurred_at=occurred_at, fast=fast)
        events.append(event)
        return Step(_with_situation(state, situation_id, event, fast), tuple(events))
    # An open situation: publish an update only if what the funds see has changed.
    situation_id = sit.situation_id
    repeat_code = ctx.rules.repeat[0] if ctx.rules.repeat else None
    keep_repeat = tuple(r for r in sit.last_event.rules if r == repeat_code and r not in fired)
    candidate = _snapshot(ctx, state, situation_id=situation_id, version=sit.version + 1,
                          kind="mise_a_jour", rules=(*fired, *keep_repeat), occurred_at=occurred_at,
                          fast=fast)
    if (_same_content_fast if fast else _same_content)(candidate, sit.last_event):
        return Step(state, tuple(events))
    events.append(candidate)
    return Step(_with_situation(state, situation_id, candidate, fast), tuple(events))


def _with_situation(state: PersonState, situation_id: str, event: SituationEvent, fast: bool) -> PersonState:
    """``state`` with its situation open at ``event`` (whose version it takes)."""
    if fast:
        # The event's situation id and version passed its own checks (or the model's).
        new_sit = trusted(SituationState, {"situation_id": situation_id, "version": event.version,
                                           "status": "ouverte", "closed_on": None, "last_event": event},
                          ("situation_id", "version", "status", "last_event"))
        return replace(state, {"situation": new_sit})
    new_sit = SituationState(situation_id=situation_id, version=event.version, status="ouverte",
                             last_event=event)
    return state.model_copy(update={"situation": new_sit})
