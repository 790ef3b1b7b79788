"""The key endpoint's entries in the ledger: every batch, answered or refused (the endpoint's
:class:`~services.signalkeys.service.KeysLog`, wired by :mod:`services.app.bootstrap`).

A batch's entry holds the fund, how many keys, the time, the request's id and, for a
refusal, the reason; never a pseudonym, a subject or a key.
"""

from __future__ import annotations

import datetime as dt
import json

from services.core.reasons import Reason
from services.core.types import Fund
from services.ledger.entries import Action, LedgerLegalBasis, LedgerPurpose, new_entry
from services.ledger.store import Ledger


class SignalKeysLog:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def batch(self, *, answered: bool, fund: Fund, request_id: str, count: int, at: dt.datetime,
              reason: Reason | None) -> None:
        action = Action.CLES_SIGNAL_REMISES if answered else Action.CLES_SIGNAL_REFUSEES
        self.ledger.append([new_entry(
            action=action, actor="service-cles", purpose=LedgerPurpose.ACCES_AUX_DROITS,
            legal_basis=LedgerLegalBasis.L115_2_1, time=at, fund=fund, count=count, reason=reason,
            ref=request_id, natural_key=(fund.value, request_id, action.value))])

    def today(self, now: dt.datetime) -> dict[tuple[str, dt.date], int]:
        """Today's (UTC) keys handed per fund, as the ledger has them."""
        day = now.date()
        period = (day.isoformat(), (day + dt.timedelta(days=1)).isoformat())
        used: dict[tuple[str, dt.date], int] = {}
        for _, raw in self.ledger.query(action=Action.CLES_SIGNAL_REMISES.value, period=period):
            doc = json.loads(raw)
            if doc.get("fund"):
                used[(doc["fund"], day)] = used.get((doc["fund"], day), 0) + int(doc.get("count") or 0)
        return used
