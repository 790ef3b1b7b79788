"""The wire contract as pydantic models: one class per JSON Schema in ``schemas/``.

All models are frozen, strict (no coercion: ``"1"`` is not ``1``) and refuse unknown
fields, so that they accept and refuse exactly what the published JSON Schemas do; the
contract tests run the same examples through both. Parse wire bytes with
:func:`parse` (``model_validate_json``), never with ``json.loads`` plus ``model_validate``:
strict mode only reads dates and timestamps from JSON text.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Annotated, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from services.core.reasons import Reason
from services.core.signing import b64u
from services.core.types import (
    Actor,
    CaseNumber,
    Code,
    ConsentRef,
    Date,
    Departement,
    Digest,
    Emitter,
    EventId,
    Fund,
    Int,
    KeyId,
    Outcome,
    Priority,
    PseudonymValue,
    Purpose,
    SealedValue,
    SignalId,
    SignatureValue,
    Timestamp,
    TopicName,
)

SCHEMA_VERSION = "1.0"
SchemaVersion = Literal["1.0"]


class Frozen(BaseModel):
    """Base of every contract model."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Pseudonym(Frozen):
    """A person, as the exchange knows them: HMAC-SHA256 of the NIR under exchange key ``key_id``."""

    key_id: KeyId
    value: PseudonymValue


class SealedRef(Frozen):
    """The fund's own file reference, sealed with a key only that fund holds."""

    key_id: KeyId
    value: SealedValue


class Signature(Frozen):
    """Ed25519 signature by the emitting fund over the RFC 8785 form of the message."""

    key_id: KeyId
    alg: Literal["Ed25519"]
    value: SignatureValue


class LegalBasisLaw(Frozen):
    """Article L115-2-1 CSS; ``conditions`` lists the policy conditions the fund attests."""

    code: Literal["L115-2-1"]
    conditions: Annotated[list[Code], Field(max_length=8)] = Field(default_factory=list)


class LegalBasisConsent(Frozen):
    """The person's consent (the HELP questionnaire route), recorded under ``consent_ref``."""

    code: Literal["consentement"]
    consent_ref: ConsentRef


LegalBasis = Annotated[LegalBasisLaw | LegalBasisConsent, Field(discriminator="code")]


def _emitter_matches_fund(fund: Fund, emitter: str) -> None:
    if not emitter.startswith(f"{fund.value}-"):
        raise ValueError(f"emitter must be a body of fund {fund.value!r}")


class FundMessage(Frozen):
    """A message a fund emits (signal, consent, reveal): its emitter must be one of that
    fund's bodies, so a fund's key can only speak for its own bodies."""

    if TYPE_CHECKING:  # the subclasses declare the fields, each in its contract's order
        fund: Fund
        emitter: str

    @model_validator(mode="after")
    def _emitter_of_fund(self) -> Self:
        _emitter_matches_fund(self.fund, self.emitter)
        return self


class LinkedMessage(FundMessage):
    """A message that may link its person to the previous key version or scheme: the
    ``pseudonym_previous`` member, during a rotation or migration window only (contract §4.3),
    is absent otherwise, never ``null`` on the wire. The subclasses declare the field, each in
    its contract's order."""

    if TYPE_CHECKING:
        pseudonym_previous: Pseudonym | None

    @field_validator("pseudonym_previous", mode="before", check_fields=False)
    @classmethod
    def _absent_not_null(cls, value: object) -> object:
        if value is None:  # only an explicit null gets here: the member is absent or an object
            raise ValueError("pseudonym_previous is absent or an object, never null")
        return value

    @model_serializer(mode="wrap")
    def _omit_absent_link(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> object:
        out = handler(self)
        if isinstance(out, dict) and out.get("pseudonym_previous", 0) is None:
            del out["pseudonym_previous"]
        return out


class Signal(LinkedMessage):
    """A pseudonymised fragility signal, published by a fund on ``help.signals.<fund>.v1``."""

    signal_id: SignalId
    schema_version: SchemaVersion
    fund: Fund
    emitter: Emitter
    category: Code
    observed_on: Date
    emitted_at: Timestamp
    territory: Departement
    pseudonym: Pseudonym
    #: During a rotation or migration window only: the same person under the previous key
    #: version or scheme (contract §4.3). Absent otherwise; never ``null`` on the wire.
    pseudonym_previous: Pseudonym | None = None
    sealed_ref: SealedRef
    legal_basis: LegalBasis
    purpose: Purpose
    signature: Signature


class SignalContent(Frozen):
    """What a sealed signal's ``sealed`` member holds once opened: the person members of a
    signal (:mod:`services.core.signal_seal` says how it is sealed)."""

    category: Code
    observed_on: Date
    territory: Departement
    sealed_ref: SealedRef


class SealedMembers(Frozen):
    """A signal's person members sealed (AES-256-GCM) under the fund's key for that person:
    ``subject`` and ``epoch`` name the person's data key the fund's key is derived from,
    ``value`` = b64url(nonce 12 ‖ ciphertext ‖ tag 16) (contract §2.1)."""

    alg: Literal["A256GCM"]
    subject: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    epoch: Annotated[Int, Field(ge=1, le=4_294_967_295)]
    value: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{80,600}$")]


class SealedSignal(LinkedMessage):
    """A signal whose person members (category, observed_on, territory, sealed_ref) travel
    sealed in ``sealed``, on ``help.signals.<fund>.v1``: once the person's data keys are
    destroyed (objection, withdrawal, purge), no copy of it can be read again."""

    signal_id: SignalId
    schema_version: SchemaVersion
    fund: Fund
    emitter: Emitter
    emitted_at: Timestamp
    pseudonym: Pseudonym
    pseudonym_previous: Pseudonym | None = None
    legal_basis: LegalBasis
    purpose: Purpose
    sealed: SealedMembers
    signature: Signature


class SourcePosition(Frozen):
    """Where a consumed message was read."""

    topic: TopicName
    partition: Annotated[Int, Field(ge=0, le=100_000)]
    offset: Annotated[Int, Field(ge=0)]


class Receipt(Frozen):
    """The correlator's answer to a fund about one message, on ``help.receipts.<fund>.v1``."""

    schema_version: SchemaVersion
    receipt_id: EventId
    fund: Fund
    signal_id: SignalId | None
    status: Literal["accepte", "rejete"]
    reason: Reason | None
    source: SourcePosition
    processed_at: Timestamp

    @model_validator(mode="after")
    def _reason_iff_rejected(self) -> Self:
        if (self.status == "rejete") != (self.reason is not None):
            raise ValueError("a rejected receipt needs a reason, an accepted one has none")
        return self


class SharedCategory(Frozen):
    """One category of a situation, and who may see it (need to know)."""

    code: Code
    fund: Fund
    purposes: Annotated[list[Purpose], Field(min_length=1, max_length=2)]
    visible_to: Annotated[list[Fund], Field(min_length=1, max_length=5)]


class FundRef(Frozen):
    """One involved fund's sealed reference: only that fund can open it."""

    fund: Fund
    sealed_ref: SealedRef


SituationKind = Literal["ouverte", "mise_a_jour", "fermee", "rouverte"]


class SituationEvent(Frozen):
    """A shared situation changed, on ``help.situations.v1`` (key: situation id)."""

    schema_version: SchemaVersion
    event_id: EventId
    situation_id: EventId
    version: Annotated[Int, Field(ge=1)]
    kind: SituationKind
    occurred_at: Timestamp
    territory: Departement
    pseudonym: Pseudonym
    funds: Annotated[list[Fund], Field(min_length=1, max_length=5)]
    categories: Annotated[list[SharedCategory], Field(min_length=1, max_length=64)]
    purposes: Annotated[list[Purpose], Field(min_length=1, max_length=2)]
    priority: Priority
    rules: Annotated[list[Code], Field(max_length=16)]
    first_signal_on: Date
    last_signal_on: Date
    refs: Annotated[list[FundRef], Field(max_length=64)]


class FollowupEvent(Frozen):
    """A fund's follow-up ("suite donnée") to a situation, on ``help.followups.v1``."""

    schema_version: SchemaVersion
    event_id: EventId
    situation_id: EventId
    territory: Departement
    fund: Fund
    action: Code
    outcome: Outcome
    recorded_at: Timestamp
    recorded_by: Actor


class SealedDetail(Frozen):
    """What a message keeps readable only while its key exists (crypto-shredding): AES-256-GCM,
    ``value`` = b64url(nonce 12 ‖ ciphertext ‖ tag 16); the key and the associated data are
    the message kind's (see :mod:`services.casebook.casekeys`)."""

    alg: Literal["A256GCM"]
    value: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{40,400}$")]


class SealedFollowupEvent(Frozen):
    """A follow-up as ``help.followups.v1`` carries it: what says what was done for the
    person (``action``, ``outcome``) sealed under the case's key, destroyed when the case is
    erased (objection, withdrawal, purge), so every copy on the topic becomes unreadable at
    once; what the ledger enters (who, when, which fund and case) stays readable."""

    schema_version: SchemaVersion
    event_id: EventId
    situation_id: EventId
    territory: Departement
    fund: Fund
    recorded_at: Timestamp
    recorded_by: Actor
    sealed: SealedDetail


class SealedSituation(Frozen):
    """A situation event's person members sealed under the person's data key: ``value`` is
    the base64 (RFC 4648 §4, padded) of the sealed value of :mod:`services.platform.datakeys` (magic, subject, epoch,
    nonce, AES-256-GCM ciphertext and tag) whose plaintext is the whole
    :class:`SituationEvent`; associated data: the topic, the subject and the epoch."""

    alg: Literal["A256GCM"]
    value: Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]+={0,2}$", min_length=80, max_length=65536)]


class SealedSituationEvent(Frozen):
    """A situation event as ``help.situations.v1`` carries it when the correlator seals person
    data: everything about the person (pseudonym, categories, funds, sealed references, dates,
    priority, rules, purposes) in ``sealed``, under the person's current data key, which every
    erasure destroys; what names the event (its id, the situation's id, the version: the key
    of the compacted record and what the ledger names) stays readable."""

    schema_version: SchemaVersion
    event_id: EventId
    situation_id: EventId
    version: Annotated[Int, Field(ge=1)]
    sealed: SealedSituation


def parse_situation(value: bytes) -> SituationEvent | SealedSituationEvent:
    """A record of ``help.situations.v1``: sealed (what the correlator publishes) or, written
    by an earlier version or a worker without a key table, in clear. Raises as :func:`parse`."""
    try:
        sealed = "sealed" in json.loads(value)
    except (ValueError, TypeError):  # not JSON, or not an object: the model says why
        sealed = False
    return parse(SealedSituationEvent, value) if sealed else parse(SituationEvent, value)


def parse_followup(value: bytes) -> FollowupEvent | SealedFollowupEvent:
    """A record of ``help.followups.v1``: sealed (what the exchange publishes) or, written
    by an earlier version, in clear. Raises as :func:`parse`."""
    try:
        sealed = "sealed" in json.loads(value)
    except (ValueError, TypeError):  # not JSON, or not an object: the model says why
        sealed = False
    return parse(SealedFollowupEvent, value) if sealed else parse(FollowupEvent, value)


ConsentKind = Literal["consentement_donne", "consentement_retire", "opposition"]


class ConsentEvent(FundMessage):
    """A person's consent, its withdrawal, or an objection, on ``help.consents.v1``."""

    schema_version: SchemaVersion
    event_id: EventId
    kind: ConsentKind
    fund: Fund
    emitter: Emitter
    pseudonym: Pseudonym
    purposes: Annotated[list[Purpose], Field(min_length=1, max_length=2)]
    consent_ref: ConsentRef
    effective_at: Timestamp
    signature: Signature


class RevealEvent(FundMessage):
    """A fund's user opened one of the fund's own sealed references, on ``help.reveals.v1``.

    What the ledger needs to say who revealed which case's reference, when and why, and
    nothing more: the case number the reference was listed under (None if the export did not
    show one before it), and the SHA-256 of the sealed value, by which the audit sink checks
    that the case really holds this fund's seal. Never the reference, never the seal itself.
    """

    schema_version: SchemaVersion
    event_id: EventId
    fund: Fund
    emitter: Emitter
    actor: Actor
    purpose: Purpose
    case_number: CaseNumber | None
    sealed_digest: Digest
    revealed_at: Timestamp
    signature: Signature


def sealed_digest(value: str) -> str:
    """What a :class:`RevealEvent` carries of a seal: SHA-256 of its wire value, base64url."""
    return b64u(hashlib.sha256(value.encode("ascii")).digest())


class DeadLetterEnvelope(Frozen):
    """The members of a refused message that say what kind of message it was and who sent
    it, never about whom: each one only if the message holds it in its contract form (None
    otherwise: nothing the sender wrote is echoed)."""

    #: The message's ``schema_version`` if it looks like a version number (``1.0``, ``2.1``).
    schema_version: Annotated[str, Field(pattern=r"^[0-9]{1,3}\.[0-9]{1,3}$")] | None
    fund: Fund | None
    emitter: Emitter | None
    emitted_at: Timestamp | None


class DeadLetter(Frozen):
    """A message the correlator could not accept, on ``help.deadletter.v1``: where it was
    read, why it was refused, the size and digest of its bytes; its payload only sealed
    under a verified person's data key (contract §11)."""

    schema_version: SchemaVersion
    deadletter_id: EventId
    source: SourcePosition
    fund: Fund | None
    signal_id: SignalId | None
    reason: Reason
    # Machine-made: a JSON pointer and an error kind, never a value copied from the input.
    detail: Annotated[str, Field(max_length=300, pattern=r"^[\x20-\x7e]*$")]
    #: Base64 of the payload sealed under the person's data key (``;raw_sealed``), else empty.
    raw: Annotated[str, Field(max_length=1_400_000, pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
    #: Size and SHA-256 (hex) of the bytes received, whether kept or not.
    raw_size: Annotated[Int, Field(ge=0)]
    raw_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    envelope: DeadLetterEnvelope | None
    received_at: Timestamp


M = TypeVar("M", bound=Frozen)


def parse(model: type[M], data: bytes | str) -> M:
    """Validate wire bytes against ``model`` (raises pydantic.ValidationError)."""
    return model.model_validate_json(data)


def to_wire(message: Frozen) -> bytes:
    """The JSON bytes that go on a topic."""
    return message.model_dump_json(exclude_none=False).encode()


#: Every contract model, by the name of its JSON Schema file (``schemas/<name>.schema.json``).
MODELS: dict[str, type[Frozen]] = {
    "signal": Signal,
    "sealed_signal": SealedSignal,
    "receipt": Receipt,
    "situation": SituationEvent,
    "followup": FollowupEvent,
    "sealed_followup": SealedFollowupEvent,
    "sealed_situation": SealedSituationEvent,
    "consent": ConsentEvent,
    "reveal": RevealEvent,
    "deadletter": DeadLetter,
}
