"""The fund's side of a rotation or migration window (contract §4.3): every person asked under
the newest and the previous version (each batch's proof checked under its own pinned key),
or linked to its v1 pseudonym during a v1 → v2 migration; outside a window, no link."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from services.core import oprf
from services.core.pseudonymisation import Refused
from services.core.reasons import Reason
from services.core.signing import b64u, b64u_decode
from services.core.types import Fund
from services.platform.settings import Settings, load_settings
from services.producer.keys import init_exchange_key, load_exchange_key
from services.producer.pseudonym import pseudonym as v1_pseudonym
from services.producer.pseudonym_v2 import PseudonymClient, oprf_input
from services.pseudonymiser.keystore import init_key, load_evaluators
from services.pseudonymiser.service import Pseudonymiser

NIRS = ["185057800608491", "253072A07300443"]


def _settings(tmp_path: Path, **extra: object) -> Settings:
    return load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "var" / "keys",
                         pseudonymiser_cache=False, **extra)


def _in_process(settings: Settings) -> Pseudonymiser:
    evaluators = load_evaluators(settings)
    return Pseudonymiser(evaluators, max(evaluators), quota_per_day=1000, batch_limit=100)


def _transport(service: Pseudonymiser):  # type: ignore[no-untyped-def]
    def send(doc: dict[str, object]) -> dict[str, object]:
        blinded = [b64u_decode(x) for x in doc["blinded"]]  # type: ignore[attr-defined]
        answer = service.evaluate(Fund(doc["fund"]), str(doc["request_id"]), blinded, doc.get("key_version"))  # type: ignore[arg-type]
        return {"key_version": answer.key_version, "evaluated": b64u(answer.evaluated)}
    return send


def test_outside_a_window_there_is_no_link(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    init_exchange_key(settings.key_dir)
    init_key(settings)
    client = PseudonymClient.from_settings(settings, Fund.CAF, transport=_transport(_in_process(settings)))
    assert client.previous_version is None and client.previous(NIRS[0]) is None


def test_in_an_overlap_window_each_person_is_asked_under_both_versions(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    init_exchange_key(settings.key_dir)
    old = init_key(settings, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    new = init_key(settings, now=dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    evaluators = load_evaluators(settings)
    service = Pseudonymiser(evaluators, new, quota_per_day=1000, batch_limit=100)
    client = PseudonymClient.from_settings(settings, Fund.CAF, transport=_transport(service))
    client.prefetch(NIRS)
    assert (client.key_version, client.previous_version, client.batches) == (new, old, 2)
    for nir in NIRS:
        expect = {v: oprf.pseudonym_value_v2(evaluators[v].evaluate(oprf_input(nir))) for v in (old, new)}
        assert client.pseudonym(nir) == {"key_id": new, "value": expect[new]}
        assert client.previous(nir) == {"key_id": old, "value": expect[old]}


def test_a_previous_version_answered_with_another_key_publishes_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    init_exchange_key(settings.key_dir)
    old = init_key(settings, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    new = init_key(settings, now=dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    evaluators = load_evaluators(settings)
    rogue = oprf.Evaluator.from_seed(old, b"\x07" * 32, b"help-exchange/pseudonym/v2")
    service = Pseudonymiser({**evaluators, old: rogue}, new, quota_per_day=1000, batch_limit=100)
    client = PseudonymClient.from_settings(settings, Fund.CAF, transport=_transport(service))
    with pytest.raises(Refused) as caught:
        client.prefetch(NIRS)
    assert caught.value.reason is Reason.PREUVE_INVALIDE


def test_in_a_migration_window_the_link_is_the_v1_pseudonym(tmp_path: Path) -> None:
    settings = _settings(tmp_path, pseudonym_scheme="v2", pseudonym_migration="v1")
    init_exchange_key(settings.key_dir)
    version = init_key(settings)
    client = PseudonymClient.from_settings(settings, Fund.CAF, transport=_transport(_in_process(settings)))
    key_id, key = load_exchange_key(settings.key_dir)
    assert client.pseudonym(NIRS[0])["key_id"] == version
    assert client.previous(NIRS[0]) == v1_pseudonym(key_id, key, NIRS[0])


def test_the_running_service_takes_a_new_version_and_drops_a_destroyed_one(tmp_path: Path) -> None:
    """Announce and destroy without a restart: the service looks at public.json per batch."""
    from services.pseudonymiser.keystore import destroy_key
    from services.pseudonymiser.service import build_service

    settings = _settings(tmp_path)
    init_exchange_key(settings.key_dir)
    old = init_key(settings, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    service = build_service(settings)
    blinded = [oprf.blind(oprf_input(NIRS[0])).element]
    new = init_key(settings, now=dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    assert service.evaluate(Fund.CAF, "a" * 32, blinded, new).key_version == new
    assert service.current_version == new
    destroy_key(settings, old, lambda version, at: None)
    with pytest.raises(Refused) as caught:
        service.evaluate(Fund.CAF, "b" * 32, blinded, old)
    assert caught.value.reason is Reason.VERSION_CLE_INCONNUE
