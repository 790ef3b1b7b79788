"""The simulator: valid synthetic NIRs, realistic sizes and faults, a ground truth that can fail."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from pathlib import Path

import pytest
from stdnum.fr import nir as stdnum_nir

from services.errors import InputError
from services.simulator.cli import simulate
from services.simulator.extracts import BAD_SHARE, plan_lines
from services.simulator.nir import synthetic_nir, wrong_key
from services.simulator.population import TERRITORIES, Month, Person, SimSignal, expected_volumes, generate
from services.simulator.truth import ground_truth

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
TODAY = dt.date(2026, 11, 23)


def test_synthetic_nirs_are_valid_for_an_independent_library_corsica_included() -> None:
    rng = random.Random(7)
    for dept in ("35", "61", "2A", "2B", "97"):
        for _ in range(200):
            nir = synthetic_nir(rng, sex=rng.randint(1, 2), birth_year=rng.randint(1930, 2005),
                                birth_month=rng.randint(1, 12), departement=dept)
            assert stdnum_nir.is_valid(nir), nir
            assert not stdnum_nir.is_valid(wrong_key(nir)), nir


def test_same_seed_same_month_and_another_seed_another(tmp_path: Path) -> None:
    a = simulate("61", "2026-11", tmp_path / "a", seed=3, schemas=SCHEMAS, today=TODAY)
    b = simulate("61", "2026-11", tmp_path / "b", seed=3, schemas=SCHEMAS, today=TODAY)
    c = simulate("61", "2026-11", tmp_path / "c", seed=4, schemas=SCHEMAS, today=TODAY)
    assert (tmp_path / "a" / "caf.csv").read_bytes() == (tmp_path / "b" / "caf.csv").read_bytes()
    assert a["situations"] == b["situations"]
    assert (tmp_path / "a" / "caf.csv").read_bytes() != (tmp_path / "c" / "caf.csv").read_bytes()
    assert c["situations"]


@pytest.mark.parametrize("territory", sorted(TERRITORIES))
def test_sizes_follow_the_domain_figures(territory: str) -> None:
    month = generate(territory, "2026-11", seed=1, today=TODAY)
    volumes = expected_volumes(TERRITORIES[territory])
    by_fund: dict[str, int] = {}
    for person in month.persons:
        for s in person.signals:
            by_fund[s.fund] = by_fund.get(s.fund, 0) + 1
            assert month.first_day <= s.observed_on <= TODAY  # never in the future
    for fund, expected in volumes.items():
        assert expected <= by_fund[fund] <= expected * 1.8, (fund, by_fund[fund], expected)
    lines = [line for fund_lines in plan_lines(month).values() for line in fund_lines]
    bad = sum(line.fault is not None for line in lines) / len(lines)
    assert BAD_SHARE / 2 < bad < BAD_SHARE * 2
    shared = sum(len({s.fund for s in p.signals}) >= 2 for p in month.persons)
    assert 10 <= shared <= 400  # "tens a month per département"


def test_extracts_carry_nirs_only_in_the_nir_column_and_truth_carries_none(tmp_path: Path) -> None:
    doc = simulate("35", "2026-11", tmp_path, seed=1, schemas=SCHEMAS, today=TODAY)
    header = (tmp_path / "caf.csv").read_text(encoding="utf-8-sig").splitlines()[0]
    assert header == "nir;categorie;date_observation;departement;reference_dossier;finalite"
    truth_text = (tmp_path / "verite_terrain.json").read_text()
    assert not [m for m in re.findall(r"[12]\d{12}\d{2}", truth_text) if stdnum_nir.is_valid(m)]
    assert json.loads(truth_text)["situations"] == doc["situations"]


def _month(*people: list[SimSignal]) -> Month:
    persons = [Person(i, "independant", 0.5, synthetic_nir(random.Random(i), sex=1, birth_year=1950,
                                                                 birth_month=1, departement="35"),
                      75, "35", list(signals)) for i, signals in enumerate(people)]
    return Month(TERRITORIES["35"], 2026, 11, dt.date(2026, 11, 1), TODAY, 1, persons)


def test_ground_truth_rules_on_hand_made_people() -> None:
    d = dt.date(2026, 11, 10)
    month = _month(
        [SimSignal("urssaf", "impaye_cotisations", d, "U1"), SimSignal("caf", "impaye_loyer", d, "C1")],
        [SimSignal("caf", "impaye_loyer", d, "C2"), SimSignal("caf", "separation", d, "C3")],  # one fund only
        [SimSignal("carsat", "veuvage_pension_reversion", d, "K1", "prevention_perte_autonomie"),
         SimSignal("cpam", "non_recours_c2s_puma", d, "P1")],
        [SimSignal("carsat", "veuvage_pension_reversion", d, "K2"),  # access to rights: not the autonomy rule
         SimSignal("cpam", "non_recours_c2s_puma", d, "P2")],
    )
    # No faulty line in so small a month? Make sure, or the expectation below would be wrong.
    assert all(line.fault is None for lines in plan_lines(month).values() for line in lines)
    truth = {tuple(s["references"]): s for s in ground_truth(month, SCHEMAS)["situations"]}
    assert set(truth) == {("caf:C1", "urssaf:U1"), ("carsat:K1", "cpam:P1"), ("carsat:K2", "cpam:P2")}
    assert truth[("caf:C1", "urssaf:U1")]["regles"] == ["help_travailleur_independant", "situation_partagee"]
    assert truth[("carsat:K1", "cpam:P1")]["regles"] == ["prevention_perte_autonomie", "situation_partagee"]
    assert truth[("carsat:K2", "cpam:P2")]["regles"] == ["situation_partagee"]
    assert truth[("caf:C1", "urssaf:U1")]["priorite"] == "orange"  # weights 3 + 3 = 6


@pytest.mark.parametrize(("month", "why"), [("2026-13", "mois invalide"), ("9999-12", "hors limites"),
                                            ("2027-01", "not started"), ("2026-05", "days ago")])
def test_bad_months_are_refused_with_a_reason(tmp_path: Path, month: str, why: str) -> None:
    with pytest.raises(InputError, match=why):
        simulate("35", month, tmp_path, seed=1, schemas=SCHEMAS, today=TODAY)


def test_a_nir_drawn_twice_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """At a million persons some random draws collide; the truth must not count two persons
    behind one NIR (the exchange sees one). Forced here: every third draw repeats the first."""
    from services.simulator import population

    draws: list[str] = []

    def colliding(rng: random.Random, **person: object) -> str:
        nir = draws[0] if draws and len(draws) % 3 == 0 else synthetic_nir(rng, **person)  # type: ignore[arg-type]
        draws.append(nir)
        return nir

    monkeypatch.setattr(population, "synthetic_nir", colliding)
    month = generate("61", "2026-11", seed=3, today=TODAY, scale=0.05)
    nirs = [person.nir for person in month.persons]
    assert len(draws) > len(nirs)  # collisions happened and were drawn again
    assert len(set(nirs)) == len(nirs)
