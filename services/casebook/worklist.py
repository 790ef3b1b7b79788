"""The monthly worklist: which situations the joint review studies, and what it shows.

:func:`build_worklist` is pure (situations, follow-ups, taxonomy in; a view model out);
:func:`load_worklist` reads the store. What a reader may see is decided here, once, for
every output format and the web view alike:

- only non-medical categories (class NM in the taxonomy; an unknown code is dropped too);
- with a fund (``--fund`` or an agent's login): only situations that fund is involved in,
  only categories whose ``visible_to`` names it, and only its own sealed reference;
- sealed references as opaque tokens ``scelle:<key_id>:<value>`` that only the owning
  fund's ``reveal`` command can open; never the pseudonym.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

import sqlalchemy as sa

from services.casebook import store
from services.casebook.meeting import CONSOLIDATED, PROJECTION, Advisor, Suggestion, short_token, visible_codes
from services.casebook.model import (
    PRIORITY_LABEL,
    PRIORITY_RANK,
    REVIEW_LABEL,
    Followup,
    Month,
    ReviewReason,
    Situation,
    closed_at,
    group_followups,
    review_reason,
)
from services.core.rules import LeadFundRule, Rules
from services.core.taxonomy import SignalClass, Taxonomy

CLOSURE_LABEL = {
    "fermee_par_correlateur": "Clôturé (plus de signal actif)",
    "suites_enregistrees": "Clôturé (suites de tous les organismes)",
    "sans_nouveau_signal": "Clôturé (sans nouveau signal)",
}


@dataclass(frozen=True, slots=True)
class Labelled:
    code: str
    label: str


CHANGE_LABEL = {
    "nouveau": "Nouveau depuis la dernière réunion",
    "nouveau_signal": "Nouveau signalement depuis la dernière réunion",
    "suite_enregistree": "Suite enregistrée depuis la dernière réunion",
}
_CHANGE = {code: Labelled(code, label) for code, label in CHANGE_LABEL.items()}
_OPEN = Labelled("ouvert", "Ouvert")
_STATUS = {code: Labelled(code, label) for code, label in CLOSURE_LABEL.items()}
_REASON = {r: Labelled(r.value, label) for r, label in REVIEW_LABEL.items()}
_NO_REASON = Labelled("", "")
_PRIORITY = {code: Labelled(code, label) for code, label in PRIORITY_LABEL.items()}


@dataclass(frozen=True, slots=True)
class FollowupView:
    case_number: str
    fund: Labelled
    action: Labelled
    outcome: Labelled
    recorded_on: str
    recorded_by: str


@dataclass(frozen=True, slots=True)
class FundView:
    fund: Labelled
    sealed_token: str | None
    offers: tuple[Labelled, ...]
    recorded: tuple[FollowupView, ...]
    #: the sheet's short form of ``sealed_token`` (see meeting.short_token)
    sealed_short: str | None = None


@dataclass(frozen=True, slots=True)
class SuggestionView:
    """A suggested follow-up: ``action`` that ``fund`` may take, with its rank weight."""

    fund: Labelled
    action: Labelled
    weight: int


@dataclass(frozen=True, slots=True)
class CaseView:
    case_number: str
    reason: Labelled
    priority: Labelled
    rules: tuple[Labelled, ...]
    funds: tuple[FundView, ...]
    categories: tuple[Labelled, ...]
    first_signal_on: str
    last_signal_on: str
    opened_on: str
    updated_on: str
    status: Labelled
    version: int
    #: the lead fund (chef de file), from rules.yaml; None without such a rule
    lead: Labelled | None = None
    #: suggested follow-ups, best first, from what this reader may see of the case
    suggestions: tuple[SuggestionView, ...] = ()
    #: what changed since the previous meeting (new case, new signal, follow-up recorded)
    change: Labelled | None = None

    @property
    def signals_line(self) -> str:
        """The one date line of the sheet."""
        if self.first_signal_on == self.last_signal_on:
            return f"Signalé le {self.first_signal_on}"
        return f"Signalé du {self.first_signal_on} au {self.last_signal_on}"


@dataclass(frozen=True)
class Worklist:
    month: Month
    territory: str
    fund: str | None
    generated_at: dt.datetime
    cases: tuple[CaseView, ...]
    reported: tuple[FollowupView, ...]
    #: who reads it: a fund code, "projection" (the shared screen) or "consolidee" (secretary)
    view: str = CONSOLIDATED
    #: participants by fund code (user ids), from the recorded meeting of the month, if any
    participants: Mapping[str, tuple[str, ...]] | None = None
    #: when the previous meeting was held: changes and reported follow-ups count from then
    since: dt.datetime | None = None

    def changes(self) -> dict[str, int]:
        out = dict.fromkeys(CHANGE_LABEL, 0)
        for c in self.cases:
            if c.change:
                out[c.change.code] += 1
        return out

    def counts(self) -> dict[str, int]:
        out = {"rouge": 0, "orange": 0, "vert": 0}
        for c in self.cases:
            out[c.priority.code] = out.get(c.priority.code, 0) + 1
        return out


class Labels:
    """French labels from the taxonomy, looked up once."""

    def __init__(self, taxonomy: Taxonomy, rule_titles: Mapping[str, str] | None = None,
                 lead_rule: LeadFundRule | None = None) -> None:
        self.taxonomy = taxonomy
        self.advisor = Advisor(taxonomy, lead_rule)
        self._suggestion_views: dict[tuple[Suggestion, ...], tuple[SuggestionView, ...]] = {}
        # Rule code -> its French title, for people; machines (JSON) keep the codes.
        self.rule_titles = dict(rule_titles or {})
        self.funds = {f.value: Labelled(f.value, info.libelle) for f, info in taxonomy.funds.items()}
        self.exchangeable = {c.code: Labelled(c.code, c.libelle) for c in taxonomy.categories
                             if c.classe is SignalClass.NM}
        self.actions = {(f.value, a.code): Labelled(a.code, a.libelle)
                        for f, actions in taxonomy.suites.items() for a in actions}
        self.offers = {f.value: tuple(Labelled(a.code, a.libelle) for a in actions)
                       for f, actions in taxonomy.suites.items()}
        self.outcomes = {o.code.value: Labelled(o.code.value, o.libelle) for o in taxonomy.issues}
        # fund code -> (its label, its offers): one lookup per fund of a case, not two.
        self.fund_offers: dict[str, tuple[Labelled, tuple[Labelled, ...]]] = {}
        # Cases share a handful of category sets and rule lists: one tuple each, not one per
        # case (100,000 fewer objects for the garbage collector to scan once it resumes).
        self._category_sets: dict[tuple[str, ...], tuple[Labelled, ...]] = {}
        self._rule_lists: dict[tuple[str, ...], tuple[Labelled, ...]] = {}

    @classmethod
    def for_rules(cls, taxonomy: Taxonomy, rules: Rules) -> Labels:
        """Labels with the rules' titles and lead-fund rule (what the web view and CLI use)."""
        return cls(taxonomy, rule_titles(rules), rules.chef_de_file)

    def suggestion_views(self, found: tuple[Suggestion, ...]) -> tuple[SuggestionView, ...]:
        views = self._suggestion_views.get(found)
        if views is None:
            views = self._suggestion_views[found] = tuple(
                SuggestionView(self.fund(s.fund), self.action(s.fund, s.action), s.weight) for s in found)
        return views

    def fund_and_offers(self, code: str) -> tuple[Labelled, tuple[Labelled, ...]]:
        found = self.fund_offers.get(code)
        if found is None:
            found = self.fund_offers[code] = (self.fund(code), self.offers.get(code, ()))
        return found

    def category_set(self, codes: tuple[str, ...]) -> tuple[Labelled, ...]:
        """The labels of ``codes``, all exchangeable (the caller filtered them), shared."""
        found = self._category_sets.get(codes)
        if found is None:
            found = self._category_sets[codes] = tuple(self.exchangeable[c] for c in codes)
        return found

    def rule_list(self, rules: tuple[str, ...]) -> tuple[Labelled, ...]:
        found = self._rule_lists.get(rules)
        if found is None:
            found = self._rule_lists[rules] = tuple(Labelled(r, self.rule_titles.get(r, r)) for r in rules)
        return found

    def fund(self, code: str) -> Labelled:
        return self.funds.get(code) or Labelled(code, code)

    def action(self, fund: str, code: str) -> Labelled:
        return self.actions.get((fund, code)) or Labelled(code, code)

    def outcome(self, code: str) -> Labelled:
        return self.outcomes.get(code) or Labelled(code, code)


_DATE_TEXT: dict[dt.date, str] = {}


def _date(value: dt.date | dt.datetime) -> str:
    """dd/mm/yyyy, memoised: a worklist repeats the same few hundred dates."""
    day = value.date() if isinstance(value, dt.datetime) else value
    text = _DATE_TEXT.get(day)
    if text is None:
        text = _DATE_TEXT[day] = f"{day.day:02d}/{day.month:02d}/{day.year:04d}"
    return text


def _day(day: dt.date) -> str:
    """:func:`_date` of a plain date (signal dates), without the isinstance test."""
    text = _DATE_TEXT.get(day)
    if text is None:
        text = _DATE_TEXT[day] = f"{day.day:02d}/{day.month:02d}/{day.year:04d}"
    return text


def followup_view(labels: Labels, case_number: str, f: Followup) -> FollowupView:
    return FollowupView(case_number, labels.fund(f.fund), labels.action(f.fund, f.action),
                        labels.outcome(f.outcome), _date(f.recorded_at), f.recorded_by)


def case_view(labels: Labels, sit: Situation, followups: Sequence[Followup], *, reason: ReviewReason | None,
              fund: str | None, as_of: dt.datetime, close_after_months: int, projection: bool = False) -> CaseView:
    """What a reader (``fund``; the secretary's consolidated view when None; the shared
    screen's when ``projection``) may see of one situation (see services.casebook.meeting)."""
    exchangeable = labels.exchangeable
    view = fund if fund is not None else (PROJECTION if projection else CONSOLIDATED)
    # medical, health-adjacent or unknown codes have no label here: never shown
    codes = visible_codes(sit.categories, sit.funds, view, exchangeable)
    categories = labels.category_set(codes)
    shared = codes if view == PROJECTION else visible_codes(sit.categories, sit.funds, PROJECTION, exchangeable)
    advisor = labels.advisor
    lead = advisor.lead(sit.funds, shared, sit.rules)
    suggestions = labels.suggestion_views(
        advisor.suggestions(sit.funds if fund is None else (fund,), codes, lead))
    refs: dict[str, tuple[str, str]] = {}
    if not projection:  # sealed references mean nothing on the shared screen
        for r in sit.refs:
            code = r["fund"]
            if (fund is None or code == fund) and code not in refs:
                sealed = r["sealed_ref"]
                refs[code] = (f"scelle:{sealed['key_id']}:{sealed['value']}",
                              short_token(sealed["key_id"], sealed["value"]))
    funds = []
    by_fund: dict[str, list[FollowupView]] = {}
    for f in followups:
        by_fund.setdefault(f.fund, []).append(followup_view(labels, sit.case_number, f))
    for code in sit.funds:
        fund_l, offers = labels.fund_and_offers(code)
        token, short = refs.get(code) or (None, None)
        funds.append(FundView(fund_l, token, offers, tuple(by_fund.get(code, ())), short))
    closed = closed_at(sit, followups, close_after_months=close_after_months, as_of=as_of)
    status = _OPEN if closed is None else _STATUS[closed[1]]
    reason_l = _REASON[reason] if reason else _NO_REASON
    priority = _PRIORITY.get(sit.priority) or Labelled(sit.priority, sit.priority)
    return CaseView(sit.case_number, reason_l, priority, labels.rule_list(sit.rules), tuple(funds), categories,
                    _day(sit.first_signal_on), _day(sit.last_signal_on), _date(sit.opened_at),
                    _date(sit.updated_at), status, sit.version,
                    labels.fund(lead) if lead else None, suggestions)


_NONE: tuple[Followup, ...] = ()


def build_worklist(taxonomy: Taxonomy, situations: Iterable[Situation], followups: Sequence[Followup], *,
                   month: Month, territory: str, fund: str | None, close_after_months: int,
                   generated_at: dt.datetime | None = None, labels: Labels | None = None,
                   projection: bool = False, since: dt.datetime | None = None) -> Worklist:
    """The month's worklist; with ``since`` (the previous meeting), each case says what
    changed since then and the reported follow-ups are those recorded since then."""
    labels = labels or Labels(taxonomy)
    projection = projection and fund is None
    grouped = group_followups(followups)
    selected: list[tuple[int, str, CaseView]] = []
    reported: list[FollowupView] = []
    start, end = month.start, month.end
    if since is not None and since < end:
        start = since
    for sit in situations:
        if sit.territory != territory or (fund is not None and fund not in sit.funds):
            continue
        fus = grouped.get(sit.situation_id) or _NONE
        if fus:
            fus = [f for f in fus if f.recorded_at < end]
        reason = review_reason(sit, fus, month, close_after_months=close_after_months)
        if reason is None:
            continue
        view = case_view(labels, sit, fus, reason=reason, fund=fund, as_of=end,
                         close_after_months=close_after_months, projection=projection)
        if since is not None:
            change = _change_since(sit, fus, since)
            if change is not None:
                view = dataclasses.replace(view, change=_CHANGE[change])
        selected.append((PRIORITY_RANK.get(sit.priority, 9), sit.case_number, view))
        if fus:
            reported.extend(followup_view(labels, sit.case_number, f) for f in fus if start <= f.recorded_at < end)
    selected.sort(key=itemgetter(0, 1))
    reported.sort(key=lambda f: (f.case_number, f.fund.code))
    return Worklist(month, territory, fund, generated_at or dt.datetime.now(dt.UTC),
                    tuple(v for _, _, v in selected), tuple(reported),
                    fund or (PROJECTION if projection else CONSOLIDATED), since=since)


def _change_since(sit: Situation, followups: Sequence[Followup], since: dt.datetime) -> str | None:
    if sit.opened_at >= since:
        return "nouveau"
    if sit.last_signal_on >= since.date():
        return "nouveau_signal"
    if any(f.recorded_at >= since for f in followups):
        return "suite_enregistree"
    return None


def rule_titles(rules: Rules) -> dict[str, str]:
    """Each rule's plain-French title: its ``titre``, else the part of its label before " : "."""
    return {code: rule.titre or rule.libelle.split(" : ", 1)[0] for code, rule in rules.regles.items()}


def load_worklist(engine: sa.Engine, taxonomy: Taxonomy, *, month: Month, territory: str, fund: str | None,
                  close_after_months: int, generated_at: dt.datetime | None = None,
                  labels: Labels | None = None, projection: bool = False,
                  since: dt.datetime | None = None) -> Worklist:
    with engine.connect() as conn:
        followups = store.followups_before(conn, territory, month.end)
        # Streamed: each situation is dropped once its case view is built, so memory never
        # holds 100,000 of them at once. (Entrypoints build it under runtime.paused_gc.)
        situations = store.iter_situations_opened_before(conn, territory, month.end)
        wl = build_worklist(taxonomy, situations, followups, month=month, territory=territory, fund=fund,
                            close_after_months=close_after_months, generated_at=generated_at, labels=labels,
                            projection=projection, since=since)
    del followups, situations
    return wl
