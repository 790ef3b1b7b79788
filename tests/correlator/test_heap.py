"""The worker's collector policy: freeze after a batch, full collection on schedule, or off."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from services.platform.runtime import HeapPolicy


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_after_a_batch_survivors_are_frozen_and_a_full_collection_comes_on_schedule() -> None:
    now = [0.0]
    heap = HeapPolicy(600.0, clock=lambda: now[0])
    survivors = [_Cycle() for _ in range(100)]
    probe = weakref.ref(survivors[0])
    heap.after_batch()
    assert gc.get_freeze_count() >= 100
    assert heap.full_collections == 0
    # A cycle frozen while alive, then dropped: ordinary collections leave it...
    del survivors
    gc.collect()
    assert probe() is not None
    now[0] = 599.0
    heap.after_batch()
    assert heap.full_collections == 0 and probe() is not None
    # ...the scheduled full collection frees it.
    now[0] = 601.0
    heap.after_batch()
    assert heap.full_collections == 1
    assert probe() is None
    now[0] = 1200.0
    heap.after_batch()
    assert heap.full_collections == 1  # the next one is due at 1,201 s
    now[0] = 1201.0
    heap.after_batch()
    assert heap.full_collections == 2


def test_zero_leaves_the_collector_alone() -> None:
    heap = HeapPolicy(0.0)
    before = gc.get_freeze_count()
    heap.after_batch()
    assert gc.get_freeze_count() == before


def test_free_pages_are_released_on_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.platform import runtime

    calls: list[int] = []
    monkeypatch.setattr(runtime, "_TRIM", lambda: calls.append(1))
    now = [0.0]
    heap = HeapPolicy(0.0, clock=lambda: now[0], trim_every_s=2.0)
    heap.after_batch()
    assert calls == []
    now[0] = 2.0
    heap.after_batch()
    heap.after_batch()
    assert len(calls) == 1 and heap.trims == 1
    now[0] = 4.5
    heap.after_batch()
    assert heap.trims == 2


def test_release_free_pages_calls_the_c_library_where_it_has_one() -> None:
    from services.platform.runtime import _TRIM, release_free_pages

    assert release_free_pages() is (_TRIM is not None)
