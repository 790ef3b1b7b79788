"""The person behind one of the fund's own file references, as its extracts give it.

For the person's access report (``help-exchange access-report``, :mod:`services.ledger.access`):
the fund alone maps its file number to the person; the NIR never leaves this function. A
reference that is in none of the fund's extracts is refused: the fund reports only on its
own files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from pathlib import Path

from services.core.types import Fund
from services.errors import InputError, Rejected
from services.producer.extract import Extract, Line
from services.producer.nir import normalise
from services.producer.seal import SignalIds


def person_behind(fund: Fund, reference: str, extracts: Iterable[Path],
                  pseudonymise: Callable[[str], str], id_root: bytes) -> tuple[str, frozenset[str]]:
    """The person behind ``reference`` in the fund's extracts; refused if it is none of
    them (the fund reports only on its own files). ``pseudonymise``: normalised NIR →
    pseudonym value, under the scheme in force (v1 HMAC, or v2 through the service).
    Returns the pseudonym value and the ids of the signals the fund sent about the person."""
    ids = SignalIds(fund, id_root)
    nirs: set[str] = set()
    signal_ids: set[str] = set()
    for path in extracts:
        for item in Extract(path):
            if not isinstance(item, Line) or item.record.reference != reference:
                continue
            rec = item.record
            try:
                nirs.add(normalise(rec.nir))
            except Rejected:
                continue
            observed = rec.observed_on if isinstance(rec.observed_on, dt.date) else \
                _date(rec.observed_on)
            if observed is not None:
                signal_ids.add(ids.signal_id(reference, rec.category, observed))
    if not nirs:
        raise InputError(f"the reference {reference!r} is not a file of {fund.value} in the "
                         "extracts given",
                         "give the fund's own reference and the extracts it appears in "
                         "(--extract); a fund reports only on its own files")
    if len(nirs) > 1:
        raise InputError(f"the reference {reference!r} names {len(nirs)} different persons in "
                         "the extracts", "correct the back-office data before reporting")
    return pseudonymise(nirs.pop()), frozenset(signal_ids)


def _date(text: str) -> dt.date | None:
    for fmt in ("%Y-%m-%d", "%d/%m/%Y"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None
