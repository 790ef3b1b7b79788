"""Article L115-2-1 as data (``schemas/policy.yaml``) and the pure checks that apply it.

The checks return a :class:`~services.core.reasons.Reason` or ``None``; they never raise for
a refused signal, because a refusal is an expected outcome with a receipt, not an error.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.core import glossary
from services.core.datafile import parse_data, read_yaml
from services.core.messages import LegalBasisConsent, LegalBasisLaw
from services.core.reasons import Reason
from services.core.taxonomy import Category, SignalClass, Taxonomy
from services.core.types import Code, Fund, Purpose
from services.errors import ConfigurationError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassRule(_Model):
    libelle: str
    exchangeable: Annotated[bool, Field(alias=glossary.code("exchangeable"))]


class PurposeRule(_Model):
    libelle: str
    funds: Annotated[tuple[Fund, ...], Field(alias=glossary.code("funds"))]


class Condition(_Model):
    libelle: str
    etablie_par: Literal["organisme_emetteur"]
    age_minimum: Annotated[int, Field(ge=0, le=120)] | None = None


class BasisPurpose(_Model):
    conditions: tuple[Code, ...] = ()
    reference: str | None = None


class LegalBasisRule(_Model):
    libelle: str
    exige_consentement_enregistre: bool = False
    purposes: Annotated[dict[Purpose, BasisPurpose], Field(alias=glossary.code("purposes"))]


class ObjectionRule(_Model):
    arrete_correlation: bool
    efface_donnees: bool


class Policy(_Model):
    version: int
    texte: str
    classes: dict[SignalClass, ClassRule]
    purposes: Annotated[dict[Purpose, PurposeRule], Field(alias=glossary.code("purposes"))]
    conditions: dict[Code, Condition]
    bases_legales: dict[Literal["L115-2-1", "consentement"], LegalBasisRule]
    opposition: ObjectionRule

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if set(self.classes) != set(SignalClass):
            raise ValueError("every class NM, SENS, MED must be listed")
        if self.classes[SignalClass.MED].exchangeable or self.classes[SignalClass.SENS].exchangeable:
            raise ValueError("MED and SENS can never be exchangeable (article L115-2-1)")
        for basis, rule in self.bases_legales.items():
            for purpose, bp in rule.purposes.items():
                unknown = set(bp.conditions) - set(self.conditions)
                if unknown:
                    raise ValueError(f"{basis}/{purpose}: unknown conditions {sorted(unknown)}")
        return self

    def check_against(self, taxonomy: Taxonomy) -> None:
        """Refuse a taxonomy that names purposes this policy does not define."""
        for cat in taxonomy.categories:
            missing = set(cat.purposes) - set(self.purposes)
            if missing:
                raise ConfigurationError(
                    f"taxonomy category {cat.code} uses purposes {sorted(missing)} "
                    "that policy.yaml does not define",
                    "add them under 'finalites' in policy.yaml or fix the taxonomy",
                )


def check_signal(
    policy: Policy,
    taxonomy: Taxonomy,
    *,
    fund: Fund,
    category: str,
    purpose: Purpose,
    legal_basis: LegalBasisLaw | LegalBasisConsent,
    consent_on_record: bool,
) -> Reason | None:
    """Whether a signal may be exchanged; ``None`` if yes, else the first reason why not."""
    return check_exchange(
        policy, taxonomy, fund=fund, category=category, purpose=purpose, basis=legal_basis.code,
        conditions=legal_basis.conditions if isinstance(legal_basis, LegalBasisLaw) else (),
        consent_on_record=consent_on_record)


def check_exchange(
    policy: Policy,
    taxonomy: Taxonomy,
    *,
    fund: Fund,
    category: str,
    purpose: Purpose,
    basis: str,
    conditions: Collection[str],
    consent_on_record: bool,
) -> Reason | None:
    """:func:`check_signal` on the values alone: the legal basis by its code and the
    conditions the fund attests (none under consent)."""
    cat = taxonomy.category(category)
    if cat is None:
        return Reason.CATEGORIE_INCONNUE
    if cat.fund is not fund:
        return Reason.CATEGORIE_AUTRE_ORGANISME
    if not policy.classes[cat.classe].exchangeable:
        return Reason.CATEGORIE_MEDICALE
    if purpose not in cat.purposes or purpose not in policy.purposes:
        return Reason.FINALITE_NON_AUTORISEE
    rule = policy.bases_legales.get(basis)  # type: ignore[call-overload]  # any code: None if unknown
    if rule is None or purpose not in rule.purposes:
        return Reason.BASE_LEGALE_INVALIDE
    if rule.exige_consentement_enregistre:
        if not consent_on_record:
            return Reason.CONSENTEMENT_ABSENT
    elif not set(rule.purposes[purpose].conditions) <= set(conditions):
        return Reason.CONDITION_NON_REMPLIE
    return None


#: Declaration order of :class:`Fund` (``list(Fund).index``), computed once.
_FUND_RANK = {f: i for i, f in enumerate(Fund)}


def recipients(policy: Policy, cat: Category, purposes: tuple[Purpose, ...] | list[Purpose]) -> tuple[Fund, ...]:
    """The funds that need to know ``cat`` for ``purposes``: the category's recipients that
    serve at least one of those purposes, plus the emitting fund itself (it holds the data)."""
    serving = {f for p in purposes if p in policy.purposes for f in policy.purposes[p].funds}
    allowed = {f for f in cat.destinataires if f in serving} | {cat.fund}
    return tuple(sorted(allowed, key=_FUND_RANK.__getitem__))


def conditions_met(policy: Policy, purpose: Purpose, *, age: int | None) -> tuple[str, ...]:
    """The L115-2-1 conditions a producer can attest for ``purpose``, from what it knows locally."""
    basis = policy.bases_legales["L115-2-1"].purposes.get(purpose)
    if basis is None:
        return ()
    met = []
    for code in basis.conditions:
        cond = policy.conditions[code]
        if cond.age_minimum is not None and age is not None and age >= cond.age_minimum:
            met.append(code)
    return tuple(met)


def parse_policy(data: dict[str, Any], source: str = "policy.yaml") -> Policy:
    return parse_data(Policy, data, source, "fix the policy file")


def load_policy(path: Path) -> Policy:
    return parse_policy(read_yaml(path, "policy"), str(path))
