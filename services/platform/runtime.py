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
  frozen cycle held; every ``trim_every_s`` seconds, the C allocator's free pages are given
  back to the system (:func:`release_free_pages`);
- :func:`paused_gc` — for a command or a request that builds one big result of acyclic
  objects (the month's worklist and its renderings): the collector paused meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Callable, Iterator

#: Thresholds of the stream processes: (young generation, middle, old), see gc.set_threshold.
STREAMING_THRESHOLDS = (100_000, 50, 100)


def tune_for_streaming() -> None:
    """Set the collector's thresholds for a long-running stream process (at its start)."""
    gc.set_threshold(*STREAMING_THRESHOLDS)


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_TRIM = _malloc_trim()


def release_free_pages() -> bool:
    """Give the pages the C allocator holds free back to the system; False where it cannot.

    glibc returns memory on ``free`` only from the top of its heaps: a batch's large
    transient buffers (fetched records, values over 512 bytes, which Python's own allocator
    leaves to ``malloc``) freed between longer-lived ones stay resident, and the process's
    memory crept up with the time it ran. ``malloc_trim`` releases every whole free page
    (a few milliseconds); the next batch gets fresh zeroed pages instead."""
    if _TRIM is None:
        return False
    _TRIM()
    return True


class HeapPolicy:
    """Freeze after every batch; unfreeze and collect everything every ``full_every_s``
    (0 or less: off, the collector as configured); free pages released every
    ``trim_every_s`` (0 or less: never)."""

    def __init__(self, full_every_s: float, clock: Callable[[], float] = time.monotonic, *,
                 trim_every_s: float = 0.0) -> None:
        self.full_every_s = full_every_s
        self.trim_every_s = trim_every_s
        self.clock = clock
        self.next_full = clock() + full_every_s
        self.next_trim = clock() + trim_every_s
        self.full_collections = 0
        self.trims = 0

    def after_batch(self) -> None:
        now = self.clock()
        if self.full_every_s > 0:
            if now >= self.next_full:
                gc.unfreeze()
                gc.collect()
                self.full_collections += 1
                self.next_full = now + self.full_every_s
            gc.freeze()
        if self.trim_every_s > 0 and now >= self.next_trim:
            self.next_trim = now + self.trim_every_s
            if release_free_pages():
                self.trims += 1


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
