"""A person's window (services/core/person.py ``age_out``) against its plain definition:
the signals observed on or after ``today - window_days``, sorted by (date, id), the newest
``max_signals`` kept."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.person import age_out

TODAY = dt.date(2026, 12, 7)


def reference(signals: tuple[Any, ...], *, today: dt.date, window_days: int, max_signals: int) -> tuple[Any, ...]:
    oldest = today - dt.timedelta(days=window_days)
    kept = sorted((s for s in signals if s.observed_on >= oldest), key=lambda s: (s.observed_on, s.signal_id))
    return tuple(kept[-max_signals:]) if max_signals > 0 else ()


signal = st.builds(lambda days, sid: SimpleNamespace(observed_on=TODAY - dt.timedelta(days=days), signal_id=sid),
                   st.integers(-3, 200), st.sampled_from(["a", "b", "c", "d"]))


@settings(max_examples=400, deadline=None)
@given(signals=st.lists(signal, max_size=12).map(tuple), shift=st.integers(-5, 5),
       window_days=st.integers(0, 120), max_signals=st.integers(-1, 8))
def test_age_out_equals_its_definition(signals: tuple[Any, ...], shift: int, window_days: int,
                                       max_signals: int) -> None:
    today = TODAY + dt.timedelta(days=shift)  # (several days in one process: the window's start is remembered)
    got = age_out(signals, today=today, window_days=window_days, max_signals=max_signals)
    want = reference(signals, today=today, window_days=window_days, max_signals=max_signals)
    assert [id(s) for s in got] == [id(s) for s in want]  # the same objects, in the same order (ties included)
