"""The producer SDK: turn a fund's records into signed, pseudonymised signals, durably sent.

For a back-office that calls a library rather than exporting files::

    from services.producer.sdk import Publisher, SignalInput

    async with Publisher(settings, Fund.CAF) as pub:
        result = await pub.publish([SignalInput(nir="1 85 05 78 006 084 91", category="separation",
                                                observed_on="2026-10-02", departement="35",
                                                reference="DOS-2026-00042")])
        result.rejected   # [(index, Rejected)] — each with .reason (a Reason) and .field

What happens to each record, in order (:class:`SignalBuilder`): free-text guard on every
field; NIR validated and normalised (:mod:`.nir`); category checked against the taxonomy
(unknown, another fund's, or not NM → refused here: a SENS or MED category never leaves
the fund); date (not in the future, not older than 2 years: :mod:`services.core.dates`, the
rules the correlator applies too); département; file
reference; purpose (explicit or the category's first); legal basis (consent reference if
given, else L115-2-1 with the conditions the fund can attest, e.g. ``age_55_plus`` from
the NIR's birth year) and the L115-2-1 policy check; pseudonym (HMAC-SHA256 under the
newest active exchange key); sealed reference; deterministic signal id; Ed25519
signature over RFC 8785; validation of the final bytes against the contract model.

Then (:class:`Publisher`) the signal goes to the outbox (:mod:`.outbox`) and from there to
``help.signals.<fund>.v1`` (acks=all, key = pseudonym value, so one person's signals stay
in one partition); it is marked sent only once acknowledged. Idempotence of the Kafka
producer follows ``settings.enable_idempotence`` (the embedded broker refuses it);
exactly-once on the topic rests on the deterministic ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from services.core.codec import append_signature, canonical, splice_signature
from services.core.dates import DateLimits, date_reason, limits_on
from services.core.dates import today_paris as today_paris  # re-exported: callers judge by the SDK's day
from services.core.messages import LegalBasisConsent, LegalBasisLaw, SealedSignal, Signal
from services.core.policy import check_signal, conditions_met
from services.core.reasons import Reason
from services.core.registry import load_registry
from services.core.signal_seal import seal_message
from services.core.signing import ALG, b64u, signing_function
from services.core.types import (
    CONSENT_REF_PATTERN,
    DEPARTEMENT_PATTERN,
    Fund,
    Purpose,
    format_timestamp,
)
from services.errors import BrokerError, BrokerUnreachable, HelpExchangeError, Rejected
from services.platform.batch_producer import BatchProducer, Delivered
from services.platform.partitioning import murmur2
from services.platform.settings import Settings
from services.platform.topics import signal_topic
from services.producer import nir as nirs
from services.producer.keys import load_fund_secrets, registry_path, signing_key_warning
from services.producer.nir import F_NIR
from services.producer.outbox import Outbox, Pending, Row
from services.producer.pseudonym import source_for
from services.producer.seal import F_REF, REFERENCE_PATTERN, Sealer, SignalIds
from services.producer.signal_keys import SignalKeyClient

SEND_BATCH = 2000
_R = TypeVar("_R")
#: Largest record batch the producer sends: the ``max.message.bytes`` of the funds' topics
#: (signals, consents, reveals) in ``schemas/asyncapi.yaml``, which in Kafka bounds a whole
#: batch, not one message; a bigger batch would be refused by Apache Kafka
#: (``tests/contract/test_contract_agreement.py`` keeps the two equal).
MAX_BATCH_BYTES = 64 * 1024

# Field names, as the extract files name their columns (and the reject report reports them);
# the NIR's is services.producer.nir.F_NIR, the file reference's services.producer.seal.F_REF.
F_CATEGORY = "categorie"
F_DATE = "date_observation"
F_DEPT = "departement"
F_CONSENT = "consentement"
F_PURPOSE = "finalite"

_DATE_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DATE_FR = re.compile(r"^(\d{2})/(\d{2})/(\d{4})$")
_DEPT = re.compile(DEPARTEMENT_PATTERN)
_CONSENT = re.compile(CONSENT_REF_PATTERN)
# Free text: two words of letters, any character outside printable ASCII, or a long value.
_GAP = r"[\s,;:!?'\"]"
_WORDS = re.compile(rf"[^\W\d_]{{2,}}{_GAP}+[^\W\d_]{{2,}}")
#: what every match of _WORDS holds: most lines have none, and this search costs far less
_WORD_GAP = re.compile(_GAP)
MAX_FIELD = 64
_FIELDS = (F_NIR, F_CATEGORY, F_DEPT, F_REF, F_CONSENT, F_PURPOSE, F_DATE)
_JOINED_MAX = 7 * MAX_FIELD


class SignalInput(NamedTuple):
    """One record as a back-office has it. Strings as exported; ``observed_on`` may be a date.

    (A named tuple: a file's every line makes one, and a tuple is made several times faster
    than a frozen dataclass.)"""

    nir: str
    category: str
    observed_on: dt.date | str
    departement: str
    reference: str
    consent_ref: str | None = None
    purpose: str | None = None


def parse_date(text: str) -> dt.date:
    """``AAAA-MM-JJ`` or ``JJ/MM/AAAA``; :class:`ValueError` otherwise."""
    text = text.strip()
    if m := _DATE_ISO.fullmatch(text):
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    if m := _DATE_FR.fullmatch(text):
        return dt.date(int(m[3]), int(m[2]), int(m[1]))
    raise ValueError(text)


def is_free_text(value: str) -> bool:
    """True for a value that carries words, not a code: names, comments, notes."""
    return (len(value) > MAX_FIELD or not (value.isascii() and value.isprintable())
            or bool(_WORDS.search(value)))


class SignalBuilder:
    """Validates records and builds signed signal bytes for one fund (pure CPU, no I/O)."""

    def __init__(self, settings: Settings, fund: Fund) -> None:
        self.fund = fund
        self._fund = fund.value
        self.taxonomy = settings.taxonomy
        self.policy = settings.policy
        secrets = load_fund_secrets(settings.key_dir, fund)
        registry = load_registry(registry_path(settings.key_dir))
        self._pseudonyms = source_for(settings, fund, registry)
        #: True when pseudonyms come from the pseudonymisation service (scheme v2): asking
        #: costs a round trip and the fund's side of the VOPRF, worth overlapping.
        self.remote_pseudonyms = settings.pseudonym_scheme == "v2"
        self._signing_key = secrets.signing_key
        self._sign = signing_function(secrets.signing_key)
        self.signing_key_id = secrets.signing_key_id
        #: Why the exchange would refuse what this key signs, per the local registry copy
        #: (not listed, or retired); None when it is active there.
        self.key_warning = signing_key_warning(registry, fund, secrets.signing_key_id)
        self._sealer = Sealer(fund, secrets.sealing_key_id, secrets.sealing_keys[secrets.sealing_key_id])
        self._ids = SignalIds(fund, secrets.id_root)
        self._conditions_cache: dict[tuple[Purpose, int], tuple[str, ...]] = {}
        self._policy_cache: dict[tuple[str, Purpose, tuple[str, ...] | None], Reason | None] = {}
        self._stamp: tuple[dt.datetime | None, str] = (None, "")
        self._limits: DateLimits | None = None
        self._topic = signal_topic(fund)
        #: Where the keys that seal each signal's person members come from (contract §2.1,
        #: the exchange's key endpoint); None: signals in clear (HELP_SIGNAL_SEALING=accepted).
        self.signal_keys: SignalKeyClient | None = (
            SignalKeyClient.from_settings(settings, fund) if settings.signal_sealing == "required" else None)
        self._key_thread: ThreadPoolExecutor | None = None

    def check(self, rec: SignalInput, today: dt.date) -> tuple[str, Any, dt.date, str, Purpose, dict[str, Any]]:
        """Validate ``rec``: (nir, category, date, departement, purpose, legal basis), or raise."""
        values = (rec.nir, rec.category, rec.departement, rec.reference, rec.consent_ref or "",
                  rec.purpose or "", rec.observed_on if isinstance(rec.observed_on, str) else "")
        joined = "\x00".join(values)
        # One pass over every field; only a failure looks field by field (for the report).
        if (len(joined) > _JOINED_MAX or not joined.isascii() or not joined.replace("\x00", "").isprintable()
                or (_WORD_GAP.search(joined) and _WORDS.search(joined)) or max(map(len, values)) > MAX_FIELD):
            for name, value in zip(_FIELDS, values, strict=True):
                if is_free_text(value):
                    raise Rejected(Reason.TEXTE_LIBRE, name)
        nir = nirs.normalise(rec.nir)  # or Rejected (field nir)

        code = rec.category.strip()
        cat = self.taxonomy.category(code)
        if cat is None:
            raise Rejected(Reason.CATEGORIE_INCONNUE, F_CATEGORY)
        if cat.fund is not self.fund:
            raise Rejected(Reason.CATEGORIE_AUTRE_ORGANISME, F_CATEGORY)
        if not cat.exchangeable or not self.policy.classes[cat.classe].exchangeable:
            raise Rejected(Reason.CATEGORIE_MEDICALE, F_CATEGORY)

        if isinstance(rec.observed_on, dt.date):
            observed = rec.observed_on
        else:
            try:
                observed = parse_date(rec.observed_on)
            except ValueError:
                raise Rejected(Reason.DATE_INVALIDE, F_DATE) from None
        limits = self._limits
        if limits is None or limits.today != today:
            limits = self._limits = limits_on(today)
        # The correlator applies the same function (services.core.dates.signal_dates).
        if (refused_date := date_reason(observed, limits)) is not None:
            raise Rejected(refused_date, F_DATE)

        dept = rec.departement.strip().upper()
        if len(dept) == 1 and dept.isdigit():
            dept = "0" + dept
        if not _DEPT.fullmatch(dept):
            raise Rejected(Reason.DEPARTEMENT_INVALIDE, F_DEPT)
        if not REFERENCE_PATTERN.fullmatch(rec.reference.strip()):
            raise Rejected(Reason.REFERENCE_INVALIDE, F_REF)

        if rec.purpose and rec.purpose.strip():
            try:
                purpose = Purpose(rec.purpose.strip())
            except ValueError:
                raise Rejected(Reason.FINALITE_NON_AUTORISEE, F_PURPOSE) from None
        else:
            purpose = cat.purposes[0]

        consent = (rec.consent_ref or "").strip()
        if consent:
            if not _CONSENT.fullmatch(consent):
                raise Rejected(Reason.BASE_LEGALE_INVALIDE, F_CONSENT)
            refused = self._policy_check(code, purpose, None)
            basis: dict[str, Any] = {"code": "consentement", "consent_ref": consent}
        else:
            conditions = self._conditions(purpose, nirs.age_on(nir, today))
            refused = self._policy_check(code, purpose, conditions)
            basis = {"code": "L115-2-1", "conditions": list(conditions)}
        if refused is not None:
            raise Rejected(refused, F_CONSENT if consent else F_PURPOSE)
        return nir, code, observed, dept, purpose, basis

    def _conditions(self, purpose: Purpose, age: int) -> tuple[str, ...]:
        key = (purpose, age)
        found = self._conditions_cache.get(key)
        if found is None:
            found = self._conditions_cache[key] = conditions_met(self.policy, purpose, age=age)
        return found

    def _policy_check(self, code: str, purpose: Purpose, conditions: tuple[str, ...] | None) -> Reason | None:
        """:func:`services.core.policy.check_signal`, memoised (its inputs take few values).

        ``conditions`` None: the consent route. The fund attests the consent it holds; the
        correlator checks that it is on record."""
        key = (code, purpose, conditions)
        if key not in self._policy_cache:
            model: LegalBasisLaw | LegalBasisConsent = (
                LegalBasisConsent(code="consentement", consent_ref="CONSENT-CHECK") if conditions is None
                else LegalBasisLaw(code="L115-2-1", conditions=list(conditions)))
            self._policy_cache[key] = check_signal(self.policy, self.taxonomy, fund=self.fund, category=code,
                                                   purpose=purpose, legal_basis=model, consent_on_record=True)
        return self._policy_cache[key]

    def prefetch(self, records: Iterable[SignalInput]) -> None:
        """Ask for the pseudonyms of ``records`` in one go (scheme v2: one batch to the
        service per call; v1: nothing), then for their sealing keys (one batch to the key
        endpoint). Records whose NIR is invalid are left to :meth:`build`."""
        valid = list(nirs.valid_normalised(rec.nir for rec in records))
        self._pseudonyms.prefetch(valid)
        self._prefetch_keys(valid)

    def ask(self, records: Iterable[SignalInput]) -> Any:
        """:meth:`prefetch` without waiting: the services work on these while the caller
        builds others; :meth:`collect` (before building these) waits and checks the proofs.
        With pseudonyms made here (scheme v1), the sealing keys are asked at once too, in a
        thread of their own; under v2 once the pseudonyms are known, in :meth:`collect`."""
        valid = list(nirs.valid_normalised(rec.nir for rec in records))
        keys: Future[None] | None = None
        if self.signal_keys is not None and valid and not self.remote_pseudonyms:
            if self._key_thread is None:
                self._key_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="signal-keys")
            values = [self._pseudonyms.pseudonym(n)["value"] for n in valid]
            keys = self._key_thread.submit(self.signal_keys.prefetch, values)
        return self._pseudonyms.ask(valid), valid, keys

    def collect(self, asked: Any) -> None:
        pending, valid, keys = asked
        self._pseudonyms.collect(pending)
        if keys is not None:
            keys.result()
        else:
            self._prefetch_keys(valid)

    def _prefetch_keys(self, valid_nirs: list[str]) -> None:
        if self.signal_keys is not None and valid_nirs:
            self.signal_keys.prefetch(self._pseudonyms.pseudonym(n)["value"] for n in valid_nirs)

    def build(self, rec: SignalInput, *, today: dt.date | None = None,
              now: dt.datetime | None = None, partitions: int | None = None) -> Row:
        """The outbox row of ``rec`` (signed signal bytes), or :class:`Rejected`.

        ``partitions``: the topic's partition count, to compute the partition here exactly as
        Kafka's default partitioner does (murmur2 of the key, equal to aiokafka's);
        this part can run in worker processes.

        The fast path of :meth:`build_reference`, byte for byte (``tests/producer/
        test_build_fast_path.py``): every member is a string :meth:`check` has proved ASCII
        (or a code of the taxonomy, the policy or the contract), so the message is plain JSON
        and its canonical form is orjson's; libsodium signs; and the final bytes are not parsed
        back into the contract model, which the reference does and the property test proves
        they would pass."""
        return self._build(rec, today, now, partitions, reference=False)

    def build_reference(self, rec: SignalInput, *, today: dt.date | None = None,
                        now: dt.datetime | None = None, partitions: int | None = None) -> Row:
        """:meth:`build` the obviously-right way: the plainness of the message checked,
        ``cryptography``'s Ed25519, and the final bytes validated against the contract model
        (:class:`Rejected` ``schema_invalide`` — a bug, never bad input — if they do not pass)."""
        return self._build(rec, today, now, partitions, reference=True)

    def _build(self, rec: SignalInput, today: dt.date | None, now: dt.datetime | None,
               partitions: int | None, *, reference: bool) -> Row:
        today = today or today_paris()
        nir, code, observed, dept, purpose, basis = self.check(rec, today)
        reference_text = rec.reference.strip()
        pseudo = self._pseudonyms.pseudonym(nir)
        signal_id = self._ids.signal_id(reference_text, code, observed)
        now = now or dt.datetime.now(dt.UTC)
        if now != self._stamp[0]:
            self._stamp = (now, format_timestamp(now))
        message: dict[str, Any] = {
            "signal_id": signal_id,
            "schema_version": "1.0",
            "fund": self._fund,
            "emitter": f"{self._fund}-{dept.lower()}",
            "category": code,
            "observed_on": observed.isoformat(),
            "emitted_at": self._stamp[1],
            "territory": dept,
            "pseudonym": pseudo,
            "sealed_ref": self._sealer.seal(reference_text, pseudo),
            "legal_basis": basis,
            "purpose": purpose.value,
        }
        link = self._pseudonyms.previous(nir)
        if link is not None:  # a rotation or migration window (contract §4.3), signed with the rest
            message["pseudonym_previous"] = link
        packed: bytes | None = None
        if self.signal_keys is not None:  # the person members sealed (contract §2.1), then signed
            fund_key = self.signal_keys.key(pseudo["value"])
            message = seal_message(fund_key.key, self._topic, fund_key.subject, fund_key.epoch, message)
            packed = fund_key.pack()
        value = self.signed(message, reference=reference)
        key = pseudo["value"].encode("ascii")
        partition = (murmur2(key) & 0x7FFFFFFF) % partitions if partitions else None
        return Row(signal_id, observed.isoformat(), key, value, partition, packed)

    def signed(self, message: dict[str, Any], *, reference: bool = False) -> bytes:
        """The wire bytes of ``message`` (a signal, clear or sealed, without its signature):
        Ed25519 over the RFC 8785 form (what services.core.signing.sign signs), and the wire
        form is that form with the signature member in its sorted place (last in a sealed
        signal, before ``territory`` in a clear one)."""
        sealed = "sealed" in message
        if reference:
            unsigned = canonical(message)
            signature = b64u(self._signing_key.sign(unsigned))
        else:
            unsigned = canonical(message, plain=True)
            signature = b64u(self._sign(unsigned))
        try:
            value = (append_signature if sealed else splice_signature)(unsigned, ALG, self.signing_key_id, signature)
        except ValueError:  # pragma: no cover - every signal has a territory or is sealed
            raise Rejected(Reason.SCHEMA_INVALIDE, "signal") from None
        if reference:
            try:
                (SealedSignal if sealed else Signal).model_validate_json(value)
            except ValidationError:  # a bug here, not bad input: never send it
                raise Rejected(Reason.SCHEMA_INVALIDE, "signal") from None
        return value


async def read_to_end(cons: AIOKafkaConsumer, ends: dict[TopicPartition, int],
                       *, idle_ms: int = 500, limit_s: float = 120.0) -> AsyncIterator[list[ConsumerRecord[Any, Any]]]:
    """Yield fetched records until every partition is past ``ends`` *and* a fetch comes back
    empty. Why both: the embedded broker (Tansu 0.6) reports as end offset the base offset
    of the last record batch + 1, not the true end, so the reported ends are only a floor."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        batch = await cons.getmany(timeout_ms=idle_ms)
        records = [rec for recs in batch.values() for rec in recs]
        if records:
            yield records
            continue
        positions = [await cons.position(tp) for tp in ends]
        if all(pos >= end for pos, end in zip(positions, ends.values(), strict=True)):
            return
        if loop.time() > deadline:
            raise BrokerUnreachable(f"could not read {next(iter(ends)).topic} to its end within {limit_s:.0f} s",
                                    "check the broker, then run the command again")


@dataclass
class PublishResult:
    """What :meth:`Publisher.publish` did."""

    staged: int = 0          # new signals written to the outbox
    already_known: int = 0   # same signal id already in the outbox (re-run)
    sent: int = 0            # acknowledged by the broker during this call
    rejected: list[tuple[int, Rejected]] = field(default_factory=list)


class Publisher:
    """Builds signals, keeps them in the outbox and sends them (see the module docstring).

    ``connect()`` returns False, instead of raising, when no broker answers: signals are
    still built and kept in the outbox, to be sent by a later ``flush``."""

    def __init__(self, settings: Settings, fund: Fund, *, builder: SignalBuilder | None = None,
                 topic: str | None = None, outbox_path: Path | None = None) -> None:
        """``topic`` and ``outbox_path`` (default: the fund's signal topic and outbox) let the
        fund's other messages (consents, reveals) go the same way, each with an outbox of its
        own so that ``outbox status`` counts only signals."""
        self.settings = settings
        self.fund = fund
        self.topic = topic or signal_topic(fund)
        #: Signals keep their bytes after sending, until their receipt (``receipts`` reconciles);
        #: the fund's other messages (consents, reveals) have none to wait for.
        self.keep_payload = topic is None or topic == signal_topic(fund)
        self.builder = builder or SignalBuilder(settings, fund)
        keep = settings.outbox_keep_sent_days
        self.outbox = (Outbox(outbox_path, keep_sent_days=keep) if outbox_path
                       else Outbox.for_fund(settings.var_dir, fund, keep_sent_days=keep))
        self._producer: BatchProducer | None = None
        self._bootstrap: str | None = None
        self._recovered = False
        self._inflight: asyncio.Task[int] | None = None
        #: "sent" marks handed to the writing thread and not yet committed, in sending order
        self._marks: list[asyncio.Future[None]] = []
        #: partitions of the fund's topic once connected (signals can then be built with theirs)
        self.partitions: int | None = None
        #: signals acknowledged by the broker since this publisher was made
        self.sent_total = 0
        #: rows this publisher wrote to the outbox that were new there
        self.staged_total = 0
        self.offline_reason: str | None = None
        #: The outbox's writes while sending (staging a batch, marking one sent), one at a
        #: time in a thread of their own: SQLite lets go of the GIL while it writes, so the
        #: event loop meanwhile takes built signals and serves delivery reports.
        self._writer: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> Publisher:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def online(self) -> bool:
        return self._producer is not None

    async def connect(self) -> bool:
        from services.platform.broker import resolve_bootstrap

        try:
            self._bootstrap = await asyncio.to_thread(resolve_bootstrap, self.settings, announce=True)
            prod = BatchProducer(self.settings, self._bootstrap, linger_ms=10, max_batch_bytes=MAX_BATCH_BYTES)
            await prod.start()
        except (HelpExchangeError, OSError) as exc:
            self.offline_reason = exc.what if isinstance(exc, HelpExchangeError) else str(exc)
            return False
        self._producer = prod
        self.partitions = await prod.partitions_for(self.topic)
        return True

    async def close(self) -> None:
        if self._inflight is not None or self._marks:
            with contextlib.suppress(BrokerUnreachable):
                await self.drain()
        if self._producer is not None:
            prod, self._producer = self._producer, None
            await prod.stop(timeout_s=10)
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        self.outbox.close()

    def stage(self, rows: list[Row]) -> int:
        """Write built signals to the outbox; returns how many were new."""
        new = self.outbox.add(rows)
        self.staged_total += new
        return new

    async def _write(self, fn: Callable[..., _R], *args: Any) -> _R:
        """``fn(*args)`` (an outbox write) in the publisher's writing thread."""
        if self._writer is None:  # made at the first send: `publish` forks its workers before
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def flush(self, *, batch: int = SEND_BATCH, progress: Callable[[int], None] | None = None) -> int:
        """Send every pending signal; returns how many the broker acknowledged.

        ``progress`` is told how many were acknowledged after each batch. Raises
        :class:`BrokerUnreachable` if sending fails: what was not acknowledged stays."""
        if self._producer is None:
            raise BrokerUnreachable(f"not connected to Kafka ({self.offline_reason or 'no broker'})",
                                    f"start the broker, then `help-exchange outbox flush --fund {self.fund.value}`")
        if not self._recovered:
            await self._recover()
            self._recovered = True
        sent = 0
        after = 0
        while rows := self.outbox.pending(batch, after):
            after = rows[-1].seq
            sent += await self._send(rows)
            if progress is not None:
                progress(sent)
        return sent

    async def submit(self, rows: list[Row]) -> int:
        """Stage ``rows`` in the outbox and start sending the new ones in the background.

        Returns how many were new. At most one batch is in flight: the new rows are staged
        while the previous batch is still being sent, and they leave once it is acknowledged
        (this raises :class:`BrokerUnreachable` if it failed; ``rows`` are staged all the
        same). The batches' "sent" marks are committed in sending order, one thread writing
        them in turn — which the crash recovery relies on — while the next batch goes out.
        Call :meth:`drain` at the end. Offline, rows are only staged."""
        if not rows or not self.online:
            await self.drain()
            return self.stage(rows) if rows else 0
        if not self._recovered:
            await self.drain()
            await self.flush()  # recover, and send what earlier runs left waiting
        staging = asyncio.ensure_future(self._write(self.outbox.add_new, rows))
        try:
            await self._acknowledged()
        except BaseException:
            # The outbox idle before the caller touches it again (it stages what failed).
            staged, _ = await asyncio.gather(staging, self._marked(), return_exceptions=True)
            if isinstance(staged, list):
                self.staged_total += len(staged)
            raise
        fresh = await staging
        self.staged_total += len(fresh)
        if fresh:
            self._inflight = asyncio.create_task(self._send(fresh, wait_mark=False))
        return len(fresh)

    async def drain(self) -> None:
        """Wait for the batch in flight, if any (raises if it could not be sent), and for
        every "sent" mark to be committed."""
        try:
            await self._acknowledged()
        finally:
            await self._marked()

    async def _acknowledged(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def _marked(self) -> None:
        marks, self._marks = self._marks, []
        for outcome in await asyncio.gather(*marks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _send(self, rows: Sequence[Row | Pending], *, wait_mark: bool = True) -> int:
        """Send ``rows``; mark the acknowledged ones sent (``wait_mark`` False: the mark is
        only handed to the writing thread, :meth:`drain` waits for it)."""
        assert self._producer is not None
        results = await self._producer.send(self.topic, rows)
        error: BaseException | None = None
        ok: list[str] = []
        where: list[tuple[int, int]] = []
        marks: dict[int, int] = {}
        for row, res in zip(rows, results, strict=True):
            if not isinstance(res, Delivered):
                error = error or res
                continue
            ok.append(row.signal_id)
            where.append((res.partition, res.offset))
            if res.offset > marks.get(res.partition, -1):
                marks[res.partition] = res.offset
        if ok:
            self._marks.append(asyncio.ensure_future(self._write(functools.partial(
                self.outbox.mark_sent, ok, self.topic, marks, where, keep_payload=self.keep_payload))))
            self.sent_total += len(ok)
            if wait_mark:
                await self._marked()
        if error is not None:
            raise BrokerUnreachable(
                f"the broker did not acknowledge {len(rows) - len(ok)} signals: {error!r}",
                f"they wait in the outbox; `help-exchange outbox flush --fund {self.fund.value}` sends them",
            )
        return len(ok)

    async def _recover(self) -> None:
        """Mark as sent what a killed run had sent but not yet marked (see :mod:`.outbox`),
        and set the partition marks of this topic to its current end.

        The topic is read only when the outbox holds pending rows (a run killed mid-send,
        a broker that stopped answering); otherwise the partitions without a mark get the
        broker's end offsets as their baseline, without reading a record."""
        from services.platform.kafka import UNREACHABLE, consumer, kafka_errors

        assert self._bootstrap is not None
        marks = self.outbox.partition_marks(self.topic)
        # Only a pending row can have been sent without its mark: with none, there is nothing
        # to look for on the topic, and a partition that has a mark needs nothing either.
        settled = not self.outbox.has_pending()
        if settled and self.partitions is not None and all(p in marks for p in range(self.partitions)):
            return
        cons = consumer(self.settings, self._bootstrap, group_id=None, enable_auto_commit=False)
        try:
            with kafka_errors(f"cannot read {self.topic} to resume: {{error!r}}",
                              "check the broker, then run the command again", UNREACHABLE):
                await cons.start()
                parts = cons.partitions_for_topic(self.topic) or set()
                if not parts:
                    await cons.force_metadata_update()
                    parts = cons.partitions_for_topic(self.topic) or set()
                tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
                if not tps:
                    return
                ends: dict[TopicPartition, int] = await cons.end_offsets(tps)
                if settled:
                    # The baseline of the partitions without a mark: the end the broker reports
                    # (a floor on the embedded broker: a later recovery then reads a little more,
                    # never less than it must).
                    self.outbox.set_baseline(self.topic, {tp.partition: end for tp, end in ends.items()
                                                          if tp.partition not in marks})
                    return
                # Start after our mark; without one (first run), at the last record the broker
                # reports, so that the new mark lands on the true end.
                start = {tp: marks[tp.partition] + 1 if tp.partition in marks else max(ends[tp] - 1, 0)
                         for tp in tps}
                cons.assign(tps)
                for tp in tps:
                    cons.seek(tp, start[tp])
                found: dict[str, tuple[int, int]] = {}
                last = {tp: start[tp] - 1 for tp in tps}
                async for records in read_to_end(cons, ends):
                    for rec in records:
                        last[TopicPartition(rec.topic, rec.partition)] = rec.offset
                        try:
                            found[str(json.loads(rec.value or b"{}")["signal_id"])] = (rec.partition, rec.offset)
                        except (ValueError, KeyError, TypeError):
                            continue
                self.outbox.mark_sent(list(found), self.topic,
                                      {tp.partition: last[tp] for tp in tps if last[tp] >= 0}, list(found.values()),
                                      keep_payload=self.keep_payload)
        finally:
            await cons.stop()

    async def publish(self, records: Iterable[SignalInput]) -> PublishResult:
        """Build, stage and (if connected) send ``records``; rejected ones are returned.

        Raises :class:`BrokerUnreachable` if the broker stops acknowledging: what was not
        acknowledged stays in the outbox for a later :meth:`flush`."""
        result = PublishResult()
        rows: list[Row] = []
        built = 0
        today = today_paris()
        source = iter(records)
        i = 0
        while chunk := list(itertools.islice(source, SEND_BATCH)):
            self.builder.prefetch(chunk)  # scheme v2: one batch to the service per send batch
            for rec in chunk:
                try:
                    rows.append(self.builder.build(rec, today=today, partitions=self.partitions))
                    built += 1
                except Rejected as exc:
                    result.rejected.append((i, exc))
                i += 1
            if len(rows) >= SEND_BATCH:
                result.staged += await self.submit(rows)
                rows = []
        result.staged += await self.submit(rows)
        await self.drain()
        result.already_known = built - result.staged
        result.sent = self.sent_total
        return result


@dataclass
class Resent:
    """What :func:`resend_outbox` did: signals put back (``queued``), acknowledged again
    (``sent``), still waiting, and why the broker failed (or None)."""

    queued: int
    sent: int
    left: int
    error: str | None


async def resend_outbox(pub: Publisher, since: dt.datetime,
                        progress: Callable[[int, int], None] | None = None) -> Resent:
    """Send again what ``pub``'s outbox sent at or after ``since`` and still holds (see
    :meth:`Outbox.resend_since`): for a broker that lost messages it had acknowledged.

    Connects first, and puts nothing back when no broker answers (the rows stay as they
    were: sent). ``progress(done, total)`` after each batch. Always closes the publisher."""
    try:
        if not await pub.connect():
            return Resent(0, 0, pub.outbox.pending_count(), pub.offline_reason)
        # Before the first send, the publisher recovers from the topic's partition marks, which
        # resend_since forgets (they named the lost broker's offsets): new ones are taken from
        # the new broker's end.
        queued = pub.outbox.resend_since(pub.topic, since)
        total = pub.outbox.pending_count()
        try:
            await pub.flush(progress=None if progress is None else (lambda done: progress(done, total)))
        except BrokerError as exc:
            return Resent(queued, pub.sent_total, pub.outbox.pending_count(), exc.what)
        return Resent(queued, pub.sent_total, pub.outbox.pending_count(), None)
    finally:
        await pub.close()


async def flush_outbox(pub: Publisher) -> tuple[int, int, str | None]:
    """Send what waits in ``pub``'s outbox: (sent, still waiting, why the broker failed or None).

    Always closes the publisher. Used by ``outbox flush`` and ``consent flush``."""
    try:
        if not await pub.connect():
            return 0, pub.outbox.pending_count(), pub.offline_reason
        try:
            await pub.flush()
        except BrokerError as exc:
            return pub.sent_total, pub.outbox.pending_count(), exc.what
        return pub.sent_total, pub.outbox.pending_count(), None
    finally:
        await pub.close()
