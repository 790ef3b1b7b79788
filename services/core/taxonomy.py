"""The category taxonomy (``schemas/taxonomy.yaml``) as frozen models.

Loaded once; lookups are dictionary reads. Validation here is what makes a typo in the
YAML fail at start-up with the file, the entry and the field named, not at the first signal.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.core import glossary
from services.core.datafile import parse_data, read_yaml
from services.core.types import Code, Fund, Outcome, Purpose


class SignalClass(StrEnum):
    """NM may be exchanged; SENS is health-adjacent and treated as MED; MED never leaves."""

    NM = "NM"
    SENS = "SENS"
    MED = "MED"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Category(_Model):
    code: Code
    libelle: Annotated[str, Field(min_length=3, max_length=120)]
    fund: Annotated[Fund, Field(alias=glossary.code("fund"))]
    classe: SignalClass
    purposes: Annotated[tuple[Purpose, ...], Field(alias=glossary.code("purposes"))]
    destinataires: tuple[Fund, ...]
    poids: Annotated[int, Field(ge=0, le=10)]

    @model_validator(mode="after")
    def _medical_goes_nowhere(self) -> Category:
        if self.classe is not SignalClass.NM and (self.purposes or self.destinataires):
            raise ValueError(f"{self.code}: a {self.classe} category can have no purpose nor recipient")
        if self.classe is SignalClass.NM and not (self.purposes and self.destinataires):
            raise ValueError(f"{self.code}: an NM category needs purposes and recipients")
        if self.fund in self.destinataires:
            raise ValueError(f"{self.code}: the emitting fund cannot be its own recipient")
        return self

    @property
    def exchangeable(self) -> bool:
        return self.classe is SignalClass.NM


class FollowUpAction(_Model):
    code: Code
    libelle: Annotated[str, Field(min_length=3, max_length=120)]
    #: the exchangeable categories this offer answers: the meeting's suggestions rank by them
    categories: tuple[Code, ...] = ()


class FundInfo(_Model):
    libelle: str
    libelle_long: str


class OutcomeInfo(_Model):
    code: Outcome
    libelle: str


class Taxonomy(_Model):
    version: int
    funds: Annotated[dict[Fund, FundInfo], Field(alias=glossary.code("funds"))]
    categories: tuple[Category, ...]
    suites: dict[Fund, tuple[FollowUpAction, ...]]
    issues: tuple[OutcomeInfo, ...]

    @model_validator(mode="after")
    def _unique_codes(self) -> Taxonomy:
        codes = [c.code for c in self.categories]
        dupes = {c for c in codes if codes.count(c) > 1}
        if dupes:
            raise ValueError(f"duplicate category codes: {sorted(dupes)}")
        exchangeable = {c.code for c in self.categories if c.exchangeable}
        for fund, actions in self.suites.items():
            for action in actions:
                wrong = [c for c in action.categories if c not in exchangeable]
                if wrong:
                    raise ValueError(f"suites.{fund.value}.{action.code}: {wrong} are not exchangeable "
                                     "categories of this taxonomy (an offer answers exchangeable ones only)")
        return self

    def category(self, code: str) -> Category | None:
        return self._by_code().get(code)

    def _by_code(self) -> dict[str, Category]:
        cache: dict[str, Category] | None = self.__dict__.get("_cache")
        if cache is None:
            cache = {c.code: c for c in self.categories}
            object.__setattr__(self, "_cache", cache)  # frozen model: memoise lookups once
        return cache

    def categories_of(self, fund: Fund) -> tuple[Category, ...]:
        return tuple(c for c in self.categories if c.fund is fund)

    def actions_of(self, fund: Fund) -> tuple[FollowUpAction, ...]:
        return self.suites.get(fund, ())

    def label(self, code: str) -> str:
        cat = self.category(code)
        return cat.libelle if cat else code


def parse_taxonomy(data: dict[str, Any], source: str = "taxonomy.yaml") -> Taxonomy:
    return parse_data(Taxonomy, data, source, "fix the entry in the taxonomy file (see the comments at its top)")


def load_taxonomy(path: Path) -> Taxonomy:
    return parse_taxonomy(read_yaml(path, "taxonomy"), str(path))
