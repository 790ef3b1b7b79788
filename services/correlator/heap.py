"""When the worker's cyclic garbage collector looks at what: the batch's new objects only.

The worker keeps about a million tracked objects alive (the decoded person states of
:class:`~.engine.StateCache`, Faust's and aiokafka's own), and every batch replaces a few
thousand states. CPython's collector promotes the survivors and, each time they add up to a
quarter of the old generation, walks all of it (≈ 1 s for a million objects here): measured
on the correlator bench, that was ≈ 13 % of the worker's CPU (4,110 against 3,630 signals
per CPU-second with the collector off). So after each batch, what survived is frozen
(:func:`gc.freeze`, constant time) and the collector only ever walks what later batches
allocate; objects that die are still freed at once by reference counting, which is how
nearly all of them die (the engine's models hold no cycles). What a frozen cycle would hold
(a future or an exception of the event loop, dropped later) is reclaimed by a full
collection every ``full_every_s`` seconds: one pause of about a second then, instead of
several as before.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


class HeapPolicy:
    """Freeze after every batch; unfreeze and collect everything every ``full_every_s``."""

    def __init__(self, full_every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.full_every_s = full_every_s
        self.clock = clock
        self.next_full = clock() + full_every_s
        self.full_collections = 0

    def after_batch(self) -> None:
        if self.full_every_s <= 0:
            return  # off: the collector as configured
        now = self.clock()
        if now >= self.next_full:
            gc.unfreeze()
            gc.collect()
            self.full_collections += 1
            self.next_full = now + self.full_every_s
        gc.freeze()
