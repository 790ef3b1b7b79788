"""Who signals whom in a month: a synthetic population with a latent fragility.

Sizes come from docs/domain.md (sizes) (inhabitants, CAF and CPAM populations, self-employed,
share of older people) and the rough rates it gives; the Marne (51) figures are public
orders of magnitude, not from the seeds. Every person the month touches has a profile
(self-employed, family, precarious insured, retiree) that names the fund that sees them
first, and a latent fragility in [0, 1] that makes other funds see them too: the more
fragile, the more funds signal the same person, which is what the correlator must find.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field

from services.simulator.nir import synthetic_nir


@dataclass(frozen=True)
class Territory:
    code: str
    name: str
    inhabitants: int
    self_employed: int
    c2s: int
    share_60_plus: float
    #: bodies as docs/domain.md (bodies) names them, used as the emitter suffix
    carsat_body: str


TERRITORIES = {
    "35": Territory("35", "Ille-et-Vilaine", 1_080_000, 52_584, 85_000, 0.26, "bretagne"),
    "61": Territory("61", "Orne", 276_903, 16_000, 24_000, 0.36, "normandie"),
    "51": Territory("51", "Marne", 566_000, 30_000, 45_000, 0.27, "ne"),
}

# Monthly signalling rates, per fund (orders of magnitude from docs/domain.md).
CAF_EVENTS_PER_1000_YEAR = 5.5  # CAF life events
CAF_ARREARS_PER_1000_MONTH = 0.3  # rent and home-loan arrears reaching the CAF
URSSAF_DIFFICULTY_SHARE_MONTH = 0.015  # self-employed declaring or showing difficulty
CPAM_SIGNALS_PER_C2S_MONTH = 0.01  # non-take-up and aid requests
CARSAT_SIGNALS_PER_RETIREE_MONTH = 0.0015

PROFILES = ("independant", "famille", "precaire", "retraite")
PRIMARY_FUND = {"independant": "urssaf", "famille": "caf", "precaire": "cpam", "retraite": "carsat"}
# Which other funds tend to see a fragile person of each profile, and how often.
SECONDARY = {
    "independant": (("caf", 0.5), ("cpam", 0.35), ("carsat", 0.15)),
    "famille": (("cpam", 0.55), ("urssaf", 0.3), ("carsat", 0.15)),
    "precaire": (("caf", 0.7), ("urssaf", 0.15), ("carsat", 0.15)),
    "retraite": (("cpam", 0.6), ("caf", 0.4)),
}
# Categories each fund uses for each profile (NM only: a producer never sends others).
CATEGORIES: dict[str, dict[str, tuple[str, ...]]] = {
    "urssaf": {"*": ("difficulte_economique_declaree", "impaye_cotisations", "taxations_office_repetees",
                     "demande_action_sociale_urssaf", "cessation_activite")},
    "caf": {"famille": ("separation", "naissance_premier_ou_multiple", "parent_isole", "impaye_loyer",
                        "ouverture_rsa", "deces_conjoint", "perte_logement", "logement_non_decent"),
            "retraite": ("deces_conjoint", "impaye_loyer", "logement_non_decent"),
            "*": ("impaye_loyer", "ouverture_rsa", "separation", "impaye_pret_immobilier", "perte_logement",
                  "parent_incarcere", "deces_enfant")},
    "cpam": {"*": ("non_recours_c2s_puma", "demande_aide_individuelle")},
    "carsat": {"retraite": ("veuvage_pension_reversion", "exoneration_csg", "score_fragilite_eleve",
                            "retraite_isole", "passage_retraite_rupture_ressources"),
               "*": ("passage_retraite_rupture_ressources",)},
}
AUTONOMY_CATEGORIES = ("veuvage_pension_reversion", "exoneration_csg", "score_fragilite_eleve", "retraite_isole")


@dataclass(frozen=True)
class SimSignal:
    fund: str
    category: str
    observed_on: dt.date
    reference: str
    purpose: str | None = None  # None: the producer's default (the category's first purpose)


@dataclass
class Person:
    number: int
    profile: str
    fragility: float
    nir: str
    age: int
    departement: str
    signals: list[SimSignal] = field(default_factory=list)


@dataclass
class Month:
    territory: Territory
    year: int
    month: int
    first_day: dt.date
    last_day: dt.date  # last day signals may bear (never after today: producers refuse the future)
    seed: int
    persons: list[Person]


def month_bounds(month: str, today: dt.date) -> tuple[dt.date, dt.date]:
    year, mon = (int(x) for x in month.split("-"))
    first = dt.date(year, mon, 1)
    nxt = dt.date(year + (mon == 12), mon % 12 + 1, 1)
    return first, min(nxt - dt.timedelta(days=1), today)


def expected_volumes(t: Territory) -> dict[str, int]:
    """Signals a month, per fund, for territory ``t``."""
    retirees = t.inhabitants * t.share_60_plus
    return {
        "caf": round(t.inhabitants * CAF_EVENTS_PER_1000_YEAR / 1000 / 12
                     + t.inhabitants * CAF_ARREARS_PER_1000_MONTH / 1000),
        "urssaf": round(t.self_employed * URSSAF_DIFFICULTY_SHARE_MONTH),
        "cpam": round(t.c2s * CPAM_SIGNALS_PER_C2S_MONTH),
        "carsat": round(retirees * CARSAT_SIGNALS_PER_RETIREE_MONTH),
    }


def _reference(fund: str, territory: str, serial: int) -> str:
    prefix = {"caf": "CAF", "urssaf": "URS", "cpam": "CPAM", "carsat": "CARSAT"}[fund]
    return f"{prefix}{territory}-{serial:07d}"


def generate(territory: str, month: str, *, seed: int, today: dt.date, scale: float = 1.0) -> Month:
    """Draw the month: every person some fund signals, and the signals about them."""
    t = TERRITORIES[territory]
    first, last = month_bounds(month, today)
    rng = random.Random(f"{seed}:{territory}:{month}")
    volumes = expected_volumes(t)
    serial = {fund: 0 for fund in volumes}
    persons: list[Person] = []
    days = (last - first).days + 1

    def new_signal(person: Person, fund: str) -> SimSignal:
        pool = CATEGORIES[fund].get(person.profile, CATEGORIES[fund]["*"])
        category = rng.choice(pool)
        purpose = None
        # A Carsat back-office flags loss-of-autonomy prevention for its 55+ insured (décret 2017-334).
        if fund == "carsat" and category in AUTONOMY_CATEGORIES and person.age >= 60 and rng.random() < 0.6:
            purpose = "prevention_perte_autonomie"
        serial[fund] += 1
        observed = first + dt.timedelta(days=rng.randrange(days))
        return SimSignal(fund, category, observed, _reference(fund, t.code, serial[fund]), purpose)

    number = 0
    drawn: set[str] = set()
    for profile, fund in PRIMARY_FUND.items():
        for _ in range(round(volumes[fund] * scale)):
            number += 1
            old = profile == "retraite"
            age = rng.randint(62, 92) if old else rng.randint(19, 58)
            birth_year = today.year - age - 1  # born before this year's birthday: never reads older
            birth_dept = t.code if rng.random() < 0.7 else rng.choice(("2A", "2B", "75", "29", "22", "56", "44"))
            # A NIR names one person: at a million persons a few hundred random draws collide,
            # and the ground truth would count two people where the exchange rightly sees one.
            while (nir := synthetic_nir(rng, sex=rng.randint(1, 2), birth_year=birth_year,
                                        birth_month=rng.randint(1, 12), departement=birth_dept)) in drawn:
                pass
            drawn.add(nir)
            person = Person(
                number=number, profile=profile, fragility=rng.betavariate(1.2, 6.0),
                nir=nir, age=age, departement=t.code,
            )
            person.signals.append(new_signal(person, fund))
            # Fragility brings other funds in: the correlator's job is to find these people.
            for other, weight in SECONDARY[profile]:
                if rng.random() < 0.3 * person.fragility * weight:
                    person.signals.append(new_signal(person, other))
            if rng.random() < 0.05:  # the same fund signals twice (another category)
                person.signals.append(new_signal(person, fund))
            persons.append(person)
    return Month(t, first.year, first.month, first, last, seed, persons)
