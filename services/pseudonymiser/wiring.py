"""What the pseudonymiser's commands get from the composition root (:mod:`services.app.bootstrap`):
where the service enters what it does (the ledger)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.platform.settings import Settings
    from services.pseudonymiser.service import ServiceLog


@dataclass(frozen=True)
class PseudonymiserWiring:
    log: Callable[[Settings], ServiceLog]
