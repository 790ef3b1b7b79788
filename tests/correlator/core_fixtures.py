"""Pure-core helpers: the real data files, and signal entries without any crypto."""

from __future__ import annotations

import datetime as dt
import hashlib
from functools import lru_cache

from services.core.messages import Pseudonym, SealedRef
from services.core.person import SignalEntry
from services.core.policy import load_policy
from services.core.rules import Context, load_rules
from services.core.taxonomy import load_taxonomy
from services.core.types import Fund, Purpose
from services.platform.settings import DEFAULT_SCHEMAS_DIR

TODAY = dt.date(2026, 6, 1)
PSEUDO = Pseudonym(key_id="xk-20260101-aaaa", value="A" * 43)


@lru_cache(maxsize=1)
def context() -> Context:
    taxonomy = load_taxonomy(DEFAULT_SCHEMAS_DIR / "taxonomy.yaml")
    policy = load_policy(DEFAULT_SCHEMAS_DIR / "policy.yaml")
    return Context(load_rules(DEFAULT_SCHEMAS_DIR / "rules.yaml", taxonomy), taxonomy, policy)


def entry(fund: Fund, category: str, *, n: int = 0, on: dt.date = TODAY,
          purpose: Purpose = Purpose.ACCES_AUX_DROITS, territory: str = "51") -> SignalEntry:
    sid = hashlib.sha256(f"{fund}/{category}/{n}/{on}".encode()).hexdigest()[:32]
    return SignalEntry(signal_id=sid, fund=fund, category=category, purpose=purpose,
                       observed_on=on, territory=territory,
                       sealed_ref=SealedRef(key_id=f"{fund.value}-seal-1", value="S" * 40 + fund.value),
                       source=f"help.signals.{fund.value}.v1:0:{n}")
