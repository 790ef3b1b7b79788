"""What the key endpoint's commands get from the composition root (:mod:`services.app.bootstrap`):
where the endpoint enters what it does (the ledger)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.platform.settings import Settings
    from services.signalkeys.service import KeysLog


@dataclass(frozen=True)
class SignalKeysWiring:
    log: Callable[[Settings], KeysLog]
