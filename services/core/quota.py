"""A fund's daily quota at an exchange service that answers in batches (the pseudonymisation
service's evaluations, the key endpoint's keys): what each fund used per UTC day, taken when
a batch is admitted, given back when it was not answered, taken back from the ledger at start.

Not locked: each service admits under a lock of its own, which guards more than the quota.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from services.core.pseudonymisation import Refused
from services.core.reasons import Reason
from services.core.types import Fund


class DailyQuota:
    """``per_day`` ``unit`` ("keys") a fund, a UTC day; ``setting`` is what raises it."""

    def __init__(self, per_day: int, *, unit: str, setting: str) -> None:
        self.per_day = per_day
        self.unit = unit
        self.setting = setting
        self._used: dict[tuple[str, dt.date], int] = {}

    def used(self, fund: Fund, day: dt.date) -> int:
        return self._used.get((fund.value, day), 0)

    def restore(self, used: Mapping[tuple[str, dt.date], int]) -> None:
        """Count what the ledger says was used already (a restart gives no fund a fresh quota)."""
        for key, count in used.items():
            self._used[key] = self._used.get(key, 0) + count

    def take(self, fund: Fund, day: dt.date, count: int) -> None:
        """Count ``count`` more for ``fund`` on ``day``, or raise :class:`Refused`
        (``quota_depasse``) and count nothing."""
        used = self._used.get((fund.value, day), 0)
        if used + count > self.per_day:
            raise Refused(Reason.QUOTA_DEPASSE,
                          f"{fund.value}: {used} of {self.per_day} {self.unit} used today, {count} more asked",
                          f"wait for tomorrow (UTC) or have the operator raise {self.setting}")
        self._used[(fund.value, day)] = used + count

    def give_back(self, fund: Fund, day: dt.date, count: int) -> None:
        """``count`` taken on ``day`` were not answered after all."""
        self._used[(fund.value, day)] -= count
