"""The correlator's work on a batch of consumed records, without Kafka or Faust.

:class:`Engine` turns records (raw bytes and their source position) into outputs (receipts,
dead letters, situation events, forwards to the repartition topic) and person-state
writes, reading states through a callable. The Faust agent in :mod:`services.correlator.app`
only feeds it batches and sends what it returns; tests drive it directly.

Per signal, in this order (the first failure decides the reason code):
size → JSON → schema version → fund known → fund owns the topic → signing key → signature
over the *received* JSON object → schema → pseudonym key accepted → partition (repartition
if needed) → L115-2-1 policy (with the consent on record) → (redelivery) → dates
(:func:`services.core.dates.signal_dates`, against the batch's clock) → duplicate →
objection → consent withdrawn for the signal's purpose → state update and rules.
Consents: the same up to the signature, then schema, pseudonym key, partition,
``effective_at`` not in the future, state update. Everything up to the pseudonym key needs
no state: it is
:class:`~services.correlator.checks.Checker`, run through :class:`Checks` — inline, or in
helper processes (:mod:`services.correlator.checkpool`) while this engine does the rest;
the engine takes the verdicts in record order and the outputs do not depend on where the
checks ran (``tests/correlator/test_checkpool.py``).

The key registry: given a :class:`~services.correlator.registry_source.RegistrySource`, the
engine looks at the registry files at the start of every batch (a stat) and, when a signal
names a key id it does not know, again before refusing it; a changed registry that
verifies is handed to the checks (:meth:`Checks.update`: the check helpers take it before
their next request). So a key registered or retired while the worker runs is taken without
a restart; a registry whose signature does not verify is not (the last good one stays).

Key rotation (contract §4.3): a signal whose ``pseudonym_previous`` this person's state has
not followed yet moves the previous pseudonym's state to the new one — at once within a
partition; across partitions by a hand-over on the repartition topic (``help-transfer``:
``request`` to the previous pseudonym's partition, which leaves a pointer ``moved_to`` and
answers with the state; ``answer`` back, where the records that came meanwhile were parked
in the state and are then processed in order; ``done``, after which the pointer keeps
nothing but where the person went). Records that reach a pointer are forwarded with the
person key they now belong to (``help-rekey``). A chain (the previous pseudonym itself still
waiting for an older one) resolves in order: the waiting state keeps the request
(``successor``) and answers it once its own answer has come. What the parked records add up
to is noted per partition (:attr:`Engine.holds`): the worker pauses the partitions that hold
them past a bound (:mod:`services.correlator.holds`). Every step is idempotent against a record
read again after a crash between a batch's state writes and its outputs
(``tests/correlator/test_rotation.py``). The situation keeps its id; erasure and objection
reach both pseudonyms (:meth:`Engine._linked_erasures`).

Redelivery versus replay: a signal id already accepted *at the same source position* is a
redelivery after a crash that happened between the state write and the offset commit; the
engine answers exactly as the first time (accepted receipt with the same id, the situation's
latest event re-sent: the same event, sealed again under a fresh nonce when events are
sealed). The same signal id at another position is a replay: rejected as ``doublon``.

Sealing (given a :class:`Sealer`, the worker's key ring): besides the person states, the
situation events (:mod:`services.platform.sealed_situations`) and the records forwarded
to the repartition topic are sealed under the person's data key, so that an erasure, which
rotates it, leaves every earlier copy unreadable; a rotation that leaves a situation
publishes its latest event again under the new key (:meth:`Engine._rotate`).

Speed (measured with ``bench/correlator.py`` and a profile; every check stays on):

- the stateless checks (the larger part of a signal's cost, the Ed25519 check half of it)
  can run in other processes; a signal that passes comes back as the validated values the engine needs
  (:class:`~services.correlator.checks.CheckedSignal`), not parsed a second time; the
  L115-2-1 decision, a pure function of a few values, is remembered;
- the canonical form for the signature check is :func:`services.core.codec.canonical`
  (``orjson`` when it provably equals RFC 8785), the Ed25519 check is libsodium's with
  ``cryptography`` deciding whatever libsodium refuses (same acceptance, see
  :mod:`services.core.signing`), and the public keys are cached;
- accepted receipts, the bulk of the output, are written from a template
  (:class:`~services.core.codec.ReceiptWriter`) only for values the :class:`Receipt` model
  is known to accept, and byte-identical to ``to_wire(Receipt(...))`` (a property test
  checks it); the clock is read once per batch (``processed_at`` / ``received_at`` are the
  batch's time);
- person states decoded or written by this engine are kept (:class:`StateCache`) with the
  exact bytes they were read from or written as: a later read of the *same bytes* from the
  table reuses the model instead of re-validating it, any other bytes (a rebalance restored
  another worker's value, a restart) are validated as before; so no invalidation is needed;
- the step's models (signal entry, person state, situation event) are built from values
  already valid rather than validated again (:mod:`services.core.trusted`), what the rules
  take from a window is remembered by the set it depends on, and a state's bytes are written
  around its situation event's bytes (:meth:`Engine._state_bytes`); ``fast=False`` keeps the
  validating reference, equal byte for byte (``tests/correlator/test_fast_paths.py``);
- the partitioner's murmur2 is the ``murmurhash2`` package's (Rust)
  (:func:`~services.platform.partitioning.murmur2`), equal to Kafka's.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from pydantic import ValidationError, model_validator

from services.core import signal_seal
from services.core.codec import ReceiptWriter
from services.core.dates import consent_dates, limits_at, signal_dates
from services.core.keyed_digest import KeyedDigest
from services.core.messages import (
    ConsentEvent,
    DeadLetter,
    Frozen,
    Pseudonym,
    SealedRef,
    SituationEvent,
    SourcePosition,
    parse,
    to_wire,
)
from services.core.person import (
    Parked,
    PersonState,
    SignalEntry,
    apply_consent,
    consent_on_record,
    hand_over,
    merge_moved,
    new_person,
    purge_person,
    seen_source,
    situation_id_for,
    sweep_person,
)
from services.core.policy import check_exchange
from services.core.reasons import Reason
from services.core.registry import Registry
from services.core.rules import Context, on_signal
from services.core.trusted import trusted
from services.core.types import Date, EventId, Fund, Purpose, Timestamp
from services.correlator import deadletters
from services.correlator.checks import CheckedSignal, Checker, Verdict, schema_detail
from services.correlator.holds import Holds
from services.correlator.registry_source import RegistrySource
from services.errors import Rejected
from services.platform.datakeys import DIGESTED, SUBJECT_BYTES, envelope, is_sealed
from services.platform.partitioning import partition_for
from services.platform.sealed_situations import sealed_wire
from services.platform.topics import (
    CONTRACT_PARTITIONS,
    CUT_OFF_HEADER,
    DEADLETTER_TOPIC,
    ORIGIN_HEADER,
    ORIGIN_PURGE,
    SITUATIONS_TOPIC,
    TopicSpec,
    fund_of_signal_topic,
    receipt_topic,
)
from services.platform.tracking import Record as Record  # re-exported: the runtime builds them

#: Internal topic where a record read from the wrong partition is re-keyed (see Engine), and
#: where the retention purge sends its erasure commands (header ``H_ERASE``). Kept 7 days.
REPARTITION_TOPIC = "help-correlator-repartition"


def repartition_spec(partitions: int) -> TopicSpec:
    """The repartition topic, co-partitioned with the topics the worker reads."""
    return TopicSpec(REPARTITION_TOPIC, "correlator", partitions, 1, {"retention.ms": "604800000"})


H_TOPIC, H_PARTITION, H_OFFSET = "help-src-topic", "help-src-partition", "help-src-offset"
#: Header of an erasure command on the repartition topic: the retention purge
#: (services.app.purge, through services.correlator.erasure) reached a person. See
#: :meth:`Engine._erase` and :func:`erasure_command`.
H_ERASE = "help-erase"
#: Key rotation (contract §4.3, docs/keys.md): a hand-over of a person's state between the
#: partitions of its previous and its new pseudonym, on the repartition topic like the
#: erasure commands: ``request`` to the previous pseudonym's partition, ``answer`` back.
H_TRANSFER = "help-transfer"
#: On a record forwarded from a pseudonym whose state moved: the person key it now belongs to.
H_REKEY = "help-rekey"
#: Set by the engine itself (never read from the broker): a forward whose sealed value no
#: longer opens, its person's key destroyed since it was forwarded.
H_ERASED = "help-forward-erased"


class ErasureCommand(Frozen):
    """The value of an erasure command: whom it is about (the exchange writes it, no fund),
    and when the purge was issued: what the exchange received after that is not erased, so
    a command read again after a restart cannot erase signals that came after it (None, a
    command of an earlier version: everything).

    Whom, by keyed digests only the exchange can compute (the marker key), never the
    pseudonym: ``subject`` names the person's data keys, ``state`` is the changelog key of
    their state (which holds the pseudonym, sealed), ``situation_id`` the situation to
    tombstone if no state is held. A command of an earlier version names ``pseudonym``
    instead; it is still read (the topic keeps it 7 days)."""

    pseudonym: Pseudonym | None = None
    subject: EventId | None = None
    state: EventId | None = None
    situation_id: EventId | None = None
    issued_at: Timestamp | None = None
    #: The purge's cut-off date (its ``--as-of``): carried by the tombstone to the ledger.
    cut_off: Date | None = None
    #: Sent by the correlator itself to the other pseudonym of a re-keyed person (the one it
    #: moved from, or to): not passed on further.
    linked: bool = False

    @model_validator(mode="after")
    def _names_someone(self) -> ErasureCommand:
        if self.pseudonym is None and None in (self.subject, self.state, self.situation_id):
            raise ValueError("an erasure command names a pseudonym, or a subject, a state and a situation")
        return self


def erasure_names(digest: Callable[[bytes], bytes] | None, pseudonym: Pseudonym, **fields: Any) -> ErasureCommand:
    """The erasure command for ``pseudonym``: by its keyed digests under ``digest`` (the
    marker key's HMAC), or by the pseudonym itself without one (tests without a marker key)."""
    if digest is None:
        return ErasureCommand(pseudonym=pseudonym, **fields)
    return ErasureCommand(subject=digest(b"datakey\x00" + pseudonym.value.encode())[:SUBJECT_BYTES].hex(),
                          state=digest(b"changelog\x00" + _key_of(pseudonym))[:16].hex(),
                          situation_id=situation_id_for(pseudonym), **fields)


class Transfer(Frozen):
    """A hand-over between a person's previous pseudonym and its new one (key rotation):
    a request names both; the answer carries what the previous pseudonym held (None: nothing)."""

    previous: Pseudonym
    pseudonym: Pseudonym
    state: PersonState | None = None
    #: Instead of ``state`` when person states are sealed: the state sealed under the previous
    #: pseudonym's data key (base64), so that an erasure leaves this copy unreadable too.
    sealed: str | None = None


def erasure_command(key_id: str, value: str, partitions: int, *, secret: bytes | None = None,
                    issued_at: dt.datetime | None = None, cut_off: dt.date | None = None
                    ) -> tuple[bytes, bytes, int]:
    """(key, value, partition) of the erasure command for a pseudonym, on the repartition
    topic with header ``H_ERASE: purge``: in the partition of the person's state, keyed by
    the person's subject and naming them by keyed digests under ``secret`` (the marker key;
    None: by the pseudonym, as an earlier version did)."""
    digest = None if secret is None else KeyedDigest(secret).digest
    pseudonym = Pseudonym(key_id=key_id, value=value)
    command = erasure_names(digest, pseudonym, issued_at=issued_at, cut_off=cut_off)
    key = value.encode() if command.subject is None else command.subject.encode()
    return key, to_wire(command), partition_for(value, partitions)


#: Refusals whose dead letter keeps no payload: the person asked not to be processed, or
#: was erased while the record was forwarded (its sealed copy no longer opens).
WITHHELD = frozenset({Reason.OPPOSITION, Reason.CONSENTEMENT_RETIRE, Reason.DONNEES_EFFACEES,
                      # a sealed signal that does not open: nothing readable to keep, and
                      # under a replaced key, the record of a person just erased
                      Reason.CLE_SIGNAL_REMPLACEE, Reason.SCELLE_ILLISIBLE})


def source_of(rec: Record) -> tuple[str, int, int]:
    """The original position of ``rec`` (a repartitioned record carries it in its headers)."""
    if rec.topic == REPARTITION_TOPIC and H_TOPIC in rec.headers:
        return (rec.headers[H_TOPIC].decode(), int(rec.headers[H_PARTITION]),
                int(rec.headers[H_OFFSET]))
    return rec.topic, rec.partition, rec.offset


class Output(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None


@dataclass
class Batch:
    outputs: list[Output] = field(default_factory=list)
    #: person key -> (changelog partition, state JSON, or None: a tombstone); once per batch.
    writes: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)
    accepted: int = 0
    rejected: int = 0
    #: rejections by reason (the metrics' receipts by reason)
    reasons: dict[Reason, int] = field(default_factory=dict)


def person_key(key_id: str, value: str) -> bytes:
    """A person's key in the state store and on the changelog: ``key_id/value`` of the pseudonym."""
    return f"{key_id}/{value}".encode()


#: Changelog keys of objection markers start with this (never a person key: those start
#: with an exchange key id, letters first; never a fence: those start with NUL).
MARKER_PREFIX = b"!marker/"


class ObjectionMarker(Frozen):
    """What the changelog keeps of a person who objected and nothing else: when, and the
    highest situation version published (so a later situation's versions stay monotonic);
    under a keyed digest of the person key, not the pseudonym (:meth:`Engine.marker_key`)."""

    opposed_at: dt.datetime
    version_floor: int


def _bare_objection(state: PersonState) -> bool:
    """A state that says only "objected" (what an objection leaves): kept as a marker."""
    return (state.opposed_at is not None and not state.signals and not state.seen
            and not state.consents and not state.marks and state.situation is None
            and state.moved_to is None and state.awaiting is None and not state.merged_from
            and state.successor is None)


def _pseudonym_of(person: bytes | str) -> Pseudonym:
    key_id, _, value = (person.decode() if isinstance(person, bytes) else person).partition("/")
    return Pseudonym(key_id=key_id, value=value)


def _key_of(p: Pseudonym) -> bytes:
    return person_key(p.key_id, p.value)


class Sealer(Protocol):
    """Seals person states under the person's data key (:class:`services.platform.datakeys.KeyRing`)."""

    def seal(self, pseudonym_value: bytes, topic: str, plaintext: bytes) -> bytes: ...

    def open(self, pseudonym_value: bytes | None, topic: str, raw: bytes) -> bytes | None: ...

    def erase(self, pseudonym_value: bytes) -> None: ...

    def erase_subject(self, subject: bytes) -> None: ...

    def data_key(self, pseudonym_value: bytes, subject: bytes, epoch: int) -> bytes | None: ...

    def subject(self, pseudonym_value: bytes) -> bytes: ...


def _value_of(key: bytes) -> bytes:
    """The pseudonym's value in a person key (``key_id/value``)."""
    return key.partition(b"/")[2]


class StateCache:
    """Decoded person states, each with the exact table bytes it was read from or written as.

    :meth:`get` returns the model only if the table still holds *those* bytes (compared in
    full), so a value changed behind the engine's back (a rebalance that restored another
    worker's writes, a restart, a test that edits the table) is simply re-validated: the cache
    needs no invalidation. The model of given bytes is what ``PersonState.model_validate_json``
    of those bytes returns (a round-trip property the tests check). Bounded, oldest out.
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, tuple[bytes, PersonState]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes, raw: bytes) -> PersonState | None:
        entry = self._data.get(key)
        if entry is not None and entry[0] == raw:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, key: bytes, raw: bytes, state: PersonState) -> None:
        if self.max_entries <= 0:
            return
        self._data[key] = (raw, state)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def _hex32(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:32]


def receipt_id_for(topic: str, partition: int, offset: int) -> str:
    """``_hex32("receipt", topic, partition, offset)``: the receipt of a source position."""
    return hashlib.sha256(f"receipt\x00{topic}\x00{partition}\x00{offset}".encode()).hexdigest()[:32]


_RECEIPT_TOPICS = {f: receipt_topic(f) for f in Fund}


#: What the checks need of a record: its value and the topic it was (originally) read from.
CheckItem = tuple[bytes | None, str]


class Checks(Protocol):
    """Runs :class:`~services.correlator.checks.Checker` over a batch, here or elsewhere."""

    def start(self, items: Sequence[CheckItem]) -> Callable[[int], Verdict]:
        """Begin checking ``items``; the callable returned gives the verdict of item ``i``
        (waiting for it if need be). It is called for every ``i``, in increasing order."""
        ...

    def update(self, registry: Registry) -> None:
        """Check with ``registry`` from now on (the engine reloaded it)."""
        ...


class InlineChecks:
    """The checks on the caller's thread, each when its verdict is asked for."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker

    def start(self, items: Sequence[CheckItem]) -> Callable[[int], Verdict]:
        check = self.checker.check
        return lambda i: check(*items[i])

    def update(self, registry: Registry) -> None:
        self.checker.use(registry)


class Engine:
    """Applies every check and the rules to batches of records (no I/O of its own).

    Partitioning: a person's state lives in the changelog partition of the signal topics'
    partition ``murmur2(pseudonym) % partitions``. A record read from another partition
    (a producer that used another partitioner, or another key) is *not* processed there,
    which would silently split the person's state in two: once verified, it is forwarded
    unchanged to the internal repartition topic, to the right partition, with its original
    position in headers, and processed when read from there (same worker owning that
    partition, co-partitioned). Its receipt and any dead letter name the original position.
    """

    def __init__(self, ctx: Context, registry: Registry, *, partitions: int = CONTRACT_PARTITIONS,
                 clock: Callable[[], dt.datetime] | None = None,
                 state_cache: StateCache | None = None, checks: Checks | None = None,
                 registry_source: RegistrySource | None = None, marker_secret: bytes | None = None,
                 sealer: Sealer | None = None, state_topic: str = "persons", fast: bool = True,
                 accept_clear: bool = True) -> None:
        self.ctx = ctx
        #: Whether a signal in clear is taken (``HELP_SIGNAL_SEALING=accepted``); else it is
        #: refused ``signal_non_scelle`` and only sealed signals (contract §2.1) are.
        self.accept_clear = accept_clear
        #: The step's fast path (services.core.trusted; False: the validating reference).
        self.fast = fast
        #: Seals each state written under the person's data key (None: states in clear);
        #: ``state_topic`` (the changelog's name) is bound to every sealed value.
        self.sealer = sealer
        self.state_topic = state_topic
        #: Key of the objection markers (None: an objection stays a state under the pseudonym).
        self.marker_secret = marker_secret
        self._marker_digest = None if marker_secret is None else KeyedDigest(marker_secret).digest
        self.registry = registry
        #: Where a changed registry comes from (None: ``registry`` for good). See :meth:`refresh`.
        self.registry_source = registry_source
        self._generation = 0
        self._batch_generation = 0
        self._recheck: Checker | None = None
        self.partitions = partitions
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.states = state_cache if state_cache is not None else StateCache()
        #: The stateless checks (up to the signature): inline unless given a pool.
        self.checks: Checks = checks if checks is not None else InlineChecks(Checker(registry, partitions))
        self._policy_memo: dict[tuple[Any, ...], Reason | None] = {}
        #: Receipts from the wire template (what it remembers between batches is its own).
        self._receipts = ReceiptWriter()
        self._now = self.clock()
        self._limits = limits_at(self._now)
        self._received_s = int(self._now.timestamp())
        #: The bytes of the situation events written in the batch, by the event's id.
        self._event_bytes: dict[int, tuple[Any, bytes]] = {}
        self._last_occurred: tuple[int | None, dt.datetime] = (None, dt.datetime.fromtimestamp(0, dt.UTC))
        #: Persons whose parked records were released in the batch being processed.
        self._released_now: set[bytes] = set()
        #: Pseudonym values whose data key this batch rotated -> whether their situation's
        #: event was sealed since (under the new key); see :meth:`_rotate`.
        self._rotated: dict[bytes, bool] = {}
        #: The batch's state reader (see :meth:`_held`).
        self._load: Callable[[bytes], bytes | None] = lambda key: None
        #: Records held back by persons waiting for a hand-over, per partition (the worker's
        #: backpressure: services/correlator/holds.py); noted at the end of every batch.
        self.holds = Holds()

    # ----------------------------------------------------------------------- markers
    def marker_key(self, key: bytes) -> bytes:
        """The changelog key of a person's objection marker: a keyed digest of the person key
        that only the exchange (holding the marker key) can compute."""
        assert self._marker_digest is not None  # hmac.digest(marker_secret, key, sha256), set up once
        return MARKER_PREFIX + self._marker_digest(key)[:16].hex().encode()

    def record_key(self, pseudonym_value: str) -> bytes:
        """A person's record key on the repartition topic: their subject (the keyed digest
        naming their data keys, hex), not the pseudonym; the partition is chosen explicitly
        (the pseudonym's murmur2), so the key only has to be the same for the same person.
        Without the marker key (tests), the pseudonym's value."""
        digest = self._marker_digest
        if digest is None:
            return pseudonym_value.encode()
        return digest(b"datakey\x00" + pseudonym_value.encode())[:SUBJECT_BYTES].hex().encode()

    def _from_marker(self, key: bytes, load: Callable[[bytes], bytes | None]) -> PersonState | None:
        """The objection state a marker stands for (the pseudonym is the person key's own)."""
        raw = load(self.marker_key(key))
        if not raw:
            return None
        marker = ObjectionMarker.model_validate_json(raw)
        key_id, _, value = key.decode().partition("/")
        return PersonState(pseudonym=Pseudonym(key_id=key_id, value=value), opposed_at=marker.opposed_at,
                           version_floor=marker.version_floor)

    # ----------------------------------------------------------------------- helpers

    def _receipt(self, batch: Batch, rec: Record, fund: Fund, signal_id: str | None,
                 reason: Reason | None) -> None:
        source = source_of(rec)
        topic, partition, offset = source
        value = self._receipts.wire(receipt_id_for(topic, partition, offset), fund, signal_id, reason,
                                    source, self._now)
        key = (signal_id or f"{topic}:{partition}:{offset}").encode()
        batch.outputs.append(Output(_RECEIPT_TOPICS.get(fund) or receipt_topic(fund), key, value))

    def _reject(self, batch: Batch, rec: Record, fund: Fund | None, signal_id: str | None,
                reason: Reason, detail: str, *, person: bytes | None = None) -> None:
        """A receipt and a dead letter. ``person``: the pseudonym's value of a signal that
        passed the checks (signature, schema): its payload is then kept, sealed under the
        person's data key (``;raw_sealed``), so the person's erasure reaches it too. Any
        other refusal keeps no payload (``;raw_withheld``): the size and digest of its bytes
        and its envelope's non-personal members (:mod:`services.correlator.deadletters`)."""
        topic, partition, offset = source_of(rec)
        raw = rec.value or b""
        size, sha256 = deadletters.digest(raw)
        if person is not None and self.sealer is not None and raw and reason not in WITHHELD:
            kept, detail = self.sealer.seal(person, DEADLETTER_TOPIC, raw), f"{detail};raw_sealed"
        else:
            # Refused before its checks, or about a person who objected, withdrew consent or
            # was erased: nothing of the message is kept (no pseudonym, category or sealed
            # reference on a topic kept 90 days that no erasure reaches); the fund holds it.
            kept, detail = b"", f"{detail};raw_withheld"
        dl = DeadLetter(
            schema_version="1.0",
            deadletter_id=_hex32("deadletter", topic, partition, offset),
            source=SourcePosition(topic=topic, partition=partition, offset=offset),
            fund=fund, signal_id=signal_id, reason=reason, detail=detail,
            raw=base64.b64encode(kept).decode("ascii"), raw_size=size, raw_sha256=sha256,
            envelope=deadletters.envelope_of(raw), received_at=self._now,
        )
        batch.outputs.append(Output(DEADLETTER_TOPIC, f"{topic}:{partition}:{offset}".encode(),
                                    to_wire(dl)))
        if fund is not None:
            self._receipt(batch, rec, fund, signal_id, reason)
        batch.rejected += 1
        batch.reasons[reason] = batch.reasons.get(reason, 0) + 1

    # ----------------------------------------------------------------------- batch
    def process(self, records: Iterable[Record],
                load: Callable[[bytes], bytes | None]) -> Batch:
        """Process records in order; read each touched person once, write each once."""
        steps = self.steps(records, load)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def steps(self, records: Iterable[Record], load: Callable[[bytes], bytes | None], *,
              every: int = 0) -> Generator[None, None, Batch]:
        """:meth:`process` as a generator that pauses after every ``every`` records (0: never)
        and returns the batch: an event loop can run between the pauses (the worker's sends
        and acknowledgements of the previous batch go on meanwhile)."""
        batch = Batch()
        self._event_bytes = {}
        states: dict[bytes, PersonState | None] = {}
        dirty: dict[bytes, int] = {}
        cache = self.states
        self._now = self.clock()  # one time for the batch's receipts, dead letters and date rules
        self._limits = limits_at(self._now)
        self._received_s = int(self._now.timestamp())
        self._released_now = set()
        self._rotated = {}
        self.refresh()
        self._batch_generation = self._generation

        marked: set[bytes] = set()  # persons read from a marker
        sealer, state_topic = self.sealer, self.state_topic
        self._load = load

        def get(key: bytes) -> PersonState | None:
            if key not in states:
                raw = load(key)
                if raw and sealer is not None and is_sealed(raw) and cache.get(key, raw) is None:
                    # Sealed: opened with the person's key; a key destroyed (an erasure)
                    # leaves nothing, as if no state had been written.
                    plain = sealer.open(_value_of(key), state_topic, raw)
                    if plain is None:
                        raw = None
                    else:
                        cache.put(key, raw, PersonState.model_validate_json(plain))
                if not raw:
                    # No state: an objection may have left a marker (looked up only then).
                    state = self._from_marker(key, load) if self.marker_secret is not None else None
                    if state is not None:
                        marked.add(key)
                    states[key] = state
                else:
                    # Re-validated on read: a table value is only trusted once it parses
                    # (or is byte for byte a value this engine validated or wrote).
                    state = cache.get(key, raw)
                    if state is None:
                        state = PersonState.model_validate_json(raw)
                        cache.put(key, raw, state)
                    states[key] = state
            return states[key]

        def put(key: bytes, partition: int, state: PersonState) -> None:
            states[key] = state
            dirty[key] = partition

        records = self._opened_forwards(list(records))
        # The exchange's own commands on the repartition topic (erasures, hand-overs) are no
        # fund's message: nothing to check (None: a trivial verdict the engine never reads).
        verdict = self.checks.start([(None if _control(rec) else rec.value, source_of(rec)[0]) for rec in records])
        one = self._one
        for i, rec in enumerate(records):
            one(batch, rec, verdict(i), get, put)
            if every and i % every == every - 1:
                yield
        holds = self.holds
        for key, partition in dirty.items():
            st = states[key]
            assert st is not None
            if st.awaiting is not None:
                holds.note(key, partition, len(st.parked), partition_for(st.awaiting.value, self.partitions))
            elif key in holds:
                holds.note(key, partition, 0)
            if self._rotated.get(_value_of(key)) is False and st.situation is not None and st.moved_to is None:
                # Its earlier events become unreadable with the key: the latest again, under the new one.
                self._situation(batch, st.situation.last_event)
            if self.marker_secret is not None and _bare_objection(st):
                # The pseudonym leaves the changelog (a tombstone under its key); what stays
                # is the marker, under a key only the exchange can compute.
                assert st.opposed_at is not None
                marker = ObjectionMarker(opposed_at=st.opposed_at, version_floor=st.version_floor)
                batch.writes[key] = (partition, None)
                batch.writes[self.marker_key(key)] = (partition, marker.model_dump_json().encode())
                continue
            value = self._state_bytes(st) if self.fast else st.model_dump_json().encode()
            if sealer is not None:
                value = sealer.seal(_value_of(key), state_topic, value)
            batch.writes[key] = (partition, value)
            cache.put(key, value, st)
            if key in marked:  # the objection lifted (a later consent): the marker goes
                batch.writes[self.marker_key(key)] = (partition, None)
        self._event_bytes = {}
        return batch

    def _opened_forwards(self, records: list[Record]) -> list[Record]:
        """The batch's records, a forward read back from the repartition topic opened with its
        person's data key (:meth:`_forward` sealed it); one whose key is gone (the person was
        erased meanwhile) keeps no value and the header :data:`H_ERASED`."""
        sealer = self.sealer
        if sealer is None:
            return records
        out = records
        for i, rec in enumerate(records):
            if rec.topic != REPARTITION_TOPIC or not rec.value or not is_sealed(rec.value):
                continue
            if out is records:
                out = list(records)
            opened = sealer.open(None, REPARTITION_TOPIC, rec.value)
            out[i] = (rec._replace(value=opened) if opened is not None
                      else rec._replace(value=b"", headers={**rec.headers, H_ERASED: b"1"}))
        return out

    def _one(self, batch: Batch, rec: Record, verdict: Verdict,
             get: Callable[[bytes], PersonState | None],
             put: Callable[[bytes, int, PersonState], None]) -> None:
        if rec.topic == REPARTITION_TOPIC:
            if H_ERASED in rec.headers:
                # Sealed when forwarded, its key destroyed since: nothing of it can be read,
                # and nothing is kept of it; the fund is told (it may send it again if due).
                self._reject(batch, rec, fund_of_signal_topic(source_of(rec)[0]), None,
                             Reason.DONNEES_EFFACEES, "/:forward_erased")
                return
            if H_ERASE in rec.headers:
                self._erase(batch, rec, get, put)
                return
            transfer = rec.headers.get(H_TRANSFER)
            if transfer is not None:
                self._transfer(batch, rec, transfer, get, put)
                return
        if verdict.reason is Reason.CLE_SIGNATURE_INCONNUE and self.registry_source is not None:
            verdict = self._unknown_key(rec, verdict)
        receipt_fund, signal_id, reason, detail, checked = verdict
        try:
            if reason is not None:
                raise Rejected(reason, detail)
            if checked is not None:
                self._signal(batch, rec, checked, get, put)
            else:  # a consent (every signal that passes the checks comes with its values)
                self._consent(batch, rec, rec.value or b"", get, put)
        except Rejected as r:
            self._reject(batch, rec, receipt_fund, signal_id, r.reason, r.field,
                         person=None if checked is None else checked.pseudonym[1].encode())

    # ----------------------------------------------------------------------- registry
    def refresh(self) -> bool:
        """Take the registry again if its files changed (and verify); True if it did.

        Called at the start of every batch: the checks, the check helpers included, get
        the new registry before their first request of the batch."""
        source = self.registry_source
        if source is None:
            return False
        registry = source.poll()
        if registry is None:
            return False
        self.registry = registry
        self._generation += 1
        self._recheck = None
        self.checks.update(registry)
        return True

    def _unknown_key(self, rec: Record, verdict: Verdict) -> Verdict:
        """A key id the registry did not know: look at the registry files again (a stat)
        before refusing, and check the record again if the registry changed since its
        verdict was given (a key registered a moment ago is then taken)."""
        self.refresh()
        if self._generation == self._batch_generation:
            return verdict
        if self._recheck is None:
            self._recheck = Checker(self.registry, self.partitions)
        return self._recheck.check(rec.value, source_of(rec)[0])

    def _route(self, batch: Batch, rec: Record, pseudonym_value: str, expected: int) -> int | None:
        """The person's partition (``expected``), or None after forwarding a misrouted record."""
        if rec.partition == expected:
            return expected
        self._forward(batch, rec, pseudonym_value, expected, rec.headers.get(H_REKEY))
        return None

    def _forward(self, batch: Batch, rec: Record, pseudonym_value: str, partition: int,
                 rekey: bytes | None) -> None:
        """``rec`` to the repartition topic's ``partition``, with its original position (and the
        person key it was re-keyed to, if any)."""
        topic, source_partition, offset = source_of(rec)
        headers: tuple[tuple[str, bytes], ...] = (
            (H_TOPIC, topic.encode()), (H_PARTITION, str(source_partition).encode()),
            (H_OFFSET, str(offset).encode()))
        if rekey is not None:
            headers += ((H_REKEY, rekey),)
        value = rec.value
        if self.sealer is not None and value:
            # Kept 7 days on the repartition topic: sealed under the person's key (the one it
            # goes to), so that the person's erasure reaches this copy too.
            value = self.sealer.seal(pseudonym_value.encode(), REPARTITION_TOPIC, value)
        batch.outputs.append(Output(REPARTITION_TOPIC, self.record_key(pseudonym_value), value, partition,
                                    headers, rec.timestamp_ms))

    def _policy(self, sig: CheckedSignal, consent: bool) -> Reason | None:
        """:func:`check_exchange` for this signal, remembered: a pure function of few values."""
        key = (sig.fund, sig.category, sig.purpose, sig.legal_basis, sig.conditions, consent)
        memo = self._policy_memo
        if key not in memo:
            if len(memo) > 10_000:  # categories x purposes x bases x conditions: few; bounded anyway
                memo.clear()
            memo[key] = check_exchange(self.ctx.policy, self.ctx.taxonomy, fund=sig.fund,
                                       category=sig.category, purpose=sig.purpose,
                                       basis=sig.legal_basis, conditions=sig.conditions,
                                       consent_on_record=consent)
        return memo[key]

    def _signal(self, batch: Batch, rec: Record, sig: CheckedSignal,
                get: Callable[[bytes], PersonState | None],
                put: Callable[[bytes, int, PersonState], None]) -> None:
        rekey = rec.headers.get(H_REKEY)
        if rekey is not None:
            person = _pseudonym_of(rekey)
        else:
            key_id, value = sig.pseudonym
            # (A checked signal's pseudonym passed the Signal model's checks: see _trusted_signal.)
            person = (trusted(Pseudonym, {"key_id": key_id, "value": value})
                      if self.fast and type(key_id) is str and type(value) is str
                      else Pseudonym(key_id=key_id, value=value))
        expected = sig.partition if rekey is None else partition_for(person.value, self.partitions)
        partition = self._route(batch, rec, person.value, expected)
        if partition is None:
            return
        pkey = _key_of(person)
        try:
            sig = self._opened(rec, sig)
        except Rejected as exc:
            if exc.reason is Reason.CLE_SIGNAL_REMPLACEE:
                raise self._replaced(sig, get(pkey)) from None
            raise
        state = get(pkey)
        if state is not None and not self._here(batch, rec, pkey, partition, state, put):
            return
        if sig.previous is not None:
            # (Followed for a forwarded record too: a signal under a pseudonym that has moved
            # on may link it to an older one that never joined: a chain, contract §4.3.)
            link = Pseudonym(key_id=sig.previous[0], value=sig.previous[1])
            if link != person and (state is None or (link not in state.merged_from and link != state.pseudonym)):
                state = self._follow(batch, rec, pkey, partition, person, state, link, get, put)
                if state is None:
                    return  # parked until the previous pseudonym's state comes
        if state is not None and state.released and pkey not in self._released_now:
            state = state.model_copy(update={"released": ()})
        reason = self._policy(sig, consent_on_record(state, sig.purpose))
        if reason is not None:
            if reason is Reason.CONSENTEMENT_ABSENT and state is not None and state.withdrawn(sig.purpose):
                self._shred(sig, pkey, partition, state, put)
                raise Rejected(Reason.CONSENTEMENT_RETIRE, "/purpose:consent_withdrawn")
            raise Rejected(reason, f"/category:{reason.value}" if reason.name.startswith("CATEG")
                           else f"/legal_basis:{reason.value}")
        topic, part, offset = source_of(rec)
        position = f"{topic}:{part}:{offset}"
        first = seen_source(state, sig.signal_id) if state is not None else None
        if state is not None and first == position:
            # A redelivery after a crash: answer as the first time did.
            self._receipt(batch, rec, sig.fund, sig.signal_id, None)
            if state.situation is not None:
                self._situation(batch, state.situation.last_event)
            batch.accepted += 1
            return
        # The date rules, the SDK's own (services.core.dates), judged against the batch's
        # clock: hence only now, after the redelivery test. The bounds move with the clock,
        # and the "too old" ones can turn a signal accepted at 23:59 into one refused at
        # 00:01; a redelivery (same source position, after a crash between the state write
        # and the offset commit) must get the first answer again, with the same receipt id,
        # and the test above gives it. (The other way round stays possible: a signal refused
        # as in the future just before its date comes, redelivered just after, is accepted
        # then, since a refusal leaves nothing in the state to answer from; it takes a crash
        # within minutes of the edge.) They come before the duplicate and objection tests,
        # which need the person's history: a message's own content is judged first.
        dates = signal_dates(sig.observed_on, sig.emitted_at, self._limits)
        if dates is not None:
            raise Rejected(*dates)
        if first is not None:
            raise Rejected(Reason.DOUBLON, "/signal_id:already_accepted")
        if state is not None and state.opposed:
            self._shred(sig, pkey, partition, state, put)
            raise Rejected(Reason.OPPOSITION, "/pseudonym:objection_on_record")
        if state is not None and state.marks and state.withdrawn(sig.purpose):
            self._shred(sig, pkey, partition, state, put)
            raise Rejected(Reason.CONSENTEMENT_RETIRE, "/purpose:consent_withdrawn")
        fast = self.fast and _trusted_signal(sig, position)
        entry = _entry(sig, position, self._received_s, fast)
        occurred = self._occurred(rec.timestamp_ms)
        if state is None:
            state = _new_person(person, fast)
        step = on_signal(self.ctx, state, entry, today=occurred.date(), occurred_at=occurred, fast=fast)
        put(pkey, partition, step.state)
        for event in step.events:
            self._situation(batch, event)
        self._receipt(batch, rec, sig.fund, sig.signal_id, None)
        batch.accepted += 1

    def _occurred(self, timestamp_ms: int) -> dt.datetime:
        """The broker timestamp as a UTC datetime; the last one's again for the same
        millisecond (a producer's batch often stamps its records alike)."""
        last = self._last_occurred
        if last[0] != timestamp_ms:
            last = self._last_occurred = (timestamp_ms, dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.UTC))
        return last[1]

    def _opened(self, rec: Record, sig: CheckedSignal) -> CheckedSignal:
        """``sig`` with its sealed person members opened (contract §2.1, check 11a), under
        the key the person's data key ``sealed.epoch`` gives the fund; a signal in clear as
        it is, if clear signals are accepted."""
        if sig.sealed is None:
            if not self.accept_clear:
                raise Rejected(Reason.SIGNAL_NON_SCELLE, "/sealed:missing")
            return sig
        subject_hex, epoch, _ = sig.sealed
        subject = bytes.fromhex(subject_hex)
        data_key = None if self.sealer is None else self.sealer.data_key(sig.pseudonym[1].encode(), subject, epoch)
        if data_key is None:
            if self.sealer is None or subject != self.sealer.subject(sig.pseudonym[1].encode()):
                raise Rejected(Reason.SCELLE_ILLISIBLE, "/sealed/subject:not_the_person")
            raise Rejected(Reason.CLE_SIGNAL_REMPLACEE, "/sealed/epoch:key_replaced")
        content = signal_seal.open_sealed(data_key, sig.fund, source_of(rec)[0], sig.signal_id, sig.sealed)
        if content is None:
            raise Rejected(Reason.SCELLE_ILLISIBLE, "/sealed/value:does_not_open")
        return sig._replace(category=content.category, observed_on=content.observed_on,
                            territory=content.territory,
                            sealed_ref=(content.sealed_ref.key_id, content.sealed_ref.value))

    def _replaced(self, sig: CheckedSignal, state: PersonState | None) -> Rejected:
        """Why a signal sealed under a key of the person that no longer exists is refused.
        Sealing it again (what ``cle_signal_remplacee`` asks of the fund) would only have it
        refused after, if the erasure that replaced the key was the person's objection, or a
        withdrawal of the signal's purpose (clear members): the fund is told that reason at
        once, for good. A signal the person's state has seen (a copy of one accepted) is
        sent back to be sealed again, to be answered ``doublon`` as any copy."""
        if state is not None and seen_source(state, sig.signal_id) is None:
            if state.opposed:
                return Rejected(Reason.OPPOSITION, "/pseudonym:objection_on_record")
            if state.marks and state.withdrawn(sig.purpose):
                return Rejected(Reason.CONSENTEMENT_RETIRE, "/purpose:consent_withdrawn")
        return Rejected(Reason.CLE_SIGNAL_REMPLACEE, "/sealed/epoch:key_replaced")

    def _shred(self, sig: CheckedSignal, pkey: bytes, partition: int, state: PersonState,
               put: Callable[[bytes, int, PersonState], None]) -> None:
        """A sealed signal refused for the person's objection or withdrawal: the key it was
        sealed under (which the fund asked after the erasure) is replaced at once, as the
        erasure's was, so its copy on the signal topic is unreadable too; what the person's
        state keeps is written again under the new key (:meth:`_consent` does the same)."""
        if sig.sealed is None or self.sealer is None:
            return
        put(pkey, partition, state)
        self.sealer.erase(sig.pseudonym[1].encode())

    # ----------------------------------------------------------------------- key rotation
    def _here(self, batch: Batch, rec: Record, pkey: bytes, partition: int, state: PersonState,
              put: Callable[[bytes, int, PersonState], None]) -> bool:
        """Whether ``rec`` is processed under ``pkey`` now: not if the person moved to a newer
        pseudonym (forwarded there) or is waiting for its previous one's state (parked)."""
        if state.moved_to is not None:
            to = state.moved_to
            self._forward(batch, rec, to.value, partition_for(to.value, self.partitions), _key_of(to))
            return False
        if state.awaiting is not None:
            parked = _parked(rec)
            if any(p.source == parked.source for p in state.parked):
                self._request(batch, state.awaiting, state.pseudonym)  # read again: the request may be lost
            else:
                put(pkey, partition, state.model_copy(update={"parked": (*state.parked, parked)}))
            return False
        return True

    def _follow(self, batch: Batch, rec: Record, pkey: bytes, partition: int, person: Pseudonym,
                state: PersonState | None, link: Pseudonym, get: Callable[[bytes], PersonState | None],
                put: Callable[[bytes, int, PersonState], None]) -> PersonState | None:
        """A signal's ``pseudonym_previous`` seen for the first time: the previous pseudonym's
        state joins this one — at once if both live in this partition, otherwise asked of the
        previous one's partition while ``rec`` waits (None)."""
        lpart = partition_for(link.value, self.partitions)
        lkey = _key_of(link)
        if lpart == partition and not _waiting(get(lkey)):
            moved, stays = hand_over(get(lkey), link, person)
            put(lkey, partition, stays.model_copy(update={"signals": (), "seen": (), "situation": None})
                if moved is not None else stays)
            return self._merge(batch, pkey, partition, person, state, moved, link, put)
        # Across partitions — or within one when the previous pseudonym is itself still
        # waiting for its own previous one (a chain): asked by a request, which that state
        # answers once its own hand-over is done (see _transfer).
        base = state if state is not None else new_person(person)
        put(pkey, partition, base.model_copy(update={"awaiting": link, "parked": (_parked(rec),)}))
        self._request(batch, link, person)
        return None

    def _merge(self, batch: Batch, pkey: bytes, partition: int, person: Pseudonym, state: PersonState | None,
               moved: PersonState | None, link: Pseudonym,
               put: Callable[[bytes, int, PersonState], None]) -> PersonState:
        merged, erased = merge_moved(state, moved, person)
        # The previous pseudonym's own predecessors too: a link to one of them is then known.
        before = () if moved is None else tuple(p for p in moved.merged_from if p not in merged.merged_from)
        merged = merged.model_copy(update={"merged_from": (*merged.merged_from, *before, link)[-8:]})
        put(pkey, partition, merged)
        if erased is not None:  # an objection on one side erased the other's situation
            batch.outputs.append(Output(SITUATIONS_TOPIC, erased.encode(), None))
        elif (moved is not None and moved.situation is not None and state is not None and state.situation is not None
              and state.situation.situation_id != moved.situation.situation_id):
            # Both pseudonyms had a situation before any link joined them (a chain whose
            # oldest link came last): one goes on — the previous one's, as merge_moved keeps
            # it — and the other is withdrawn, so that the person is never counted twice.
            batch.outputs.append(Output(SITUATIONS_TOPIC, state.situation.situation_id.encode(), None))
        return merged

    def _request(self, batch: Batch, link: Pseudonym, person: Pseudonym) -> None:
        batch.outputs.append(Output(REPARTITION_TOPIC, self.record_key(link.value),
                                    to_wire(Transfer(previous=link, pseudonym=person)),
                                    partition_for(link.value, self.partitions), ((H_TRANSFER, b"request"),)))

    def _transfer(self, batch: Batch, rec: Record, kind: bytes, get: Callable[[bytes], PersonState | None],
                  put: Callable[[bytes, int, PersonState], None]) -> None:
        """A hand-over message (no fund sent it, no receipt): ``request`` at the previous
        pseudonym's partition (answer with its state, leave a pointer); ``answer`` at the new
        one's (join the state, release the parked records in order); ``done`` back at the
        previous one's (the pointer keeps nothing but where the person went)."""
        try:
            msg = parse(Transfer, rec.value or b"")
            if kind not in (b"request", b"answer", b"done"):
                raise ValueError(kind)
        except (ValidationError, ValueError):
            self._reject(batch, rec, None, None, Reason.SCHEMA_INVALIDE, "/:transfer_malformed")
            return
        at = msg.pseudonym if kind == b"answer" else msg.previous
        part = partition_for(at.value, self.partitions)
        if rec.partition != part:  # sent for another partition count: to the right one
            batch.outputs.append(Output(REPARTITION_TOPIC, self.record_key(at.value), rec.value, part,
                                        ((H_TRANSFER, kind),)))
            return
        key = _key_of(at)
        state = get(key)
        if kind == b"request":
            if _waiting(state):
                assert state is not None
                # A chain: this state is itself waiting for its previous pseudonym's. It answers
                # once that has come and its held records are processed (a person has one
                # successor: another one asking meanwhile is answered "nothing", as hand_over does).
                if state.successor is None:
                    put(key, part, state.model_copy(update={"successor": msg.pseudonym}))
                elif state.successor != msg.pseudonym:
                    self._answer(batch, None, msg.previous, msg.pseudonym)
                return
            moved, stays = hand_over(state, msg.previous, msg.pseudonym)
            if stays is not state:
                put(key, part, stays)
            self._answer(batch, moved, msg.previous, msg.pseudonym)
            return
        if kind == b"done":
            if state is not None and state.moved_to == msg.pseudonym and (state.signals or state.situation):
                put(key, part, new_person(msg.previous).model_copy(update={"moved_to": msg.pseudonym}))
            return
        if state is None:
            return  # nothing waits for it (erased meanwhile)
        if state.awaiting == msg.previous:
            released = state.parked
            base = state.model_copy(update={"awaiting": None, "parked": ()})
            moved = msg.state
            if msg.sealed is not None and self.sealer is not None:
                opened = self.sealer.open(msg.previous.value.encode(), REPARTITION_TOPIC,
                                          base64.b64decode(msg.sealed))
                # None: its key was destroyed (the person was erased meanwhile): nothing moves
                moved = None if opened is None else PersonState.model_validate_json(opened)
            merged = self._merge(batch, key, part, msg.pseudonym, base, moved, msg.previous, put)
            put(key, part, merged.model_copy(update={"released": released}))
        elif msg.previous in state.merged_from and state.released:
            released = state.released  # the same answer read again: answer its records again
            if state.moved_to is not None:  # and its successor's answer (a chain), lost with the outputs
                self._answer(batch, state.model_copy(update={"moved_to": None}), at, state.moved_to)
        else:
            return
        batch.outputs.append(Output(REPARTITION_TOPIC, self.record_key(msg.previous.value),
                                    to_wire(Transfer(previous=msg.previous, pseudonym=msg.pseudonym)),
                                    partition_for(msg.previous.value, self.partitions), ((H_TRANSFER, b"done"),)))
        self._released_now.add(key)
        if self._recheck is None:
            self._recheck = Checker(self.registry, self.partitions)
        for p in released:
            headers = {H_TOPIC: p.topic.encode(), H_PARTITION: str(p.partition).encode(),
                       H_OFFSET: str(p.offset).encode()}
            if p.rekey is not None:
                headers[H_REKEY] = p.rekey.encode()
            value = base64.b64decode(p.value)
            self._one(batch, Record(REPARTITION_TOPIC, part, p.offset, p.timestamp_ms, None, value, headers),
                      self._recheck.check(value, p.topic), get, put)
        after = get(key)
        if after is not None and after.successor is not None and after.awaiting is None:
            # A chain: the newer pseudonym asked while this one waited; answered now, in order.
            successor = after.successor
            moved, stays = hand_over(after.model_copy(update={"successor": None}), at, successor)
            put(key, part, stays)
            self._answer(batch, moved, at, successor)

    def _answer(self, batch: Batch, moved: PersonState | None, previous: Pseudonym, pseudonym: Pseudonym) -> None:
        """The answer to a hand-over request: what ``previous`` held (sealed under its key when
        states are sealed), to ``pseudonym``'s partition."""
        answer = Transfer(previous=previous, pseudonym=pseudonym, state=moved)
        if self.sealer is not None and moved is not None:
            answer = Transfer(previous=previous, pseudonym=pseudonym, sealed=base64.b64encode(
                self.sealer.seal(previous.value.encode(), REPARTITION_TOPIC,
                                 moved.model_dump_json().encode())).decode("ascii"))
        batch.outputs.append(Output(REPARTITION_TOPIC, self.record_key(pseudonym.value), to_wire(answer),
                                    partition_for(pseudonym.value, self.partitions),
                                    ((H_TRANSFER, b"answer"),)))

    def _linked_erasures(self, batch: Batch, state: PersonState, command: ErasureCommand | None) -> None:
        """Erasure reaches the person's other pseudonyms of a rotation window (once: linked)."""
        others = (state.moved_to, state.awaiting, state.successor)
        for other in {*state.merged_from, *(p for p in others if p is not None)}:
            linked = erasure_names(self._marker_digest, other, issued_at=command.issued_at if command else None,
                                   cut_off=command.cut_off if command else None, linked=True)
            batch.outputs.append(Output(REPARTITION_TOPIC, self.record_key(other.value), to_wire(linked),
                                        partition_for(other.value, self.partitions), ((H_ERASE, ORIGIN_PURGE),)))

    def _erase(self, batch: Batch, rec: Record, get: Callable[[bytes], PersonState | None],
               put: Callable[[bytes, int, PersonState], None]) -> None:
        """An erasure command (the retention purge): forget the person's signals received
        before the purge was issued and their situation
        (:func:`~services.core.person.purge_person`), and tombstone the situation on the
        compacted topic with ``help-origin: purge`` whether or not a state was held (the
        topic's copies must go either way; the audit sink enters it as a purge) unless the
        person has a situation built since (a command read again after a restart, after the
        person's next signals: tests/correlator/test_retention.py). Idempotent. No receipt:
        no fund sent it."""
        try:
            command = parse(ErasureCommand, rec.value or b"")
        except ValidationError as exc:
            self._reject(batch, rec, None, None, Reason.SCHEMA_INVALIDE, schema_detail(exc))
            return
        pseudonym = command.pseudonym if command.pseudonym is not None else self._held(command)
        if pseudonym is None:
            # No state of the person here: their keys destroyed all the same (what a signal
            # topic or a forward still holds of them), and the situation's copies tombstoned.
            assert command.subject is not None and command.situation_id is not None
            if self.sealer is not None:
                self.sealer.erase_subject(bytes.fromhex(command.subject))
            self._purge_tombstone(batch, command, command.situation_id)
            return
        expected = partition_for(pseudonym.value, self.partitions)
        if rec.partition != expected:  # sent for another partition count: to the right one
            batch.outputs.append(Output(REPARTITION_TOPIC, self.record_key(pseudonym.value), rec.value,
                                        expected, ((H_ERASE, ORIGIN_PURGE),)))
            return
        pkey = person_key(pseudonym.key_id, pseudonym.value)
        state = get(pkey)
        situation_id = situation_id_for(pseudonym)
        self._rotate(pseudonym.value.encode())  # every earlier copy of the state: unreadable
        if state is not None:
            purged = purge_person(state, command.issued_at)
            if state.parked:  # records waiting for a hand-over are the person's too
                purged = purged.model_copy(update={"parked": tuple(
                    p for p in state.parked if command.issued_at is not None
                    and p.timestamp_ms > command.issued_at.timestamp() * 1000)})
            put(pkey, expected, purged)
            if not command.linked:
                self._linked_erasures(batch, state, command)
            if state.moved_to is not None:
                return  # the situation lives on under the newer pseudonym, which decides
            if purged.situation is not None:
                return  # built on signals received after the purge was issued: not erased
            if state.situation is not None:  # a re-keyed person's situation keeps its first id
                situation_id = state.situation.situation_id
        self._purge_tombstone(batch, command, situation_id)

    def _purge_tombstone(self, batch: Batch, command: ErasureCommand, situation_id: str) -> None:
        headers: tuple[tuple[str, bytes], ...] = ((ORIGIN_HEADER, ORIGIN_PURGE),)
        if command.cut_off is not None:
            headers += ((CUT_OFF_HEADER, command.cut_off.isoformat().encode()),)
        batch.outputs.append(Output(SITUATIONS_TOPIC, situation_id.encode(), None, headers=headers))

    def _held(self, command: ErasureCommand) -> Pseudonym | None:
        """The pseudonym of the person an erasure command names by digests: read from their
        state, stored under the command's changelog key (None: no state held, or not the
        subject's). The stored state is enough to know whom: a state the batch changed was
        stored before it under the same key. (A state the batch itself made, of a person first
        seen by the correlator in the very batch its command is read in, is not found: the
        person's keys are destroyed and their situation tombstoned, the state written again
        under a new key.)"""
        assert command.state is not None and command.subject is not None
        raw = self._load(DIGESTED + command.state.encode())
        if not raw:
            return None
        if is_sealed(raw):
            opened = None if self.sealer is None else self.sealer.open(None, self.state_topic, raw)
            if opened is None or envelope(raw)[0].hex() != command.subject:
                return None  # erased already (its key destroyed), or not this person's
            raw = opened
        return PersonState.model_validate_json(raw).pseudonym

    def sweep(self, items: Iterable[tuple[bytes, int, bytes]], outputs: list[Output] | None = None,
              ) -> dict[bytes, tuple[int, bytes | None]]:
        """The retention sweep over (key, changelog partition, state bytes): the new
        state bytes of every person who kept signals older than the correlation window
        (:func:`~services.core.person.sweep_person`), to write to the changelog. A sealed
        state is written back under its person key (the pseudonym inside it: the key given
        may be the changelog's digest); objection markers and values in clear of an
        earlier version are left to the next signal when states are sealed. The sweep
        rotates a sealed person's key: the situation that remains is published again
        under the new one, appended to ``outputs`` (to send after the writes)."""
        today = self.clock().date()
        rules = self.ctx.rules
        writes: dict[bytes, tuple[int, bytes | None]] = {}
        sealer, state_topic = self.sealer, self.state_topic
        for key, partition, raw in items:
            if key.startswith(MARKER_PREFIX):
                continue
            if sealer is not None:
                if not is_sealed(raw):
                    continue
                opened = sealer.open(None, state_topic, raw)
                if opened is None:  # erased meanwhile: nothing to sweep
                    continue
                state = PersonState.model_validate_json(opened)
                key = person_key(state.pseudonym.key_id, state.pseudonym.value)
            else:
                state = self.states.get(key, raw) or PersonState.model_validate_json(raw)
            if state.moved_to is not None and not self.registry.exchange_key_accepted(state.pseudonym.key_id):
                writes[key] = (partition, None)  # a pointer past its key's window: nothing comes for it
                if sealer is not None:
                    sealer.erase(_value_of(key))
                continue
            swept = sweep_person(state, today=today, window_days=rules.fenetre_correlation_jours,
                                 max_signals=rules.signalements_max_par_personne)
            if swept is not None:
                value = swept.model_dump_json().encode()
                if sealer is not None:  # signals past the window: their earlier copies too
                    sealer.erase(_value_of(key))
                    value = sealer.seal(_value_of(key), state_topic, value)
                    if outputs is not None and swept.situation is not None and swept.moved_to is None:
                        event = swept.situation.last_event
                        outputs.append(Output(SITUATIONS_TOPIC, event.situation_id.encode(),
                                              self._sealed_event(event, _wire(event))))
                writes[key] = (partition, value)
                self.states.put(key, value, swept)
        return writes

    def _situation(self, batch: Batch, event: Any) -> None:
        if self.fast:
            value = _EVENT_JSON(event)
            # Kept for the state's bytes at the batch's end (see _state_bytes); the event is
            # held too, so its id cannot be reused by another object meanwhile.
            self._event_bytes[id(event)] = (event, value)
        else:
            value = _wire(event)
        batch.outputs.append(Output(SITUATIONS_TOPIC, event.situation_id.encode(), self._sealed_event(event, value)))

    def _sealed_event(self, event: Any, value: bytes) -> bytes:
        """The event as the topic carries it: its person members sealed under the person's
        data key (:mod:`services.platform.sealed_situations`), or in clear without a sealer."""
        sealer = self.sealer
        if sealer is None:
            return value
        person = event.pseudonym.value.encode()
        if person in self._rotated:
            self._rotated[person] = True  # sealed under the new key: no need to publish it again
        return sealed_wire(event.event_id, event.situation_id, event.version,
                           sealer.seal(person, SITUATIONS_TOPIC, value))

    def _rotate(self, pseudonym_value: bytes) -> None:
        """The person's data key changes (every earlier copy sealed under it becomes
        unreadable): noted, so that a situation that remains is published again under the
        new key at the batch's end (a sink behind could no longer open its earlier events)."""
        if self.sealer is not None:
            self.sealer.erase(pseudonym_value)
            self._rotated[pseudonym_value] = False

    def _state_bytes(self, state: PersonState) -> bytes:
        """``state.model_dump_json().encode()``, taking the situation's last event as the bytes
        already written for it this batch (:meth:`_situation`) instead of serialising it again.

        pydantic-core writes a nested model as it writes it alone, and the situation is the
        state's last field but one: its member goes before ``"version_floor"``, the last
        member, whose value is an integer (``tests/correlator/test_fast_paths.py`` holds the
        two forms together)."""
        sit = state.situation
        known = self._event_bytes.get(id(sit.last_event)) if sit is not None else None
        if sit is None or known is None or known[0] is not sit.last_event:
            return _STATE_JSON(state)
        head = _STATE_JSON(state, exclude=_NO_SITUATION)
        cut = head.rindex(b',"version_floor":')
        closed = b"null" if sit.closed_on is None else b'"%s"' % sit.closed_on.isoformat().encode()
        member = (b',"situation":{"situation_id":"%s","version":%d,"status":"%s","closed_on":%s,"last_event":%s}'
                  % (sit.situation_id.encode(), sit.version, sit.status.encode(), closed, known[1]))
        return head[:cut] + member + head[cut:]

    def _consent(self, batch: Batch, rec: Record, raw: bytes,
                 get: Callable[[bytes], PersonState | None],
                 put: Callable[[bytes, int, PersonState], None]) -> None:
        try:
            event = parse(ConsentEvent, raw)
        except ValidationError as exc:
            raise Rejected(Reason.SCHEMA_INVALIDE, schema_detail(exc)) from None
        if not self.registry.exchange_key_accepted(event.pseudonym.key_id):
            raise Rejected(Reason.CLE_PSEUDONYME_REFUSEE, "/pseudonym/key_id:not_accepted")
        rekey = rec.headers.get(H_REKEY)
        person = _pseudonym_of(rekey) if rekey is not None else event.pseudonym
        partition = self._route(batch, rec, person.value, partition_for(person.value, self.partitions))
        if partition is None:
            return
        # effective_at not in the future (services.core.dates): the bound only moves forward
        # with the clock, so a consent accepted once is accepted again when redelivered.
        dates = consent_dates(event.effective_at, self._limits)
        if dates is not None:
            raise Rejected(*dates)
        pkey = _key_of(person)
        current = get(pkey)
        if current is not None and not self._here(batch, rec, pkey, partition, current, put):
            return
        state, erased = apply_consent(current, event if person == event.pseudonym
                                      else event.model_copy(update={"pseudonym": person}))
        put(pkey, partition, state)
        if event.kind != "consentement_donne":
            # An objection or a withdrawal: the earlier states (signals now erased) go with their key.
            self._rotate(person.value.encode())
        if erased:
            # Compacted topic: the tombstone makes every consumer forget the situation (a
            # re-keyed person's situation keeps the id of its first pseudonym).
            sit = current.situation if current is not None else None
            ids = {sit.situation_id} if sit is not None else {
                situation_id_for(p) for p in (person, *(current.merged_from if current else ()))}
            for sid in sorted(ids):
                batch.outputs.append(Output(SITUATIONS_TOPIC, sid.encode(), None))
        if event.kind == "opposition" and current is not None:
            self._linked_erasures(batch, current, None)
        self._receipt(batch, rec, event.fund, None, None)
        batch.accepted += 1


def _waiting(state: PersonState | None) -> bool:
    """Whether ``state`` is itself waiting for its previous pseudonym's (a hand-over not done)."""
    return state is not None and state.awaiting is not None and state.moved_to is None


def _control(rec: Record) -> bool:
    return rec.topic == REPARTITION_TOPIC and (H_ERASE in rec.headers or H_TRANSFER in rec.headers)


def _parked(rec: Record) -> Parked:
    topic, partition, offset = source_of(rec)
    rekey = rec.headers.get(H_REKEY)
    return Parked(topic=topic, partition=partition, offset=offset, timestamp_ms=rec.timestamp_ms,
                  value=base64.b64encode(rec.value or b"").decode("ascii"),
                  rekey=None if rekey is None else rekey.decode())


def _wire(event: Any) -> bytes:
    return bytes(to_wire(event))


#: ``to_wire`` of a situation event and ``model_dump_json().encode()`` of a state, as the
#: bytes pydantic-core writes (model_dump_json decodes them to a str, to_wire encodes it back).
_EVENT_JSON = SituationEvent.__pydantic_serializer__.to_json
_STATE_JSON = PersonState.__pydantic_serializer__.to_json
_NO_SITUATION = {"situation"}


_SOURCE_MAX = SignalEntry.model_fields["source"].metadata[0].max_length


def _trusted_signal(sig: CheckedSignal, position: str) -> bool:
    """Whether a signal entry of ``sig`` read at ``position`` may be built without validation:
    its values are those of a validated :class:`~services.core.messages.Signal` (what a
    :class:`CheckedSignal` holds, whether made here or in a check helper), the enums and the
    date of their exact types, and the position within the entry's bound."""
    return (type(sig.fund) is Fund and type(sig.purpose) is Purpose and type(sig.observed_on) is dt.date
            and len(position) <= _SOURCE_MAX)


def _entry(sig: CheckedSignal, position: str, received_s: int, fast: bool) -> SignalEntry:
    """The state's entry of an accepted signal; ``fast``: see :func:`_trusted_signal`."""
    if fast:
        return trusted(SignalEntry, {
            "signal_id": sig.signal_id, "fund": sig.fund, "category": sig.category,
            "purpose": sig.purpose, "observed_on": sig.observed_on, "territory": sig.territory,
            "sealed_ref": trusted(SealedRef, {"key_id": sig.sealed_ref[0], "value": sig.sealed_ref[1]}),
            "source": position, "received_s": received_s})
    return SignalEntry(signal_id=sig.signal_id, fund=sig.fund, category=sig.category,
                       purpose=sig.purpose, observed_on=sig.observed_on, territory=sig.territory,
                       sealed_ref=SealedRef(key_id=sig.sealed_ref[0], value=sig.sealed_ref[1]),
                       source=position, received_s=received_s)


def _new_person(pseudonym: Pseudonym, fast: bool) -> PersonState:
    """:func:`~services.core.person.new_person` of a (validated) pseudonym; ``fast``: built
    from its values, every other field at its default."""
    if fast:
        return trusted(PersonState, {"pseudonym": pseudonym, **_PERSON_DEFAULTS}, ("pseudonym",))
    return new_person(pseudonym)


#: Every field of a person's state but the pseudonym, at its default (immutable values).
_PERSON_DEFAULTS = {name: info.default for name, info in PersonState.model_fields.items()
                    if name != "pseudonym"}
