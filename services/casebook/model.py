"""The casebook's read model and case lifecycle, as pure functions (no SQL, no Kafka).

A *situation* is the latest version the correlator published; a *follow-up* is one fund's
"suite donnée". Whether a situation is still open, and why it is on a month's worklist,
is computed here from those two and the month under review, so the rules are in one place
and tested without a database.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.core.bounds import parse_month
from services.core.types import CASE_NUMBER_PATTERN, DEPARTEMENT_PATTERN, Fund, Priority
from services.errors import InputError

PRIORITY_RANK = {Priority.ROUGE.value: 0, Priority.ORANGE.value: 1, Priority.VERT.value: 2}
PRIORITY_LABEL = {"rouge": "Rouge", "orange": "Orange", "vert": "Vert"}

_TERRITORY = re.compile(DEPARTEMENT_PATTERN)
CASE_NUMBER = re.compile(CASE_NUMBER_PATTERN)


@dataclass(frozen=True, slots=True)
class Month:
    """A calendar month under review, e.g. ``Month.parse("2026-11")``."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        return cls(*parse_month(text))

    @property
    def start(self) -> dt.datetime:
        return dt.datetime(self.year, self.month, 1, tzinfo=dt.UTC)

    @property
    def end(self) -> dt.datetime:
        return self.shift(1).start

    def shift(self, months: int) -> Month:
        index = self.year * 12 + (self.month - 1) + months
        return Month(index // 12, index % 12 + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def label(self) -> str:
        return f"{MONTHS_FR[self.month - 1]} {self.year}"


MONTHS_FR = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
             "octobre", "novembre", "décembre")


def check_territory(text: str) -> str:
    if not _TERRITORY.fullmatch(text or ""):
        raise InputError(f"territoire invalide : {text!r}",
                         "donnez un code de département : 01 à 95, 2A, 2B ou 971 à 976")
    return text


def check_fund(text: str) -> Fund:
    try:
        return Fund(text)
    except ValueError:
        raise InputError(f"organisme inconnu : {text!r}",
                         "choisissez parmi " + ", ".join(f.value for f in Fund)) from None


def check_case_number(text: str) -> str:
    if not CASE_NUMBER.fullmatch(text or ""):
        raise InputError(f"numéro de dossier invalide : {text!r}",
                         "format attendu : département-année-mois-numéro, par exemple 35-2026-11-0042")
    return text


def format_case_number(territory: str, year_month: str, sequence: int) -> str:
    return f"{territory}-{year_month}-{sequence:04d}"


def aware(value: dt.datetime) -> dt.datetime:
    """SQLite gives naive datetimes back: they were stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Followup:
    event_id: str
    situation_id: str
    territory: str
    fund: str
    action: str
    outcome: str
    recorded_at: dt.datetime
    recorded_by: str


@dataclass(frozen=True, slots=True)
class Situation:
    situation_id: str
    case_number: str
    version: int
    kind: str
    territory: str
    pseudonym: str
    funds: tuple[str, ...]
    categories: tuple[dict[str, Any], ...]
    purposes: tuple[str, ...]
    priority: str
    rules: tuple[str, ...]
    refs: tuple[dict[str, Any], ...]
    first_signal_on: dt.date
    last_signal_on: dt.date
    opened_at: dt.datetime
    updated_at: dt.datetime
    reopened_at: dt.datetime | None


class ReviewReason(StrEnum):
    """Why a situation is on the month's worklist (first that applies)."""

    NOUVELLE = "nouvelle"
    MISE_A_JOUR = "mise_a_jour"
    EN_ATTENTE = "en_attente"
    SUITES = "suites_rapportees"


REVIEW_LABEL = {
    ReviewReason.NOUVELLE: "Nouvelle",
    ReviewReason.MISE_A_JOUR: "Mise à jour",
    ReviewReason.EN_ATTENTE: "En attente de suite",
    ReviewReason.SUITES: "Suites rapportées",
}


def closed_at(sit: Situation, followups: Sequence[Followup], *, close_after_months: int,
              as_of: dt.datetime) -> tuple[dt.datetime, str] | None:
    """When and why ``sit`` is closed as seen at ``as_of``, or ``None`` if it is open.

    Closed (1) by the correlator ("fermee"), (2) when every involved fund has recorded an
    outcome since the last reopening, (3) when no new signal came for ``close_after_months``
    whole months before ``as_of``. Follow-ups recorded after ``as_of`` do not count.
    """
    if sit.kind == "fermee" and sit.updated_at < as_of:
        return sit.updated_at, "fermee_par_correlateur"
    since = sit.reopened_at
    latest: dict[str, dt.datetime] = {}
    for f in followups:
        if f.recorded_at >= as_of or (since is not None and f.recorded_at < since):
            continue
        if f.fund not in latest or f.recorded_at < latest[f.fund]:
            latest[f.fund] = f.recorded_at
    if sit.funds and all(fund in latest for fund in sit.funds):
        return max(latest[f] for f in sit.funds), "suites_enregistrees"
    if sit.last_signal_on < _inactivity_limit(as_of.year, as_of.month, close_after_months):
        inactive_from = dt.datetime.combine(sit.last_signal_on, dt.time(), dt.UTC)
        return inactive_from, "sans_nouveau_signal"
    return None


@functools.lru_cache(maxsize=256)
def _inactivity_limit(year: int, month: int, close_after_months: int) -> dt.date:
    return Month(year, month).shift(-close_after_months).start.date()


def review_reason(sit: Situation, followups: Sequence[Followup], month: Month, *,
                  close_after_months: int) -> ReviewReason | None:
    """Why ``sit`` is on the worklist of ``month``, or ``None`` if it is not.

    New (opened in the month), updated (a new version in the month), follow-ups reported
    during the month (since the previous monthly meeting), or still awaiting a follow-up
    (open at the start of the month with an involved fund that recorded nothing).
    """
    start, end = _bounds(month)
    if sit.opened_at >= end:
        return None
    if sit.opened_at >= start:
        return ReviewReason.NOUVELLE
    if sit.updated_at >= start and sit.updated_at < end:
        return ReviewReason.MISE_A_JOUR
    if any(start <= f.recorded_at < end for f in followups):
        return ReviewReason.SUITES
    if closed_at(sit, followups, close_after_months=close_after_months, as_of=start) is None:
        return ReviewReason.EN_ATTENTE
    return None


@functools.lru_cache(maxsize=64)
def _bounds(month: Month) -> tuple[dt.datetime, dt.datetime]:
    return month.start, month.end


def group_followups(followups: Iterable[Followup]) -> dict[str, list[Followup]]:
    grouped: dict[str, list[Followup]] = {}
    for f in followups:
        grouped.setdefault(f.situation_id, []).append(f)
    for items in grouped.values():
        items.sort(key=lambda f: (f.recorded_at, f.event_id))
    return grouped
