"""The pseudonymisation service's entries in the ledger: every batch, answered or refused, and
every key version destroyed (the service's :class:`~services.pseudonymiser.service.ServiceLog`,
wired by :mod:`services.app.bootstrap`).

A batch's entry holds the fund, how many elements, the key version (in the actor,
``pseudonymiseur.<key_version>``), the time, the request id and, for a refusal, the reason;
never an input.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re

from services.core.reasons import Reason
from services.core.types import Fund
from services.ledger.entries import Action, LedgerLegalBasis, LedgerPurpose, new_entry
from services.ledger.store import Ledger

_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
_VERSION = re.compile(r"pk-[0-9a-f]{8}")


class PseudonymiserLog:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def batch(self, *, answered: bool, fund: Fund, request_id: str, count: int, version: str,
              at: dt.datetime, reason: Reason | None) -> None:
        action = Action.PSEUDONYMES_CALCULES if answered else Action.PSEUDONYMISATION_REFUSEE
        safe_id = request_id if _REQUEST_ID.fullmatch(request_id) else None
        actor = f"pseudonymiseur.{version}" if _VERSION.fullmatch(version) else "pseudonymiseur"
        self.ledger.append([new_entry(
            action=action, actor=actor, purpose=LedgerPurpose.ACCES_AUX_DROITS, legal_basis=LedgerLegalBasis.L115_2_1,
            time=at, fund=fund, count=count, reason=reason, ref=safe_id,
            natural_key=(fund.value, safe_id or base64.b16encode(at.isoformat().encode()).decode(),
                         action.value))])

    def today(self, now: dt.datetime) -> tuple[dict[tuple[str, dt.date], int], list[str]]:
        """Today's (UTC) evaluations per fund, and today's request ids, as the ledger has them."""
        day = now.date()
        period = (day.isoformat(), (day + dt.timedelta(days=1)).isoformat())
        used: dict[tuple[str, dt.date], int] = {}
        seen: list[str] = []
        for action in (Action.PSEUDONYMES_CALCULES, Action.PSEUDONYMISATION_REFUSEE):
            for _, raw in self.ledger.query(action=action.value, period=period):
                doc = json.loads(raw)
                if doc.get("ref"):
                    seen.append(doc["ref"])
                if action is Action.PSEUDONYMES_CALCULES and doc.get("fund"):
                    used[(doc["fund"], day)] = used.get((doc["fund"], day), 0) + int(doc.get("count") or 0)
        return used, seen

    def key_destroyed(self, version: str, at: dt.datetime) -> None:
        self.ledger.append([new_entry(
            action=Action.ROTATION_CLE, actor=f"pseudonymiseur.{version}", purpose=LedgerPurpose.ACCES_AUX_DROITS,
            legal_basis=LedgerLegalBasis.RGPD_6_1_C, time=at, count=1, natural_key=("pseudonymiser-destroy", version))])
