"""Consent per purpose, in the order recorded, on the real broker: the fund's CLI code
(`consent record` / `consent withdraw`) → a correlator worker (subprocess) → receipts,
dead letters and situations read back with a consumer of the test's own.

A withdrawal of one purpose leaves the other; a signal for the withdrawn purpose is refused
with `consentement_retire` (consent basis and L115-2-1 alike), its dead letter keeps no
payload; a consent recorded again the same day, after the withdrawal, is honoured."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from stdnum.fr import nir as stdnum_nir

from services.core.messages import ConsentKind
from services.core.types import Fund
from services.platform.settings import Settings
from services.producer.consent import record_file
from services.producer.keys import init_exchange_key, init_fund_keys
from services.producer.sdk import Publisher, SignalInput
from tests.correlator.harness import Collector, start_worker, stop

pytestmark = pytest.mark.integration


def nir(serial: int) -> str:
    body = f"14505350{serial:05d}"  # born 1945: 55 or more, either purpose
    return body + stdnum_nir.calc_check_digits(body)


async def _consent(settings: Settings, collector: Collector, tmp_path: Path, kind: ConsentKind,
                   person: str, purposes: str, n: int) -> None:
    """Record one consent event and wait for its receipt (topics are not ordered between them)."""
    before = set(collector.receipts)
    path = tmp_path / f"consent-{n}.csv"
    path.write_text("nir;reference_consentement;finalites;date_effet\n"
                    f"{person};HELP-2026-{n:06d};{purposes};\n", encoding="utf-8")
    summary = await record_file(settings, Fund.CAF, kind, path, tmp_path / f"r{n}.csv")
    assert summary.exit_code == 0 and summary.sent == 1, summary.lines()
    await collector.until(lambda c: any(k not in before and r["signal_id"] is None
                                        for k, r in c.receipts.items()), timeout=90)
    assert all(r["status"] == "accepte" for k, r in collector.receipts.items() if k not in before)


async def _signal(settings: Settings, collector: Collector, person: str, category: str,
                  reference: str, *, purpose: str, consent: bool) -> dict[str, Any]:
    """Publish one caf signal; return its receipt."""
    before = set(collector.receipts)
    async with Publisher(settings, Fund.CAF) as pub:
        result = await pub.publish([SignalInput(
            nir=person, category=category, observed_on=dt.date.today() - dt.timedelta(days=2),
            departement="35", reference=reference, purpose=purpose,
            consent_ref="HELP-2026-000001" if consent else None)])
    assert not result.rejected and result.sent == 1, result

    def new(c: Collector) -> list[dict[str, Any]]:
        return [r for k, r in c.receipts.items() if k not in before and r["signal_id"] is not None]
    await collector.until(lambda c: bool(new(c)), timeout=90)
    (receipt,) = new(collector)
    return receipt


async def test_withdrawal_per_purpose_and_same_day_consent(settings: Settings, tmp_path: Path) -> None:
    (settings.var_dir / "correlator").mkdir(parents=True, exist_ok=True)
    init_exchange_key(settings.key_dir)
    init_fund_keys(settings.key_dir, Fund.CAF)
    person = nir(7171)
    collector = Collector(settings.bootstrap_servers or "", settings.database_url)
    await collector.start()
    worker = start_worker(settings, "corr-consent-purposes", tmp_path / "worker.log")
    try:
        await _consent(settings, collector, tmp_path, "consentement_donne", person,
                       "acces_aux_droits,prevention_perte_autonomie", 1)
        first = await _signal(settings, collector, person, "separation", "DOS-1",
                              purpose="acces_aux_droits", consent=True)
        assert first["status"] == "accepte", first["reason"]

        await _consent(settings, collector, tmp_path, "consentement_retire", person, "acces_aux_droits", 2)
        refused = await _signal(settings, collector, person, "impaye_loyer", "DOS-2",
                                purpose="acces_aux_droits", consent=True)
        assert (refused["status"], refused["reason"]) == ("rejete", "consentement_retire"), refused
        by_law = await _signal(settings, collector, person, "deces_conjoint", "DOS-3",
                               purpose="acces_aux_droits", consent=False)
        assert (by_law["status"], by_law["reason"]) == ("rejete", "consentement_retire"), by_law
        other = await _signal(settings, collector, person, "deces_conjoint", "DOS-4",
                              purpose="prevention_perte_autonomie", consent=True)
        assert other["status"] == "accepte", other  # the other purpose goes on

        # The dead letters of the refusals keep nothing of the message.
        await collector.until(lambda c: len([d for d in c.deadletters.values()
                                             if d["reason"] == "consentement_retire"]) == 2)
        for d in collector.deadletters.values():
            if d["reason"] == "consentement_retire":
                assert d["raw"] == "" and d["detail"].endswith(";raw_withheld"), d

        # Recorded again the same day, after the withdrawal: honoured.
        await _consent(settings, collector, tmp_path, "consentement_donne", person, "acces_aux_droits", 3)
        again = await _signal(settings, collector, person, "impaye_loyer", "DOS-5",
                              purpose="acces_aux_droits", consent=True)
        assert again["status"] == "accepte", again
    finally:
        stop(worker)
        await collector.stop()
