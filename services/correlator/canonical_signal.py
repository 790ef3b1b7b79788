"""A signal sent in its canonical form, read by one pattern: the checks' fast path.

Producers write a signal as its RFC 8785 form with the signature member in its sorted place
(:func:`services.core.codec.splice_signature`, :func:`~services.core.codec.append_signature`).
For such bytes the general checks do much that one pattern does at once: parse the JSON,
count its members against duplicates, prove it plain, write the canonical form of the object
without its signature, and validate every member against the model. :data:`CLEAR` and
:data:`SEALED` match exactly the canonical text of a signal (resp. a sealed signal) whose
members are all of the contract's patterns: keys in sorted order, nothing but the model's
members, each string within its pattern (ASCII letters, digits and a few signs: no escape,
no quote), the schema version "1.0", enums by their codes, at most eight conditions. A text
they match is therefore

- a JSON object without repeated names, of plain JSON, already canonical: the bytes signed
  are the text without its ``,"signature":{…}`` member (:func:`unsigned`);
- valid against the model in every respect but three, which :class:`Checker
  <services.correlator.checks.Checker>` tests on the groups: the emitter a body of the fund,
  the date and the timestamp real days (the patterns allow 31 in any month), the epoch
  within 32 bits.

Anything else (whitespace, another member order, an escape, an unknown member, a value out
of pattern) does not match and takes the general checks, which decide and say why; so do
signals the fast path finds doubtful after matching. ``tests/correlator/test_fast_paths.py``
holds both ways to the same verdicts over generated signals and mutations of their bytes.
"""

from __future__ import annotations

import re
from typing import Any

from services.core.messages import SealedMembers
from services.core.types import (
    CODE_PATTERN,
    CONSENT_REF_PATTERN,
    DATE_PATTERN,
    DEPARTEMENT_PATTERN,
    EMITTER_PATTERN,
    KEY_ID_PATTERN,
    PSEUDONYM_VALUE_PATTERN,
    SEALED_VALUE_PATTERN,
    SIGNAL_ID_PATTERN,
    SIGNATURE_VALUE_PATTERN,
    TIMESTAMP_PATTERN,
    Fund,
    Purpose,
)


def _inner(pattern: str) -> str:
    """A contract pattern (anchored ``^…$``) as a part of a larger one."""
    if not (pattern.startswith("^") and pattern.endswith("$")):  # pragma: no cover - contract patterns are
        raise ValueError(f"not an anchored pattern: {pattern}")
    return f"(?:{pattern[1:-1]})"


def _model_pattern(model: Any, field: str) -> str:
    found = [m.pattern for m in model.model_fields[field].metadata if getattr(m, "pattern", None)]
    if len(found) != 1:  # pragma: no cover - a model change this module must follow
        raise RuntimeError(f"{model.__name__}.{field}: one pattern expected, found {found}")
    return str(found[0])


def _choice(codes: list[str]) -> str:
    return "(?:" + "|".join(re.escape(c) for c in codes) + ")"


_KEY = _inner(KEY_ID_PATTERN)
_CODE = _inner(CODE_PATTERN)
_FUND = _choice([f.value for f in Fund])


def _pseudonym(name: str) -> str:
    return f'{{"key_id":"(?P<{name}_key>{_KEY})","value":"(?P<{name}_value>{_inner(PSEUDONYM_VALUE_PATTERN)})"}}'


_LEGAL_BASIS = (
    f'(?:{{"code":"(?P<law>L115-2-1)"(?:,"conditions":\\[(?P<conditions>"{_CODE}"(?:,"{_CODE}"){{0,7}})?\\])?}}'
    f'|{{"code":"(?P<consent>consentement)","consent_ref":"{_inner(CONSENT_REF_PATTERN)}"}})'
)
_HEAD = (
    f'"emitted_at":"(?P<emitted_at>{_inner(TIMESTAMP_PATTERN)})","emitter":"(?P<emitter>{_inner(EMITTER_PATTERN)})",'
    f'"fund":"(?P<fund>{_FUND})","legal_basis":{_LEGAL_BASIS},'
)
_PERSON = (
    f'"pseudonym":{_pseudonym("pseudonym")}'
    f'(?:,"pseudonym_previous":{_pseudonym("previous")})?,'
    f'"purpose":"(?P<purpose>{_choice([p.value for p in Purpose])})","schema_version":"1\\.0",'
)
_SIGNAL_ID = f'"signal_id":"(?P<signal_id>{_inner(SIGNAL_ID_PATTERN)})"'
_SIGNATURE = (f'(?P<signature>,"signature":{{"alg":"Ed25519","key_id":"(?P<signature_key>{_KEY})",'
              f'"value":"(?P<signature_value>{_inner(SIGNATURE_VALUE_PATTERN)})"}})')

#: A signal in clear, canonical, every member within its pattern.
CLEAR = re.compile(
    f'{{"category":"(?P<category>{_CODE})",{_HEAD}'
    f'"observed_on":"(?P<observed_on>{_inner(DATE_PATTERN)})",{_PERSON}'
    f'"sealed_ref":{{"key_id":"(?P<ref_key>{_KEY})","value":"(?P<ref_value>{_inner(SEALED_VALUE_PATTERN)})"}},'
    f'{_SIGNAL_ID}{_SIGNATURE},"territory":"(?P<territory>{_inner(DEPARTEMENT_PATTERN)})"}}',
    re.ASCII)
#: A sealed signal, canonical, every member within its pattern (the epoch: digits, no sign).
SEALED = re.compile(
    f'{{{_HEAD}{_PERSON}'
    f'"sealed":{{"alg":"A256GCM","epoch":(?P<epoch>[1-9][0-9]{{0,9}}),'
    f'"subject":"(?P<subject>{_inner(_model_pattern(SealedMembers, "subject"))})",'
    f'"value":"(?P<sealed_value>{_inner(_model_pattern(SealedMembers, "value"))})"}},'
    f'{_SIGNAL_ID}{_SIGNATURE}}}',
    re.ASCII)


def match(text: str) -> re.Match[str] | None:
    """The match of ``text`` (a signal's bytes decoded as ASCII) by :data:`CLEAR` or
    :data:`SEALED`, or None."""
    if text.startswith('{"category":'):
        return CLEAR.fullmatch(text)
    if text.startswith('{"emitted_at":'):
        return SEALED.fullmatch(text)
    return None


def unsigned(raw: bytes, found: re.Match[str]) -> bytes:
    """The bytes the signature covers: ``raw`` without its signature member (``raw`` is
    ASCII, so the match's character offsets are byte offsets)."""
    return raw[:found.start("signature")] + raw[found.end("signature"):]


def conditions(found: re.Match[str]) -> tuple[str, ...]:
    """The attested conditions of a matched signal (none under consent, or none listed)."""
    listed = found["conditions"]
    return tuple(listed[1:-1].split('","')) if listed else ()
