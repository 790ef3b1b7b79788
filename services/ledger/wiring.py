"""What the ledger's commands get from the composition root (:mod:`services.app.bootstrap`):
the casebook's answers about its cases."""

from __future__ import annotations

from dataclasses import dataclass

from services.ledger.cases import CaseDirectory


@dataclass(frozen=True)
class LedgerWiring:
    cases: CaseDirectory
