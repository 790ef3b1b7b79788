"""The date rules of signals and consents, in one place for the producer and the exchange.

A fund may build its messages with its own libraries, not the producer SDK: the exchange
(the correlator) applies these rules itself, with the SDK's reason codes, and both sides
call the functions below so that they cannot drift (``docs/rules.md`` lists every rule of
the exchange and where each is enforced).

- A signal's ``observed_on`` is not after today and not before the same day
  :data:`MAX_AGE_YEARS` years earlier (:func:`oldest_accepted`; from a 29 February, the
  28th). "Today" is the date in Europe/Paris (:data:`PARIS`), the funds' working day.
- Its ``emitted_at`` is not after now plus :data:`CLOCK_SKEW` (the emitter's clock may be a
  little ahead of the exchange's), not before the oldest accepted day (Paris midnight), and
  ``observed_on`` is not after ``emitted_at``'s date in Paris (nothing is signalled before it
  happened). The SDK writes ``emitted_at`` itself, from its clock: it needs only the first
  rule; the correlator checks all of them.
- A consent event's ``effective_at`` is not after now plus :data:`CLOCK_SKEW`; the consent
  command checks the form's date (``date_effet``), which becomes it, against today.

The limits of a moment (:class:`DateLimits`) are computed once (per batch in the
correlator, per day in the SDK), so that checking a message costs a few comparisons. Pure
functions of the values and the moment given: no clock is read here but by
:func:`today_paris` when it is given none.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import NamedTuple
from zoneinfo import ZoneInfo

from services.core.reasons import Reason

PARIS = ZoneInfo("Europe/Paris")
#: How far back an event may be signalled, in years (the CAF may act up to 2 years after it).
MAX_AGE_YEARS = 2
#: How far ahead of the exchange's clock a message's timestamp may be (the emitter's clock
#: may run a little fast; beyond this, the timestamp is in the future).
CLOCK_SKEW = dt.timedelta(minutes=5)

_DAY = dt.timedelta(days=1)


def today_paris(now: dt.datetime | None = None) -> dt.date:
    """The date in Paris at ``now`` (an aware datetime; default: the clock's)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(PARIS).date()


def oldest_accepted(today: dt.date) -> dt.date:
    """The oldest ``observed_on`` accepted on ``today``: the same day MAX_AGE_YEARS years
    earlier (from a 29 February, the 28th)."""
    try:
        return today.replace(year=today.year - MAX_AGE_YEARS)
    except ValueError:  # 29 February
        return today.replace(year=today.year - MAX_AGE_YEARS, day=28)


@functools.lru_cache(maxsize=4096)
def paris_midnight(day: dt.date) -> dt.datetime:
    """The instant (in UTC) ``day`` begins in Paris (midnight always exists there: the
    daylight-saving changes happen at 2 and 3 a.m.). Remembered: the correlator asks it for
    the ``observed_on`` of every signal, and those are the ≈ 731 days of the window."""
    return dt.datetime.combine(day, dt.time(), PARIS).astimezone(dt.UTC)


class DateLimits(NamedTuple):
    """The bounds of the date rules at one moment."""

    #: today, in Paris: no ``observed_on`` (nor consent form date) after it
    today: dt.date
    #: no ``observed_on`` before it (:func:`oldest_accepted`)
    oldest: dt.date
    #: now + CLOCK_SKEW: no ``emitted_at`` / ``effective_at`` after it
    latest: dt.datetime
    #: Paris midnight of ``oldest``: no ``emitted_at`` before it
    earliest: dt.datetime


def limits_at(now: dt.datetime) -> DateLimits:
    """The limits at ``now`` (an aware datetime): what the correlator uses, once per batch."""
    today = today_paris(now)
    oldest = oldest_accepted(today)
    return DateLimits(today, oldest, now + CLOCK_SKEW, paris_midnight(oldest))


def limits_on(today: dt.date) -> DateLimits:
    """The limits on ``today`` when only the day is known (the SDK judges a whole file by
    one day): ``latest`` is then the end of that day plus CLOCK_SKEW."""
    oldest = oldest_accepted(today)
    return DateLimits(today, oldest, paris_midnight(today + _DAY) + CLOCK_SKEW, paris_midnight(oldest))


def date_reason(day: dt.date, limits: DateLimits, *, too_old: bool = True) -> Reason | None:
    """``date_future`` if ``day`` is after today, ``date_trop_ancienne`` if ``too_old`` and it
    is before the oldest accepted day, else None. A signal's ``observed_on`` (SDK and
    correlator), a consent form's date (``too_old=False``: the consent command)."""
    if day > limits.today:
        return Reason.DATE_FUTURE
    if too_old and day < limits.oldest:
        return Reason.DATE_TROP_ANCIENNE
    return None


def timestamp_reason(at: dt.datetime, limits: DateLimits, *, too_old: bool = True) -> Reason | None:
    """``date_future`` if ``at`` is after now + CLOCK_SKEW, ``date_trop_ancienne`` if
    ``too_old`` and it is before the oldest accepted day began, else None."""
    if at > limits.latest:
        return Reason.DATE_FUTURE
    if too_old and at < limits.earliest:
        return Reason.DATE_TROP_ANCIENNE
    return None


#: Dead-letter details of the date rules: the field and what is wrong, never the value.
_DETAIL = {
    ("observed_on", Reason.DATE_FUTURE): "/observed_on:in_future",
    ("observed_on", Reason.DATE_TROP_ANCIENNE): f"/observed_on:older_than_{MAX_AGE_YEARS}_years",
    ("emitted_at", Reason.DATE_FUTURE): "/emitted_at:in_future_beyond_clock_skew",
    ("emitted_at", Reason.DATE_TROP_ANCIENNE): f"/emitted_at:older_than_{MAX_AGE_YEARS}_years",
    ("effective_at", Reason.DATE_FUTURE): "/effective_at:in_future_beyond_clock_skew",
}
OBSERVED_AFTER_EMITTED = "/observed_on:after_emitted_at"


def signal_dates(observed_on: dt.date, emitted_at: dt.datetime,
                 limits: DateLimits) -> tuple[Reason, str] | None:
    """Every date rule of a signal: None, or the first broken one (reason, dead-letter detail).

    In order: ``observed_on`` (:func:`date_reason`, the SDK's own check), ``emitted_at``
    (:func:`timestamp_reason`), then ``observed_on`` not after ``emitted_at``'s Paris date
    (``date_future``: the event is dated after the message that reports it)."""
    reason = date_reason(observed_on, limits)
    if reason is not None:
        return reason, _DETAIL["observed_on", reason]
    reason = timestamp_reason(emitted_at, limits)
    if reason is not None:
        return reason, _DETAIL["emitted_at", reason]
    if emitted_at < paris_midnight(observed_on):
        return Reason.DATE_FUTURE, OBSERVED_AFTER_EMITTED
    return None


def consent_dates(effective_at: dt.datetime, limits: DateLimits) -> tuple[Reason, str] | None:
    """The date rule of a consent event: ``effective_at`` not in the future (beyond
    CLOCK_SKEW). No lower bound: a consent given long ago stays given, and a withdrawal or
    an objection takes effect when recorded."""
    reason = timestamp_reason(effective_at, limits, too_old=False)
    if reason is not None:
        return reason, _DETAIL["effective_at", reason]
    return None
