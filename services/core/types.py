"""Constrained value types shared by every message of the contract.

Each type mirrors one ``$defs`` entry of ``schemas/common.schema.json``; the contract tests
check that both accept and refuse the same values. Patterns are tight on purpose: there is
no field where free text could slip through.
"""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Annotated, Any, cast

from pydantic import AwareDatetime, BeforeValidator, GetCoreSchemaHandler, PlainSerializer
from pydantic import StringConstraints as S
from pydantic_core.core_schema import CoreSchema, to_string_ser_schema


class WireEnum(StrEnum):
    """A string enum whose JSON form is its code, written by pydantic-core as the ``str`` the
    member is, without reading ``Enum.value`` (a descriptor written in Python, read for every
    enum field pydantic writes: the person states the correlator stores hold a score of them).
    Validation, Python-mode dumps and JSON Schema are a plain enum's; the bytes are the same
    (``tests/core/test_codec.py``)."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return cast(CoreSchema, {**handler(source), "serialization": to_string_ser_schema(when_used="json")})


class Fund(WireEnum):
    """The mandatory-scheme bodies that take part in the exchange."""

    URSSAF = "urssaf"
    CPAM = "cpam"
    CAF = "caf"
    CARSAT = "carsat"
    MSA = "msa"


class Purpose(WireEnum):
    """Purposes that article L115-2-1 allows."""

    ACCES_AUX_DROITS = "acces_aux_droits"
    PREVENTION_PERTE_AUTONOMIE = "prevention_perte_autonomie"


class Priority(WireEnum):
    ROUGE = "rouge"
    ORANGE = "orange"
    VERT = "vert"


class Outcome(WireEnum):
    """How a follow-up ends (docs/domain.md, follow-ups)."""

    PROPOSE = "propose"
    ACCEPTE = "accepte"
    REFUSE = "refuse"
    ACCORDE = "accorde"
    NON_ELIGIBLE = "non_eligible"
    SANS_SUITE = "sans_suite"


DEPARTEMENT_PATTERN = r"^(0[1-9]|[1-8][0-9]|9[0-5]|2A|2B|97[1-6])$"
EMITTER_PATTERN = r"^(urssaf|cpam|caf|carsat|msa)-[a-z0-9]{2,8}$"
CODE_PATTERN = r"^[a-z][a-z0-9_]{2,47}$"
# Identifiers are segmented, each segment short, so that none can carry a 15-digit NIR.
KEY_ID_PATTERN = r"^[a-z]{2,8}(-[a-z0-9]{1,12}){1,4}$"  # e.g. xk-20261123-a1b2, caf-sig-20261123-e5f6
SIGNAL_ID_PATTERN = r"^[0-9a-f]{32}$"
EVENT_ID_PATTERN = r"^[0-9a-f]{32}$"
CONSENT_REF_PATTERN = r"^[A-Z]{2,10}(-[A-Z0-9]{1,12}){1,4}$"  # e.g. HELP-2026-000123
TOPIC_PATTERN = r"^help\.[a-z0-9.-]{3,120}$"
ACTOR_PATTERN = r"^[a-z][a-z-]{1,15}(\.[a-z0-9-]{1,12}){0,3}$"  # e.g. agent.caf-35.0042
# RFC 3339 in UTC only ("Z"); pydantic alone would also take "2026-11-05 10:00" and the like.
TIMESTAMP_PATTERN = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?Z$"
)
DATE_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"
# The casebook's case number: département-year-month of opening-sequence, e.g. 35-2026-11-0042.
CASE_NUMBER_PATTERN = r"^(0[1-9]|[1-8][0-9]|9[0-5]|2A|2B|97[1-6])-\d{4}-(0[1-9]|1[0-2])-\d{4,7}$"

# base64url without padding, sized to what each value really is.
PSEUDONYM_VALUE_PATTERN = r"^[A-Za-z0-9_-]{43}$"  # HMAC-SHA256: 32 bytes
DIGEST_PATTERN = r"^[A-Za-z0-9_-]{43}$"  # SHA-256: 32 bytes
SIGNATURE_VALUE_PATTERN = r"^[A-Za-z0-9_-]{86}$"  # Ed25519: 64 bytes
SEALED_VALUE_PATTERN = r"^[A-Za-z0-9_-]{40,160}$"  # nonce 12 + binding 8 + ref 2..64 + tag 16 bytes: 51..134

Departement = Annotated[str, S(pattern=DEPARTEMENT_PATTERN)]
Emitter = Annotated[str, S(pattern=EMITTER_PATTERN)]
Code = Annotated[str, S(pattern=CODE_PATTERN)]
KeyId = Annotated[str, S(pattern=KEY_ID_PATTERN)]
SignalId = Annotated[str, S(pattern=SIGNAL_ID_PATTERN)]
EventId = Annotated[str, S(pattern=EVENT_ID_PATTERN)]
ConsentRef = Annotated[str, S(pattern=CONSENT_REF_PATTERN)]
TopicName = Annotated[str, S(pattern=TOPIC_PATTERN)]
Actor = Annotated[str, S(pattern=ACTOR_PATTERN)]
PseudonymValue = Annotated[str, S(pattern=PSEUDONYM_VALUE_PATTERN)]
Digest = Annotated[str, S(pattern=DIGEST_PATTERN)]
CaseNumber = Annotated[str, S(pattern=CASE_NUMBER_PATTERN)]
SignatureValue = Annotated[str, S(pattern=SIGNATURE_VALUE_PATTERN)]
SealedValue = Annotated[str, S(pattern=SEALED_VALUE_PATTERN)]

_TS = re.compile(TIMESTAMP_PATTERN)


def _check_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        if not _TS.match(value):
            raise ValueError("timestamp must be RFC 3339 in UTC, e.g. 2026-11-05T10:00:00Z")
        # Parsed here: after a before-validator, strict mode no longer reads JSON strings.
        return dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime) and value.utcoffset() != dt.timedelta(0):
        raise ValueError("timestamp must be in UTC")
    return value


def format_timestamp(value: dt.datetime) -> str:
    """The one textual form of a timestamp on the wire (UTC, microseconds, 'Z').

    The same text as ``strftime("%Y-%m-%dT%H:%M:%S.%fZ")`` (a test holds them together),
    through the C ``isoformat``, which is faster: the ledger formats one per entry it
    appends. Years before 1000 take ``strftime``, whose ``%Y`` does not pad them."""
    utc = value if value.tzinfo is dt.UTC else value.astimezone(dt.UTC)
    if utc.year < 1000:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.isoformat(timespec="microseconds")[:26] + "Z"


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_check_timestamp),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
]


# pydantic's strict date takes exactly YYYY-MM-DD from JSON, as JSON Schema's "date" format.
Date = dt.date


def _integral_float(value: Any) -> Any:
    # JSON Schema counts 1.0 as an integer; strict pydantic would not. Agree with the schema.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral_float)]
