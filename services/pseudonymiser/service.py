"""The pseudonymisation service's decisions: evaluate a fund's batch, or refuse it with a reason.

Every batch, answered or refused, is one ledger entry: the fund, how many elements, the key
version (in the actor, ``pseudonymiseur.<key_version>``), the time and, for a refusal, the
reason. Never an input: the service only ever sees blinded elements, which reveal nothing.
The service writes through :class:`ServiceLog`, which the composition root fills with the
ledger (:class:`services.ledger.pseudonymisation.PseudonymiserLog`).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.core.oprf import Evaluator, OprfError
from services.core.pseudonymisation import Refused
from services.core.quota import DailyQuota
from services.core.reasons import Reason
from services.core.types import Fund
from services.platform import metrics
from services.platform.settings import Settings

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
#: How many request ids are remembered against replay (a day's worth of batches and more).
REPLAY_MEMORY = 1_000_000


@dataclass(frozen=True)
class Answer:
    key_version: str
    evaluated: bytes  # VerifiableBatchOutput: the elements and one proof


class ServiceLog(Protocol):
    """Where the service enters what it did (the audit ledger), and reads today's back."""

    def batch(self, *, answered: bool, fund: Fund, request_id: str, count: int, version: str,
              at: dt.datetime, reason: Reason | None) -> None:
        """One batch, answered or refused (``reason``)."""
        ...

    def today(self, now: dt.datetime) -> tuple[dict[tuple[str, dt.date], int], list[str]]:
        """Today's (UTC) evaluations per (fund, day), and today's request ids."""
        ...

    def key_destroyed(self, version: str, at: dt.datetime) -> None:
        """A key version's seed was destroyed (the end of its overlap window)."""
        ...


class Pseudonymiser:
    """Quota, replay and limits per fund, then ``BlindEvaluateBatch`` under one key version."""

    def __init__(self, evaluators: dict[str, Evaluator], current: str, *, quota_per_day: int, batch_limit: int,
                 log: ServiceLog | None = None, clock: Callable[[], dt.datetime] | None = None,
                 keys: Callable[[], tuple[dict[str, Evaluator], str] | None] | None = None) -> None:
        self.evaluators = evaluators
        #: Gives the active versions again when the key store changed (None: unchanged): a
        #: version created or destroyed while the service runs is taken at the next batch.
        self._keys = keys
        #: The version a batch is answered under when it names none (the newest active one).
        self.current_version = current
        self.quota = DailyQuota(quota_per_day, unit="evaluations", setting="HELP_PSEUDONYMISER_QUOTA_PER_DAY")
        self.batch_limit = batch_limit
        self._log = log
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def restore(self, used: dict[tuple[str, dt.date], int], seen: Iterable[str]) -> None:
        """Take back what the ledger says was already used and answered (after a restart:
        a restart must not give a fund a fresh quota, nor accept a replay)."""
        with self._lock:
            self.quota.restore(used)
            for request_id in seen:
                self._seen[request_id] = None

    def used(self, fund: Fund, day: dt.date) -> int:
        return self.quota.used(fund, day)

    def evaluate(self, fund: Fund, request_id: str, blinded: Sequence[bytes], key_version: str | None = None,
                 ) -> Answer:
        """Answer the batch or raise :class:`Refused` (recorded either way)."""
        now = self._clock()
        if self._keys is not None:
            changed = self._keys()
            if changed is not None:
                self.evaluators, self.current_version = changed
        version = key_version or self.current_version
        try:
            with self._lock:
                self._admit(fund, request_id, len(blinded), version, now.date())
            evaluator = self.evaluators[version]
            try:
                out = evaluator.evaluate_batch(blinded)
            except OprfError:
                with self._lock:  # not evaluated: give the quota back
                    self.quota.give_back(fund, now.date(), len(blinded))
                raise Refused(Reason.ELEMENT_INVALIDE, "a blinded element is malformed or the identity",
                              "blind every input afresh (RFC 9497 Blind) and send the serialised elements") from None
        except Refused as exc:
            self._enter(False, fund, request_id, len(blinded), version, now, exc.reason)
            raise
        self._enter(True, fund, request_id, len(blinded), version, now, None)
        return Answer(version, out)

    def _admit(self, fund: Fund, request_id: str, count: int, version: str, day: dt.date) -> None:
        if not REQUEST_ID.fullmatch(request_id):
            raise Refused(Reason.SCHEMA_INVALIDE, "request_id must be 32 lower-case hex characters",
                          "send a fresh random id with each batch")
        if request_id in self._seen:
            raise Refused(Reason.REQUETE_REJOUEE, "this request_id was already answered",
                          "send a fresh random id with each batch")
        if version not in self.evaluators:
            raise Refused(Reason.VERSION_CLE_INCONNUE, f"key version {version!r} is not active here",
                          "ask under a version listed active in the service's public.json")
        if not 1 <= count <= self.batch_limit:
            raise Refused(Reason.LOT_TROP_VOLUMINEUX, f"a batch holds 1 to {self.batch_limit} elements, not {count}",
                          "split the request")
        self.quota.take(fund, day, count)
        self._seen[request_id] = None
        if len(self._seen) > REPLAY_MEMORY:
            self._seen.popitem(last=False)

    def _enter(self, answered: bool, fund: Fund, request_id: str, count: int, version: str,
               now: dt.datetime, reason: Reason | None) -> None:
        if answered:
            metrics.EVALUATIONS.labels(fund.value).inc(count)
        else:
            metrics.REFUSALS.labels(fund.value, reason.value if reason else "").inc()
        if self._log is not None:
            self._log.batch(answered=answered, fund=fund, request_id=request_id, count=count,
                            version=version, at=now, reason=reason)


def build_service(settings: Settings, *, log: ServiceLog | None = None) -> Pseudonymiser:
    """The service of ``settings``: its active key versions, quota, limit, and where it enters
    its batches (``log``: the ledger, as :func:`services.app.bootstrap.pseudonymiser_log`
    builds it; None enters nothing)."""
    from services.core.pseudonymisation import current_version, public_path, read_public
    from services.errors import ConfigurationError
    from services.pseudonymiser.keystore import load_evaluators, store_dir

    path = public_path(store_dir(settings))
    seen = [path.stat().st_mtime_ns]

    def keys() -> tuple[dict[str, Evaluator], str] | None:
        """The active versions again if ``public.json`` changed (a stat per batch): a new
        version is answered under at once, a destroyed one refused at once."""
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        if mtime == seen[0]:
            return None
        try:
            found = load_evaluators(settings), current_version(read_public(path)).key_version
        except ConfigurationError:  # caught between two writes: keep what we have, look again
            return None
        seen[0] = mtime
        return found

    evaluators = load_evaluators(settings)
    current = current_version(read_public(path)).key_version
    service = Pseudonymiser(evaluators, current, quota_per_day=settings.pseudonymiser_quota_per_day,
                            batch_limit=settings.pseudonymiser_batch_limit, log=log, keys=keys)
    if log is not None:
        service.restore(*log.today(dt.datetime.now(dt.UTC)))
    return service
