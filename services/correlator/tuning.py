"""The correlator worker's knobs (command-line options of ``help-exchange correlator``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    app_id: str = "help-correlator"
    #: Records per batch at most. Each batch ends with two acknowledged sends and a commit,
    #: and its first and last chunks leave the check helpers or the engine waiting: measured
    #: on the correlator bench, 1,000 → 3,800/s, 2,500 → 4,400/s, 5,000 → 4,700/s, 10,000 →
    #: 4,850/s with p99 at 2,000/s rising from ≈ 210 to 330 ms. A batch fills only as fast as
    #: records come, so at low rates batches stay small.
    batch_max: int = 5000
    #: How long a batch waits for more records after its first. Not longer: under load the
    #: queue holds a full batch anyway, and below it every batch paid the whole wait on top of
    #: its round trips, which compounded (a longer cycle gathers a bigger next batch). Measured
    #: at 2,000 signals/s on the bench: 20 ms → p50/p99 215-265 / 348-572 ms, 2 ms → 156-213 /
    #: 282-379 ms, with the same full-work rate within the machine's noise.
    batch_wait_s: float = 0.002
    #: The retention sweep (signals older than the correlation window leave the person
    #: state even if no further signal comes): a page of this many persons at each tick.
    sweep_every_s: float = 5.0
    sweep_page: int = 2000
    fetch_wait_ms: int = 100
    linger_ms: int = 5
    #: Helper processes for the stateless checks (0: in the worker's own thread). Two: one
    #: helper checks ≈ 7,500 signals/s on its own core, a little slower than the engine takes
    #: them, so with one the engine waits for verdicts (measured: 4,036 → 4,482 signals/s
    #: here with two, on two cores shared with the broker).
    check_processes: int = 2
    #: Seconds between full garbage collections (0: CPython's own schedule); between them,
    #: what survives a batch is frozen (see :class:`services.platform.runtime.HeapPolicy`).
    gc_full_every_s: float = 600.0


DEFAULT_TUNING = Tuning()
