"""The checks of a consumed message that need no person state.

In order, the first failure decides the reason code: size → JSON (no duplicate member
names) → schema version → fund known → fund owns the topic (consents: any fund) → signing
key of that fund → Ed25519 signature over the RFC 8785 form of the *received* object →
for a signal, the schema (the :class:`~services.core.messages.Signal` model) → pseudonym
key accepted; and the partition the person belongs to. What follows (repartition, policy
with the consent on record, duplicates, state, rules) needs the person and stays in
:class:`~services.correlator.engine.Engine`; consents are parsed there too (they are few).

Split out because these checks are pure functions of the bytes, the source topic and the
key registry, and they are most of a signal's cost (the signature check above all): so they
can run in other processes beside the engine (:mod:`services.correlator.checkpool`) with
exactly the same answers, the same :class:`Checker` running there. A signal that passes
comes back as a :class:`CheckedSignal`, the validated values the engine needs, so the
engine does not parse it again.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from pydantic import ValidationError

from services.core import signing
from services.core.codec import DuplicateMember, load_json
from services.core.messages import SCHEMA_VERSION, ConsentEvent, LegalBasisLaw, SealedSignal, Signal, parse
from services.core.reasons import Reason
from services.core.registry import Registry
from services.core.types import SIGNAL_ID_PATTERN, Fund, Purpose
from services.correlator import canonical_signal
from services.platform.partitioning import partition_for
from services.platform.topics import CONSENTS_TOPIC, CONTRACT_PARTITIONS, fund_of_signal_topic

#: A signal is about 800 bytes; anything far above is refused before parsing.
MAX_MESSAGE_BYTES = 16 * 1024

_SIGNAL_ID = re.compile(SIGNAL_ID_PATTERN)


# Field names of the contract: the only words a dead letter's detail may echo.
_KNOWN_FIELDS = frozenset(
    name for model in (Signal, SealedSignal, ConsentEvent) for name in model.model_fields
) | {"key_id", "value", "alg", "code", "conditions", "consent_ref", "subject", "epoch"}


def _pointer(loc: Iterable[object]) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(str(p))
        elif isinstance(p, str) and p in _KNOWN_FIELDS:
            parts.append(p)
        else:
            parts.append("*")  # never echo a name the sender chose
    return "/" + "/".join(parts)


def schema_detail(exc: ValidationError) -> str:
    """A dead letter's detail for a schema error: where and what kind, no input value."""
    first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    kind = "".join(c for c in str(first["type"]) if c.isalnum() or c == "_")[:60]
    return f"{_pointer(first['loc'])}:{kind}"[:300]


class CheckedSignal(NamedTuple):
    """The values of a signal that passed every stateless check, as the engine needs them
    (all taken from the validated :class:`~services.core.messages.Signal`)."""

    signal_id: str
    fund: Fund
    category: str
    purpose: Purpose
    observed_on: dt.date
    territory: str
    pseudonym: tuple[str, str]  # key_id, value
    sealed_ref: tuple[str, str]  # key_id, value
    legal_basis: str  # its code
    conditions: tuple[str, ...]  # attested L115-2-1 conditions (none under consent)
    #: The partition of the signal topics this person belongs to (murmur2 of the pseudonym).
    partition: int
    #: For the date rules, which the engine applies against its clock (services.core.dates).
    emitted_at: dt.datetime
    #: ``pseudonym_previous`` (key_id, value), checked against the registry; None: no link.
    previous: tuple[str, str] | None = None
    #: A sealed signal's ``sealed`` member (subject, epoch, value): the engine opens it with
    #: the person's key and fills ``category``, ``observed_on``, ``territory`` and
    #: ``sealed_ref`` (empty until then); None: a signal in clear.
    sealed: tuple[str, int, str] | None = None


#: What a sealed signal's person members are until the engine opens them.
UNOPENED_DATE = dt.date(1, 1, 1)
#: The largest epoch of a signal's sealing key (``SealedMembers.epoch``).
EPOCH_MAX = 4_294_967_295


def checked_sealed(signal: SealedSignal, partitions: int) -> CheckedSignal:
    basis = signal.legal_basis
    sealed = signal.sealed
    return CheckedSignal(
        signal.signal_id, signal.fund, "", signal.purpose, UNOPENED_DATE, "",
        (signal.pseudonym.key_id, signal.pseudonym.value), ("", ""), basis.code,
        tuple(basis.conditions) if isinstance(basis, LegalBasisLaw) else (),
        partition_for(signal.pseudonym.value, partitions), signal.emitted_at,
        None if signal.pseudonym_previous is None
        else (signal.pseudonym_previous.key_id, signal.pseudonym_previous.value),
        (sealed.subject, sealed.epoch, sealed.value))


def checked(signal: Signal, partitions: int) -> CheckedSignal:
    basis = signal.legal_basis
    return CheckedSignal(
        signal.signal_id, signal.fund, signal.category, signal.purpose, signal.observed_on,
        signal.territory, (signal.pseudonym.key_id, signal.pseudonym.value),
        (signal.sealed_ref.key_id, signal.sealed_ref.value), basis.code,
        tuple(basis.conditions) if isinstance(basis, LegalBasisLaw) else (),
        partition_for(signal.pseudonym.value, partitions), signal.emitted_at,
        None if signal.pseudonym_previous is None
        else (signal.pseudonym_previous.key_id, signal.pseudonym_previous.value))


class Verdict(NamedTuple):
    """What the checks say of one message.

    ``reason`` None: every check passed, and ``signal`` holds the signal's values (None for a
    consent, which the engine parses itself). ``receipt_fund``: the fund the receipt goes to,
    if one is known (the topic's owner; for a consent, its fund); ``signal_id``: the
    message's id when it is a well-formed one, for the receipt."""

    receipt_fund: Fund | None
    signal_id: str | None
    reason: Reason | None
    detail: str = ""
    signal: CheckedSignal | None = None


class Checker:
    """Applies the checks with the keys of one registry (keys decoded once, then cached)."""

    def __init__(self, registry: Registry, partitions: int = CONTRACT_PARTITIONS, *, fast: bool = True) -> None:
        self.registry = registry
        self.partitions = partitions
        #: False: every message through the general checks, never the fast path for signals
        #: in canonical form (:meth:`_canonical`), which must give the same verdicts.
        self.fast = fast
        self._keys: dict[tuple[Fund, str], signing.VerifyingKey] = {}
        self._owners: dict[str, Fund | None] = {}
        self._accepted = registry.accepted_exchange_keys()

    def use(self, registry: Registry) -> None:
        """Check with ``registry`` from now on (a reloaded registry: the key cache is emptied)."""
        self.registry = registry
        self._keys = {}
        self._accepted = registry.accepted_exchange_keys()

    def signing_key(self, fund: Fund, key_id: str) -> signing.VerifyingKey | None:
        k = (fund, key_id)
        cached = self._keys.get(k)
        if cached is None:
            key = self.registry.signing_key(fund, key_id)
            if key is None:
                # Not cached: key ids come from the records, so caching the misses would let
                # anyone who can write a topic grow the worker's memory with made-up ids.
                return None
            cached = self._keys[k] = signing.VerifyingKey(key)
        return cached

    def owner(self, topic: str) -> Fund | None:
        if topic not in self._owners:
            if len(self._owners) > 1000:  # topics come from the broker: keep it bounded
                self._owners.clear()
            self._owners[topic] = fund_of_signal_topic(topic)
        return self._owners[topic]

    def check(self, value: bytes | None, source_topic: str) -> Verdict:
        """The verdict on ``value`` read (originally) from ``source_topic``."""
        is_consent = source_topic == CONSENTS_TOPIC
        owner = self.owner(source_topic)
        # Receipts for a signal go to the owner of the topic it was read from (the sender).
        receipt_fund: Fund | None = owner
        signal_id: str | None = None
        raw = value or b""
        if len(raw) > MAX_MESSAGE_BYTES:
            return Verdict(owner, None, Reason.MESSAGE_TROP_VOLUMINEUX, f"/:size_over_{MAX_MESSAGE_BYTES}")
        if self.fast and not is_consent and owner is not None:
            verdict = self._canonical(raw, owner)
            if verdict is not None:
                return verdict
        try:
            obj, plain = load_json(raw)
        except DuplicateMember:
            return Verdict(owner, None, Reason.JSON_INVALIDE, "/:duplicate_member_name")
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: nesting deeper than the interpreter's limit ("[[[[..." in
            # 16 KiB), which must be bad input like any other, never a worker crash.
            return Verdict(owner, None, Reason.JSON_INVALIDE, "/:json_syntax")
        if not isinstance(obj, dict):
            return Verdict(owner, None, Reason.SCHEMA_INVALIDE, "/:not_an_object")
        sid = obj.get("signal_id")
        # fullmatch: with re.match, "$" also matches before a final newline, and an id
        # ending in "\n" would then fail the Receipt model and crash the worker.
        if isinstance(sid, str) and _SIGNAL_ID.fullmatch(sid):
            signal_id = sid
        if "schema_version" not in obj:
            return Verdict(owner, signal_id, Reason.SCHEMA_INVALIDE, "/schema_version:missing")
        if obj["schema_version"] != SCHEMA_VERSION:
            return Verdict(owner, signal_id, Reason.VERSION_SCHEMA_INCONNUE, "/schema_version:unsupported")
        try:
            fund = Fund(str(obj.get("fund")))
        except ValueError:
            return Verdict(owner, signal_id, Reason.ORGANISME_INCONNU, "/fund:unknown")
        if is_consent:
            receipt_fund = fund
        elif owner is not fund:
            return Verdict(owner, signal_id, Reason.TOPIC_INCORRECT, "/fund:not_topic_owner")
        sig = obj.get("signature")
        key_id = sig.get("key_id") if isinstance(sig, dict) else None
        key = self.signing_key(fund, key_id) if isinstance(key_id, str) else None
        if key is None:
            if isinstance(key_id, str) and self.registry.signing_key_retired(fund, key_id):
                return Verdict(receipt_fund, signal_id, Reason.CLE_SIGNATURE_RETIREE,
                               "/signature/key_id:retired")
            return Verdict(receipt_fund, signal_id, Reason.CLE_SIGNATURE_INCONNUE,
                           "/signature/key_id:unknown_for_fund")
        if not signing.verify(obj, key, plain=plain):
            return Verdict(receipt_fund, signal_id, Reason.SIGNATURE_INVALIDE, "/signature/value:verify_failed")
        if is_consent:
            return Verdict(receipt_fund, signal_id, None)
        try:
            signal: Signal | SealedSignal = parse(SealedSignal, raw) if "sealed" in obj else parse(Signal, raw)
        except ValidationError as exc:
            return Verdict(receipt_fund, signal_id, Reason.SCHEMA_INVALIDE, schema_detail(exc))
        values = (checked_sealed(signal, self.partitions) if isinstance(signal, SealedSignal)
                  else checked(signal, self.partitions))
        return self._pseudonym_checks(receipt_fund, signal_id, values)

    def _pseudonym_checks(self, receipt_fund: Fund | None, signal_id: str | None,
                          values: CheckedSignal) -> Verdict:
        """The last checks of a signal valid against its schema: its pseudonym's key, its link."""
        key_id, value = values.pseudonym
        if key_id not in self._accepted:
            return Verdict(receipt_fund, signal_id, Reason.CLE_PSEUDONYME_REFUSEE,
                           "/pseudonym/key_id:not_accepted")
        link = values.previous
        if link is not None:
            refusal = self.registry.link_refusal(key_id, value, *link)
            if refusal is not None:
                return Verdict(receipt_fund, signal_id, *refusal)
        return Verdict(receipt_fund, signal_id, None, "", values)

    def _canonical(self, raw: bytes, owner: Fund) -> Verdict | None:
        """The verdict on a signal in canonical form, read by one pattern
        (:mod:`.canonical_signal`); None when the general checks must decide: the pattern
        does not match, or any check before the signature's would not pass (they then
        say why), or the schema's last tests (a real day, the emitter's fund, the epoch)."""
        if not raw.isascii():
            return None
        found = canonical_signal.match(raw.decode("ascii"))
        if found is None:
            return None
        fund = _FUNDS[found["fund"]]
        key = self.signing_key(fund, found["signature_key"]) if fund is owner else None
        if key is None or not found["emitter"].startswith(found["fund"] + "-"):
            return None
        sealed = found.re is canonical_signal.SEALED
        try:
            emitted_at = dt.datetime.fromisoformat(found["emitted_at"])
            observed_on = UNOPENED_DATE if sealed else dt.date.fromisoformat(found["observed_on"])
        except ValueError:  # a day the month has not: the model says so
            return None
        epoch = int(found["epoch"]) if sealed else 0
        if epoch > EPOCH_MAX:
            return None
        signal_id = found["signal_id"]
        try:
            key.verify(signing.b64u_decode(found["signature_value"]), canonical_signal.unsigned(raw, found))
        except (InvalidSignature, ValueError):
            return Verdict(owner, signal_id, Reason.SIGNATURE_INVALIDE, "/signature/value:verify_failed")
        pseudonym = (found["pseudonym_key"], found["pseudonym_value"])
        previous = None if found["previous_key"] is None else (found["previous_key"], found["previous_value"])
        basis = "L115-2-1" if found["law"] is not None else "consentement"
        purpose = _PURPOSES[found["purpose"]]
        partition = partition_for(pseudonym[1], self.partitions)
        if not sealed:
            values = CheckedSignal(
                signal_id, fund, found["category"], purpose, observed_on, found["territory"], pseudonym,
                (found["ref_key"], found["ref_value"]), basis, canonical_signal.conditions(found), partition,
                emitted_at, previous)
        else:
            values = CheckedSignal(
                signal_id, fund, "", purpose, UNOPENED_DATE, "", pseudonym, ("", ""), basis,
                canonical_signal.conditions(found), partition, emitted_at, previous,
                (found["subject"], epoch, found["sealed_value"]))
        return self._pseudonym_checks(owner, signal_id, values)


# ------------------------------------------------------------------ verdicts between processes
#: A verdict as plain values (str, int, date, tuples, None) for pickling between processes:
#: enums by their value, which is cheaper to pickle and to read back than the enum itself.
WireVerdict = tuple[Any, ...]

_FUNDS = {f.value: f for f in Fund}
_REASONS = {r.value: r for r in Reason}
_PURPOSES = {p.value: p for p in Purpose}


def to_plain(verdict: Verdict) -> WireVerdict:
    # ``_value_``, the member's value itself: ``.value`` is a property written in Python.
    fund, signal_id, reason, detail, signal = verdict
    head = (None if fund is None else fund._value_, signal_id,
            None if reason is None else reason._value_, detail)
    if signal is None:
        return head
    return (*head, signal.fund._value_, signal.purpose._value_, *signal[2:3], *signal[4:])


def from_plain(plain: WireVerdict) -> Verdict:
    # Built in one go (``_replace`` and star-unpacking cost as much as the rest): this runs
    # on the engine's thread for every record.
    fund, signal_id, reason, detail = plain[0], plain[1], plain[2], plain[3]
    receipt_fund = None if fund is None else _FUNDS[fund]
    code = None if reason is None else _REASONS[reason]
    if len(plain) == 4:
        return Verdict(receipt_fund, signal_id, code, detail)
    return Verdict(receipt_fund, signal_id, code, detail, CheckedSignal(
        signal_id, _FUNDS[plain[4]], plain[6], _PURPOSES[plain[5]], plain[7], plain[8], plain[9],
        plain[10], plain[11], plain[12], plain[13], plain[14], plain[15], plain[16]))
