"""The correlator worker's knobs (command-line options of ``help-exchange correlator``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    app_id: str = "help-correlator"
    batch_max: int = 1000
    batch_wait_s: float = 0.02
    fetch_wait_ms: int = 100
    linger_ms: int = 5
    #: Helper processes for the stateless checks (0: in the worker's own thread).
    check_processes: int = 1


DEFAULT_TUNING = Tuning()
