"""The NIR (numéro de sécurité sociale): validate, normalise, derive an age, mask.

Validation is python-stdnum's (``stdnum.fr.nir``): separators (spaces, dots) stripped,
Corsica ``2A``/``2B``, key = 97 − (number mod 97). On top of it we tell a *malformed* NIR
(:attr:`Reason.NIR_INVALIDE`) from one whose *key* is wrong (:attr:`Reason.CLE_NIR_INVALIDE`,
usually a typo), because a back-office fixes them differently.

The NIR never leaves this module's callers except pseudonymised; for reports,
:func:`mask` shows at most three of its characters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from stdnum.exceptions import InvalidChecksum, ValidationError
from stdnum.fr import nir as stdnum_nir

from services.core.reasons import Reason
from services.errors import Rejected

NIR_LENGTH = 15
#: first digit: 1/2 (born in France or registered), 3/4 (foreign-born, provisional), 7/8 (temporary)
_SEX_DIGITS = frozenset("123478")


#: The NIR's column in the funds' files (extracts and consent files alike).
F_NIR = "nir"


def normalise(raw: str) -> str:
    """The 15-character NIR (upper case, no separators), or :class:`~services.errors.Rejected` (field ``nir``)."""
    # Fast path for the common, well-formed case (stdnum's own clean-up is per character
    # and costs more than the rest of the check); anything unusual goes through stdnum.
    number = raw.replace(" ", "").replace(".", "").upper()
    if (len(number) == NIR_LENGTH and number.isascii() and number[:5].isdigit() and number[7:].isdigit()
            and (number[5:7].isdigit() or number[5:7] in ("2A", "2B")) and number[0] in _SEX_DIGITS
            and stdnum_nir.calc_check_digits(number) == number[13:]):
        return number
    if number[:1] not in _SEX_DIGITS:
        raise Rejected(Reason.NIR_INVALIDE, F_NIR)
    try:
        number = stdnum_nir.validate(raw)
    except InvalidChecksum as exc:
        raise Rejected(Reason.CLE_NIR_INVALIDE, F_NIR) from exc
    except ValidationError as exc:
        raise Rejected(Reason.NIR_INVALIDE, F_NIR) from exc
    return number


def valid_normalised(raws: Iterable[str]) -> list[str]:
    """The normalised form of every valid NIR among ``raws``; invalid ones are skipped (they
    are refused, with their reason, when their record is built)."""
    found = []
    for raw in raws:
        try:
            found.append(normalise(raw))
        except (Rejected, AttributeError, TypeError):
            continue
    return found


def birth_year_month(nir: str, today: dt.date) -> tuple[int, int | None]:
    """Birth year and month (None when the NIR says the month is unknown: 20, 30-42, 50-99).

    The NIR has a two-digit year; a year that would be in the future is read as 19xx. Past
    100 years of age this reads too young, which only ever *under*-attests an age condition."""
    yy, mm = int(nir[1:3]), int(nir[3:5])
    year = 2000 + yy if 2000 + yy <= today.year else 1900 + yy
    return year, (mm if 1 <= mm <= 12 else None)


def age_on(nir: str, day: dt.date) -> int:
    """Age in full years on ``day``, never over-estimated (unknown month: December assumed)."""
    year, month = birth_year_month(nir, day)
    month = month or 12
    age = day.year - year
    # Born some day of ``month``: assume the last day, so the birthday may not have come yet.
    if day.month <= month:
        age -= 1
    return max(age, 0)


def mask(raw: str) -> str:
    """A value safe for a reject report: at most 3 characters of ``raw`` in clear.

    First character and last two of the compacted value (the sex digit and the key), the
    rest as ``*``; short or empty values are fully masked; never longer than 15."""
    compact = "".join(raw.split()).replace(".", "")
    if not compact:
        return ""
    if len(compact) < 8:
        return "*" * len(compact)
    shown = compact[:1] + "*" * (min(len(compact), NIR_LENGTH) - 3) + compact[-2:]
    return shown
