"""The producer's fast build path (``SignalBuilder.build``) against its reference
(``SignalBuilder.build_reference``): the same bytes for every record, or the same refusal.

The reference checks the message's plainness, signs with ``cryptography`` (OpenSSL) and
validates the final bytes against the contract model; the fast path does none of the three.
Equal bytes prove the fast path's signals pass the model and carry OpenSSL's signature."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.core.messages import Signal
from services.core.signing import signing_function
from services.core.types import Fund, Purpose
from services.errors import Rejected
from services.platform.settings import Settings
from services.producer.keys import init_exchange_key, init_fund_keys, load_fund_secrets
from services.producer.outbox import Row
from services.producer.sdk import SignalBuilder, SignalInput, today_paris
from services.producer.seal import Sealer
from tests.support.extracts import make_nir, wrong_key

TODAY = today_paris()
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> SignalBuilder:
    from services.platform.settings import load_settings

    base = tmp_path_factory.mktemp("fast-path")
    # Signals in clear: the two paths compared on the clear form (the sealed one is
    # tests/producer/test_signal_sealing.py's).
    settings: Settings = load_settings(var_dir=base / "var", key_dir=base / "var" / "keys",
                                       signal_sealing="accepted")
    init_fund_keys(settings.key_dir, Fund.CAF)
    init_exchange_key(settings.key_dir)
    built = SignalBuilder(settings, Fund.CAF)
    secrets = load_fund_secrets(settings.key_dir, Fund.CAF)
    # One fixed nonce, so that the two paths seal a reference to the same bytes.
    built._sealer = Sealer(Fund.CAF, secrets.sealing_key_id, secrets.sealing_keys[secrets.sealing_key_id],
                           nonces=lambda n: b"\x07" * n)
    return built


CODES = ["separation", "deces_conjoint", "impaye_loyer", "perte_logement", "parent_isole", "ouverture_rsa",
         "naissance_premier_ou_multiple", "logement_non_decent", "arret_maladie_long", "inconnue", " separation "]
DEPTS = ["35", "2A", "2b", "971", "5", "75", "00", "XX", " 61 ", "976"]


@st.composite
def records(draw: st.DrawFn) -> SignalInput:
    rng = random.Random(draw(st.integers(0, 2**32)))
    nir = make_nir(rng)
    nir = draw(st.sampled_from([nir, nir, nir, wrong_key(nir), nir[:10], f"{nir[0]} {nir[1:3]} {nir[3:]}"]))
    day = TODAY - dt.timedelta(days=draw(st.integers(-5, 800)))
    observed: dt.date | str = draw(st.sampled_from([day, day.isoformat(), day.strftime("%d/%m/%Y"), "2026-13-01"]))
    reference = draw(st.one_of(st.from_regex(r"[A-Za-z0-9/_.-]{2,64}", fullmatch=True),
                               st.sampled_from(["DOS-1", "x", "Jean Dupont", "DOS 1", "é-1"])))
    consent = draw(st.one_of(st.none(), st.sampled_from(["HELP-2026-000123", "BAD", "CAF-A1-B2"])))
    purpose = draw(st.one_of(st.none(), st.sampled_from([p.value for p in Purpose] + ["autre"])))
    return SignalInput(nir=nir, category=draw(st.sampled_from(CODES)), observed_on=observed,
                       departement=draw(st.sampled_from(DEPTS)), reference=reference,
                       consent_ref=consent, purpose=purpose)


def _outcome(build: object, rec: SignalInput) -> object:
    try:
        return build(rec, today=TODAY, now=NOW, partitions=8)  # type: ignore[operator]
    except Rejected as exc:
        return (exc.reason, exc.field)


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rec=records())
def test_fast_build_equals_reference(builder: SignalBuilder, rec: SignalInput) -> None:
    fast, reference = _outcome(builder.build, rec), _outcome(builder.build_reference, rec)
    assert fast == reference
    event("built" if isinstance(fast, Row) else f"refused {fast[0].value}")  # type: ignore[index]
    if isinstance(fast, Row):  # built: the bytes pass the contract model
        Signal.model_validate_json(fast.value)


def test_some_records_are_built_and_some_refused(builder: SignalBuilder) -> None:
    """The strategy reaches both outcomes (a property over refusals only would prove little)."""
    rng = random.Random(5)
    good = SignalInput(nir=make_nir(rng), category="separation", observed_on=TODAY - dt.timedelta(days=3),
                       departement="35", reference="DOS-000042")
    row = builder.build(good, today=TODAY, now=NOW, partitions=8)
    assert row == builder.build_reference(good, today=TODAY, now=NOW, partitions=8)
    with pytest.raises(Rejected):
        builder.build(SignalInput(nir="123", category="separation", observed_on=TODAY, departement="35",
                                  reference="DOS-1"), today=TODAY)


def test_libsodium_signs_as_openssl() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    rng = random.Random(9)
    for _ in range(50):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        data = rng.randbytes(rng.randint(0, 2000))
        assert signing_function(key)(data) == key.sign(data)
