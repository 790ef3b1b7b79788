"""The taxonomy holds every category of docs/domain.md with its class, and the policy
encodes article L115-2-1 as the domain brief states it."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.messages import LegalBasisConsent, LegalBasisLaw
from services.core.policy import check_signal, conditions_met, load_policy, parse_policy, recipients
from services.core.reasons import Reason
from services.core.taxonomy import SignalClass, load_taxonomy, parse_taxonomy
from services.core.types import Fund, Purpose
from services.errors import ConfigurationError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
TAXONOMY = load_taxonomy(SCHEMAS / "taxonomy.yaml")
POLICY = load_policy(SCHEMAS / "policy.yaml")

# Written from docs/domain.md, independently of taxonomy.yaml: (fund, code, class).
DOMAIN_CATEGORIES = [
    ("urssaf", "difficulte_economique_declaree", "NM"), ("urssaf", "impaye_cotisations", "NM"),
    ("urssaf", "taxations_office_repetees", "NM"), ("urssaf", "demande_action_sociale_urssaf", "NM"),
    ("urssaf", "cessation_activite", "NM"),
    ("caf", "separation", "NM"), ("caf", "deces_conjoint", "NM"), ("caf", "deces_enfant", "NM"),
    ("caf", "impaye_loyer", "NM"), ("caf", "impaye_pret_immobilier", "NM"), ("caf", "logement_non_decent", "NM"),
    ("caf", "perte_logement", "NM"), ("caf", "parent_isole", "NM"), ("caf", "naissance_premier_ou_multiple", "NM"),
    ("caf", "ouverture_rsa", "NM"), ("caf", "parent_incarcere", "NM"), ("caf", "grossesse", "SENS"),
    ("caf", "maladie_handicap_enfant", "MED"),
    ("cpam", "non_recours_c2s_puma", "NM"), ("cpam", "demande_aide_individuelle", "NM"),
    ("cpam", "renoncement_soins", "SENS"), ("cpam", "score_epices", "SENS"), ("cpam", "arret_maladie_long", "MED"),
    ("cpam", "affection_longue_duree", "MED"), ("cpam", "sortie_hospitalisation", "MED"), ("cpam", "prado", "MED"),
    ("cpam", "absence_medecin_traitant", "MED"),
    ("carsat", "veuvage_pension_reversion", "NM"), ("carsat", "exoneration_csg", "NM"),
    ("carsat", "score_fragilite_eleve", "NM"), ("carsat", "passage_retraite_rupture_ressources", "NM"),
    ("carsat", "retraite_isole", "NM"), ("carsat", "evaluation_gir_5_6", "SENS"),
    ("carsat", "retour_domicile_apres_hospitalisation", "MED"),
]

LAW = LegalBasisLaw(code="L115-2-1", conditions=[])


@pytest.mark.parametrize(("fund", "code", "klass"), DOMAIN_CATEGORIES)
def test_every_domain_category_is_in_the_taxonomy_with_its_class(fund: str, code: str, klass: str) -> None:
    cat = TAXONOMY.category(code)
    assert cat is not None, code
    assert cat.fund is Fund(fund)
    assert cat.classe is SignalClass(klass)
    assert cat.libelle[0].isupper()  # a French label for people


def test_medical_and_sensitive_categories_go_nowhere() -> None:
    for cat in TAXONOMY.categories:
        if cat.classe is not SignalClass.NM:
            assert not cat.destinataires and not cat.purposes and not cat.exchangeable


def test_each_of_the_four_funds_offers_follow_ups() -> None:
    for fund in (Fund.CAF, Fund.URSSAF, Fund.CPAM, Fund.CARSAT):
        assert len(TAXONOMY.actions_of(fund)) >= 5
    assert {o.code for o in TAXONOMY.issues} == {"propose", "accepte", "refuse", "accorde", "non_eligible",
                                                 "sans_suite"}


@pytest.mark.parametrize(
    ("fund", "category", "purpose", "basis", "consent", "expected"),
    [
        ("caf", "impaye_loyer", "acces_aux_droits", LAW, False, None),
        ("caf", "grossesse", "acces_aux_droits", LAW, False, Reason.CATEGORIE_MEDICALE),
        ("cpam", "affection_longue_duree", "acces_aux_droits", LAW, False, Reason.CATEGORIE_MEDICALE),
        ("cpam", "impaye_loyer", "acces_aux_droits", LAW, False, Reason.CATEGORIE_AUTRE_ORGANISME),
        ("caf", "inconnue_xyz", "acces_aux_droits", LAW, False, Reason.CATEGORIE_INCONNUE),
        ("caf", "impaye_loyer", "prevention_perte_autonomie", LAW, False, Reason.FINALITE_NON_AUTORISEE),
        # Décret 2017-334: loss-of-autonomy exchanges need the 55+ attestation, or consent.
        ("carsat", "veuvage_pension_reversion", "prevention_perte_autonomie", LAW, False,
         Reason.CONDITION_NON_REMPLIE),
        ("carsat", "veuvage_pension_reversion", "prevention_perte_autonomie",
         LegalBasisLaw(code="L115-2-1", conditions=["age_55_plus"]), False, None),
        ("carsat", "veuvage_pension_reversion", "prevention_perte_autonomie",
         LegalBasisConsent(code="consentement", consent_ref="HELP-2026-1"), False, Reason.CONSENTEMENT_ABSENT),
        ("carsat", "veuvage_pension_reversion", "prevention_perte_autonomie",
         LegalBasisConsent(code="consentement", consent_ref="HELP-2026-1"), True, None),
    ],
)
def test_policy_decisions(fund: str, category: str, purpose: str, basis: LegalBasisLaw | LegalBasisConsent,
                          consent: bool, expected: Reason | None) -> None:
    got = check_signal(POLICY, TAXONOMY, fund=Fund(fund), category=category, purpose=Purpose(purpose),
                       legal_basis=basis, consent_on_record=consent)
    assert got == expected


def test_need_to_know_limits_loss_of_autonomy_recipients() -> None:
    widowhood = TAXONOMY.category("veuvage_pension_reversion")
    assert widowhood is not None
    autonomy = recipients(POLICY, widowhood, [Purpose.PREVENTION_PERTE_AUTONOMIE])
    rights = recipients(POLICY, widowhood, [Purpose.ACCES_AUX_DROITS])
    assert Fund.CAF not in autonomy and Fund.CAF in rights and Fund.CARSAT in autonomy


def test_age_condition_is_attested_from_local_knowledge_only() -> None:
    assert conditions_met(POLICY, Purpose.PREVENTION_PERTE_AUTONOMIE, age=70) == ("age_55_plus",)
    assert conditions_met(POLICY, Purpose.PREVENTION_PERTE_AUTONOMIE, age=40) == ()
    assert conditions_met(POLICY, Purpose.ACCES_AUX_DROITS, age=70) == ()


def test_a_policy_that_makes_medical_data_exchangeable_is_refused() -> None:
    import yaml

    data = yaml.safe_load((SCHEMAS / "policy.yaml").read_text())
    data["classes"]["MED"]["echangeable"] = True
    with pytest.raises(ConfigurationError, match="MED and SENS"):
        parse_policy(data)


def test_a_taxonomy_typo_names_the_entry() -> None:
    import yaml

    data = yaml.safe_load((SCHEMAS / "taxonomy.yaml").read_text())
    data["categories"][0]["classe"] = "NMX"
    with pytest.raises(ConfigurationError, match=r"categories\.0\.classe"):
        parse_taxonomy(data)
