"""Bounds of the values people type: months, periods, days, counts.

Every command and every page reads a month (``--month``, ``--period``, ``?month=``) or a day
(``--as-of``) through these functions, so that an out-of-range value (``9999-12``,
``0000-01``) is refused at the edge with a French message instead of failing deep inside
(``datetime`` cannot hold year 10000, the month after ``9999-12``). The accepted span,
2000-01 to 2099-12, is wider than any month the exchange can hold data for and narrow
enough that every computation on it (the following month, eighteen months before) stays
in range.
"""

from __future__ import annotations

import datetime as dt
import re

from services.errors import InputError

MIN_YEAR = 2000
MAX_YEAR = 2099
MONTH_SPAN = f"{MIN_YEAR}-01 à {MAX_YEAR}-12"
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def parse_month(text: str | None, *, what: str = "mois") -> tuple[int, int]:
    """``"2026-11"`` → ``(2026, 11)``; anything else, or a year outside 2000-2099, is an
    :class:`InputError` naming ``what`` (e.g. ``"--period"``)."""
    match = _MONTH.fullmatch(text or "")
    if not match:
        raise InputError(f"{what} invalide : {_shown(text)}",
                         f"format attendu AAAA-MM, par exemple 2026-11 (de {MONTH_SPAN})")
    year, month = int(match[1]), int(match[2])
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise InputError(f"{what} hors limites : {_shown(text)}", f"donnez un mois de {MONTH_SPAN}")
    return year, month


def parse_day(text: str | None, *, what: str = "date") -> dt.date:
    """``"2026-11-30"`` → a :class:`datetime.date` between 2000-01-01 and 2099-12-31."""
    match = _DAY.fullmatch(text or "")
    try:
        day = dt.date(int(match[1]), int(match[2]), int(match[3])) if match else None
    except ValueError:
        day = None
    if day is None:
        raise InputError(f"{what} invalide : {_shown(text)}",
                         "format attendu AAAA-MM-JJ, par exemple 2026-11-30")
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise InputError(f"{what} hors limites : {_shown(text)}",
                         f"donnez un jour du {MIN_YEAR}-01-01 au {MAX_YEAR}-12-31")
    return day


def _shown(text: str | None, limit: int = 40) -> str:
    """The value as the message shows it: quoted, cut, never a whole pasted file."""
    if text is None:
        return "(vide)"
    return repr(text if len(text) <= limit else text[:limit] + "…")
