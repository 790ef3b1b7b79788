"""Synthetic NIRs: valid in form and key, drawn from a seeded generator, never read from anywhere.

Layout (15 characters): sex (1/2), birth year (2), birth month (2), département of birth
(2, or 2A/2B for Corsica), commune (3), order number (3), key (2) = 97 − (number mod 97),
where for Corsica 2A counts as 19 and 2B as 18.
"""

from __future__ import annotations

import random


def nir_key(first13: str) -> str:
    digits = first13.replace("2A", "19").replace("2B", "18")
    return f"{97 - int(digits) % 97:02d}"


def synthetic_nir(rng: random.Random, *, sex: int, birth_year: int, birth_month: int,
                  departement: str) -> str:
    commune, order = rng.randint(1, 989), rng.randint(1, 999)
    body = f"{sex}{birth_year % 100:02d}{birth_month:02d}{departement}{commune:03d}{order:03d}"
    return body + nir_key(body)


def wrong_key(nir: str) -> str:
    """The same NIR with a wrong key (the typo a back-office makes)."""
    good = int(nir[13:])
    return nir[:13] + f"{good % 97 + 1:02d}"  # 1..97, never the right one
