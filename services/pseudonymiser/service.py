"""The pseudonymisation service's decisions: evaluate a fund's batch, or refuse it with a reason.

Every batch, answered or refused, is one ledger entry: the fund, how many elements, the key
version (in the actor, ``pseudonymiseur.<key_version>``), the time and, for a refusal, the
reason. Never an input: the service only ever sees blinded elements, which reveal nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from services.core.oprf import Evaluator, OprfError
from services.core.reasons import Reason
from services.core.types import Fund
from services.errors import Rejected
from services.ledger.entries import Action, LedgerEntry, LedgerLegalBasis, LedgerPurpose, new_entry
from services.ledger.store import Ledger
from services.platform.settings import Settings

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
#: How many request ids are remembered against replay (a day's worth of batches and more).
REPLAY_MEMORY = 1_000_000


class Refused(Rejected):
    """A batch refused: ``reason`` says why (``detail``, in words); nothing was evaluated.

    The field is the request as a whole; the message keeps the form the operators know,
    ``"<reason code>: <what>"``."""

    def __init__(self, reason: Reason, what: str, hint: str) -> None:
        super().__init__(reason, "request", f"{reason.value}: {what}", hint)
        self.detail = what
        self._parts = (reason, what, hint)

    def __reduce__(self) -> tuple[type[Refused], tuple[Reason, str, str]]:  # type: ignore[override]
        """Picklable (it crosses from the producer's worker processes)."""
        return (type(self), self._parts)


@dataclass(frozen=True)
class Answer:
    key_version: str
    evaluated: bytes  # VerifiableBatchOutput: the elements and one proof


Recorder = Callable[[list[LedgerEntry]], None]


class Pseudonymiser:
    """Quota, replay and limits per fund, then ``BlindEvaluateBatch`` under one key version."""

    def __init__(self, evaluators: dict[str, Evaluator], current: str, *, quota_per_day: int, batch_limit: int,
                 record: Recorder | None = None, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.evaluators = evaluators
        #: The version a batch is answered under when it names none (the newest active one).
        self.current_version = current
        self.quota_per_day = quota_per_day
        self.batch_limit = batch_limit
        self._record = record
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._used: dict[tuple[str, dt.date], int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def restore(self, used: dict[tuple[str, dt.date], int], seen: Iterable[str]) -> None:
        """Take back what the ledger says was already used and answered (after a restart:
        a restart must not give a fund a fresh quota, nor accept a replay)."""
        with self._lock:
            for key, count in used.items():
                self._used[key] = self._used.get(key, 0) + count
            for request_id in seen:
                self._seen[request_id] = None

    def used(self, fund: Fund, day: dt.date) -> int:
        return self._used.get((fund.value, day), 0)

    def evaluate(self, fund: Fund, request_id: str, blinded: Sequence[bytes], key_version: str | None = None,
                 ) -> Answer:
        """Answer the batch or raise :class:`Refused` (recorded either way)."""
        now = self._clock()
        version = key_version or self.current_version
        try:
            with self._lock:
                self._admit(fund, request_id, len(blinded), version, now.date())
            evaluator = self.evaluators[version]
            try:
                out = evaluator.evaluate_batch(blinded)
            except OprfError:
                with self._lock:  # not evaluated: give the quota back
                    self._used[(fund.value, now.date())] -= len(blinded)
                raise Refused(Reason.ELEMENT_INVALIDE, "a blinded element is malformed or the identity",
                              "blind every input afresh (RFC 9497 Blind) and send the serialised elements") from None
        except Refused as exc:
            self._log(Action.PSEUDONYMISATION_REFUSEE, fund, request_id, len(blinded), version, now, exc.reason)
            raise
        self._log(Action.PSEUDONYMES_CALCULES, fund, request_id, len(blinded), version, now, None)
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
        used = self._used.get((fund.value, day), 0)
        if used + count > self.quota_per_day:
            raise Refused(Reason.QUOTA_DEPASSE,
                          f"{fund.value}: {used} of {self.quota_per_day} evaluations used today, {count} more asked",
                          "wait for tomorrow (UTC) or have the operator raise HELP_PSEUDONYMISER_QUOTA_PER_DAY")
        self._used[(fund.value, day)] = used + count
        self._seen[request_id] = None
        if len(self._seen) > REPLAY_MEMORY:
            self._seen.popitem(last=False)

    def _log(self, action: Action, fund: Fund, request_id: str, count: int, version: str,
             now: dt.datetime, reason: Reason | None) -> None:
        if self._record is None:
            return
        safe_id = request_id if REQUEST_ID.fullmatch(request_id) else None
        actor = f"pseudonymiseur.{version}" if re.fullmatch(r"pk-[0-9a-f]{8}", version) else "pseudonymiseur"
        entry = new_entry(action=action, actor=actor, purpose=LedgerPurpose.ACCES_AUX_DROITS,
                          legal_basis=LedgerLegalBasis.L115_2_1, time=now, fund=fund, count=count, reason=reason,
                          ref=safe_id,
                          natural_key=(fund.value, safe_id or base64.b16encode(now.isoformat().encode()).decode(),
                                       action.value))
        self._record([entry])


def build_service(settings: Settings, *, ledger: bool = True) -> Pseudonymiser:
    """The service of ``settings``: its active key versions, quota, limit, and the ledger."""
    from services.pseudonymiser.keystore import current_version, load_evaluators, public_path, read_public, store_dir

    evaluators = load_evaluators(settings)
    current = current_version(read_public(public_path(store_dir(settings)))).key_version
    record: Recorder | None = None
    if ledger:
        book = Ledger.open(settings, sign=False)

        def record(entries: list[LedgerEntry]) -> None:
            book.append(entries)

    service = Pseudonymiser(evaluators, current, quota_per_day=settings.pseudonymiser_quota_per_day,
                            batch_limit=settings.pseudonymiser_batch_limit, record=record)
    if ledger:
        service.restore(*_from_ledger(book, dt.datetime.now(dt.UTC)))
    return service


def _from_ledger(book: Ledger, now: dt.datetime) -> tuple[dict[tuple[str, dt.date], int], list[str]]:
    """Today's (UTC) evaluations per fund, and today's request ids, as the ledger has them."""
    import json

    day = now.date()
    period = (day.isoformat(), (day + dt.timedelta(days=1)).isoformat())
    used: dict[tuple[str, dt.date], int] = {}
    seen: list[str] = []
    for action in (Action.PSEUDONYMES_CALCULES, Action.PSEUDONYMISATION_REFUSEE):
        for _, raw in book.query(action=action.value, period=period):
            doc = json.loads(raw)
            if doc.get("ref"):
                seen.append(doc["ref"])
            if action is Action.PSEUDONYMES_CALCULES and doc.get("fund"):
                used[(doc["fund"], day)] = used.get((doc["fund"], day), 0) + int(doc.get("count") or 0)
    return used, seen

