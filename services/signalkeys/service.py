"""The key endpoint's decisions: hand a fund the keys it seals its signals with (contract
§4.4), or refuse the batch with a reason.

For each pseudonym asked, the person's *current* data key (the highest epoch of
``exchange_data_keys``; made at once if the person has none, get-or-create against the
correlator making keys too: :meth:`~services.platform.datakeys.KeyStore.current`), handed
*derived* for the asking fund (:func:`services.core.signal_seal.fund_key`): a fund receives
nothing that opens another fund's signals nor anything the exchange seals itself.

Every batch, answered or refused, is one ledger entry: the fund, how many keys, the time
and, for a refusal, the reason; never a pseudonym. A fund's keys per UTC day are bounded
(``HELP_SIGNAL_KEYS_QUOTA_PER_DAY``), the day's count taken back from the ledger at start.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.core.pseudonymisation import Refused
from services.core.quota import DailyQuota
from services.core.reasons import Reason
from services.core.signal_seal import fund_key
from services.core.types import PSEUDONYM_VALUE_PATTERN, Fund
from services.platform.datakeys import KeyStore, subject_of

_PSEUDONYM = re.compile(PSEUDONYM_VALUE_PATTERN)


@dataclass(frozen=True)
class FundKey:
    """One person's key for one fund: ``subject`` and ``epoch`` go into the sealed member."""

    pseudonym: str
    subject: bytes
    epoch: int
    key: bytes


class KeysLog(Protocol):
    """Where the endpoint enters what it did (the audit ledger), and reads today's back."""

    def batch(self, *, answered: bool, fund: Fund, request_id: str, count: int, at: dt.datetime,
              reason: Reason | None) -> None: ...

    def today(self, now: dt.datetime) -> dict[tuple[str, dt.date], int]: ...


class SignalKeyService:
    """Quota and limits per fund, then get-or-create of each person's current key."""

    def __init__(self, store: KeyStore, secret: bytes, *, quota_per_day: int, batch_limit: int,
                 log: KeysLog | None = None, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.store = store
        self.secret = secret
        self.quota = DailyQuota(quota_per_day, unit="keys", setting="HELP_SIGNAL_KEYS_QUOTA_PER_DAY")
        self.batch_limit = batch_limit
        self._log = log
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._lock = threading.Lock()
        if log is not None:
            self.quota.restore(log.today(self._clock()))

    def used(self, fund: Fund, day: dt.date) -> int:
        return self.quota.used(fund, day)

    def keys(self, fund: Fund, pseudonyms: Sequence[str]) -> list[FundKey]:
        """The fund's key for each pseudonym (in order), or raise :class:`Refused` (recorded
        either way)."""
        now = self._clock()
        request_id = uuid.uuid4().hex
        try:
            with self._lock:
                self._admit(fund, pseudonyms, now.date())
            try:
                subjects = {v: subject_of(self.secret, v.encode("ascii")) for v in pseudonyms}
                current = self.store.current(set(subjects.values()))
            except BaseException:
                with self._lock:  # not answered: give the quota back
                    self.quota.give_back(fund, now.date(), len(pseudonyms))
                raise
        except Refused as exc:
            self._enter(False, fund, request_id, len(pseudonyms), now, exc.reason)
            raise
        self._enter(True, fund, request_id, len(pseudonyms), now, None)
        derived: dict[bytes, bytes] = {}
        out = []
        for value in pseudonyms:
            subject = subjects[value]
            epoch, key = current[subject]
            if subject not in derived:
                derived[subject] = fund_key(key, fund)
            out.append(FundKey(value, subject, epoch, derived[subject]))
        return out

    def _admit(self, fund: Fund, pseudonyms: Sequence[str], day: dt.date) -> None:
        count = len(pseudonyms)
        if not 1 <= count <= self.batch_limit:
            raise Refused(Reason.LOT_TROP_VOLUMINEUX, f"a batch holds 1 to {self.batch_limit} pseudonyms, not {count}",
                          "split the request")
        if not all(isinstance(v, str) and _PSEUDONYM.fullmatch(v) for v in pseudonyms):
            raise Refused(Reason.SCHEMA_INVALIDE, "a pseudonym is not 43 base64url characters",
                          "send the `value` of each signal's pseudonym (contract §4)")
        self.quota.take(fund, day, count)

    def _enter(self, answered: bool, fund: Fund, request_id: str, count: int, now: dt.datetime,
               reason: Reason | None) -> None:
        if self._log is not None:
            self._log.batch(answered=answered, fund=fund, request_id=request_id, count=count, at=now,
                            reason=reason)
