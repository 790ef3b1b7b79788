"""The absent-key filter of the person store (services/correlator/key_filter.py): never says
absent for a key added, rarely says present for one never added, and says when it is full."""

from __future__ import annotations

import os

import pytest

from services.correlator import key_filter
from services.correlator.key_filter import BITS_PER_KEY, KeyFilter


def test_a_key_added_is_always_maybe_present_and_most_others_are_absent() -> None:
    f = KeyFilter(50_000)
    added = [os.urandom(16).hex().encode() for _ in range(f.capacity)]
    f.update(added)
    assert all(f.may_hold(k) for k in added)
    others = [os.urandom(16).hex().encode() for _ in range(20_000)]
    assert sum(f.may_hold(k) for k in others) < 20_000 * 0.01  # about 0.2 % at its capacity


def test_it_is_full_past_its_capacity_and_counts_a_key_added_twice_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_filter, "MIN_CAPACITY", 1024)
    f = KeyFilter(1)
    assert f.capacity * BITS_PER_KEY == len(f._bits) * 8
    key = b"k/1"
    f.add(key)
    f.add(key)
    assert f.count == 1 and not f.full()
    assert f.capacity == 1024
    f.update(str(i).encode() for i in range(f.capacity - 1))
    assert not f.full()  # (keys whose bits were all set already are not counted)
    f.update(str(i).encode() for i in range(f.capacity, 2 * f.capacity))
    assert f.full()
