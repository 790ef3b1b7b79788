"""Ledger entries: constrained fields, no personal payload, RFC 8785 canonical bytes."""

from __future__ import annotations

import datetime as dt

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.core import codec
from services.core.messages import Pseudonym
from services.core.reasons import Reason
from services.core.types import format_timestamp
from services.ledger.entries import (
    Action,
    LedgerEntry,
    LedgerLegalBasis,
    LedgerPurpose,
    canonical_bytes,
    canonical_bytes_reference,
    entry_id_for,
    new_entry,
    parse_entry,
)
from tests.support.entries import PSEUDO, T0, make_entry


def test_fields_are_declared_in_alphabetical_order() -> None:
    """canonical_bytes relies on it (pydantic writes fields in declaration order)."""
    names = list(LedgerEntry.model_fields)
    assert names == sorted(names)
    assert list(Pseudonym.model_fields) == sorted(Pseudonym.model_fields)


def test_every_action_has_a_french_label() -> None:
    assert len(Action) >= 16
    for action in Action:
        assert action.label and action.value == action.value.lower()
    assert {f.label for f in LedgerPurpose} and {b.label for b in LedgerLegalBasis}


def test_canonical_bytes_are_rfc8785_and_roundtrip() -> None:
    entry = make_entry(3, reason=Reason.SIGNATURE_INVALIDE, count=2, ref="a" * 32)
    data = canonical_bytes(entry)
    assert data == rfc8785.dumps(entry.model_dump(mode="json"))
    assert codec.is_canonical(data)
    assert parse_entry(data) == entry
    assert b'"time":"2026-11-02T09:03:00.000000Z"' in data


@pytest.mark.parametrize("field,value", [
    ("actor", "Jean Dupont"),          # free text
    ("actor", "x"),                    # too short
    ("actor", "caf-35 (Rennes)"),
    ("entry_id", "not-hex"),
    ("case_id", "1234"),
    ("trace_id", "Z" * 32),
    ("action", "consulte_dossier_medical"),
    ("purpose", "marketing"),
    ("legal_basis", "interet_legitime"),
])
def test_fields_refuse_anything_off_pattern(field: str, value: str) -> None:
    overrides: dict[str, object] = {field: value}
    with pytest.raises(ValidationError):
        make_entry(1, **overrides)


def test_no_personal_payload_can_be_added() -> None:
    with pytest.raises(ValidationError):
        make_entry(1, nir="185057800608436")
    with pytest.raises(ValidationError):
        make_entry(1, subject={"key_id": "xk-1", "value": "Dupont"})
    entry = make_entry(1)
    with pytest.raises(ValidationError):
        entry.actor = "someone-else"  # type: ignore[misc]


def test_time_must_be_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    with pytest.raises(ValidationError):
        make_entry(1, time=dt.datetime(2026, 11, 2, 10, 0, tzinfo=paris))
    with pytest.raises(ValidationError):
        make_entry(1, time=dt.datetime(2026, 11, 2, 10, 0))


def test_deterministic_ids() -> None:
    a = entry_id_for("signalement_accepte", "f" * 32)
    assert a == entry_id_for("signalement_accepte", "f" * 32)
    assert a != entry_id_for("signalement_rejete", "f" * 32)
    assert len(a) == 32 and int(a, 16) >= 0
    e1 = new_entry(action=Action.OPPOSITION, actor="urssaf-35", purpose=LedgerPurpose.EXERCICE_DES_DROITS,
                   legal_basis=LedgerLegalBasis.RGPD_21, time=T0, natural_key=("E" * 8,), subject=PSEUDO)
    e2 = new_entry(action=Action.OPPOSITION, actor="urssaf-35", purpose=LedgerPurpose.EXERCICE_DES_DROITS,
                   legal_basis=LedgerLegalBasis.RGPD_21, time=T0, natural_key=("E" * 8,), subject=PSEUDO)
    assert e1 == e2 and canonical_bytes(e1) == canonical_bytes(e2)
    with pytest.raises(ValueError):
        new_entry(action=Action.OPPOSITION, actor="urssaf-35", purpose=LedgerPurpose.CONTROLE,
                  legal_basis=LedgerLegalBasis.RGPD_21, time=T0)


_b64 = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=43,
               max_size=43)
_hex = st.text("0123456789abcdef", min_size=32, max_size=32)
_entries = st.builds(
    LedgerEntry,
    entry_id=_hex,
    time=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 1, 1),
                      timezones=st.just(dt.UTC)),
    actor=st.sampled_from(["correlator", "caf", "caf-35", "agent.caf-35.0042", "urssaf-idf"]),
    action=st.sampled_from(Action),
    purpose=st.sampled_from(LedgerPurpose),
    legal_basis=st.sampled_from(LedgerLegalBasis),
    subject=st.none() | st.builds(Pseudonym, key_id=st.just("xk-2026-1"), value=_b64),
    case_id=st.none() | _hex,
    trace_id=st.none() | _hex,
    ref=st.none() | _hex,
    reason=st.none() | st.sampled_from(Reason),
    count=st.none() | st.integers(min_value=0, max_value=10**12),
)


@settings(max_examples=200, deadline=None)
@given(_entries)
def test_property_fast_canonical_form_is_exactly_rfc8785(entry: LedgerEntry) -> None:
    assert canonical_bytes(entry) == canonical_bytes_reference(entry)
    assert entry.time_text == format_timestamp(entry.time)
    assert parse_entry(canonical_bytes(entry)) == entry


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=2)),
                                               dt.timezone(dt.timedelta(hours=-5, minutes=-30))])))
def test_property_format_timestamp_is_the_strftime_form(moment: dt.datetime) -> None:
    """The fast path (isoformat) writes exactly what the one wire format always was."""
    try:
        utc = moment.astimezone(dt.UTC)
    except OverflowError:  # near year 1 or 9999, some offsets leave the datetime range
        return
    assert format_timestamp(moment) == utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
