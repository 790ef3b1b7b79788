"""How this project's processes use Python's cyclic garbage collector: one policy, set by
the entrypoints (a worker's or a command's start), never by domain or read-model code.

Nearly every object these processes make dies by reference counting, at once: the models
hold no cycles. The cyclic collector only has to find the rare cycle (a future or an
exception of the event loop), and left at CPython's defaults it walks large heaps far more
often than that needs (``bench/correlator.py``, ``bench/worklist.py``). Three tools:

- :func:`tune_for_streaming` — for the long-running stream processes (the correlator worker
  and its check helpers): young objects collected about a hundred times less often;
- :class:`HeapPolicy` — for the correlator worker's batch loop: after every batch, what
  survived is frozen (:func:`gc.freeze`, constant time), so the collector only walks what
  later batches allocate; a full collection every ``full_every_s`` seconds reclaims what a
  frozen cycle held;
- :func:`paused_gc` — for a command or a request that builds one big result of acyclic
  objects (the month's worklist and its renderings): the collector paused meanwhile.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator

#: Thresholds of the stream processes: (young generation, middle, old), see gc.set_threshold.
STREAMING_THRESHOLDS = (100_000, 50, 100)


def tune_for_streaming() -> None:
    """Set the collector's thresholds for a long-running stream process (at its start)."""
    gc.set_threshold(*STREAMING_THRESHOLDS)


class HeapPolicy:
    """Freeze after every batch; unfreeze and collect everything every ``full_every_s``
    (0 or less: off, the collector as configured)."""

    def __init__(self, full_every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.full_every_s = full_every_s
        self.clock = clock
        self.next_full = clock() + full_every_s
        self.full_collections = 0

    def after_batch(self) -> None:
        if self.full_every_s <= 0:
            return
        now = self.clock()
        if now >= self.next_full:
            gc.unfreeze()
            gc.collect()
            self.full_collections += 1
            self.next_full = now + self.full_every_s
        gc.freeze()


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic collector while building many small acyclic objects (a worklist of
    100,000 cases allocates millions of tuples and dataclasses; each allocation burst would
    trigger full collections that rescan everything alive). Reference counting frees them
    all the same. Restores the collector as it was (nested or concurrent uses are safe)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
