"""The reliability and security suite's figures (issue 8), counted by the tests as they run.

Tests call :func:`count` (``count("kills")`` after a ``kill -9``, ``count("inputs_fuzzed", n)``
after publishing ``n`` fuzzed messages…); at the end of the pytest run one table lists every
figure. Nothing here is hard-coded: a figure that no test counted shows 0.

Registered once per run by :func:`register` (called from ``pytest_configure`` of the conftests
of ``tests/security``, ``tests/reliability`` and by the soak tests of issue 8), so the table is
printed once however many of those directories ran.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest

#: (key, label, what it counts) in the order of the table
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("runs", "runs", "service runs started (sink, correlator, publish/flush, demo, pipelines)"),
    ("kills", "kills", "kill -9 of a running service or broker"),
    ("faults_injected", "faults injected", "TCP drops, delays and resets by the fault proxy; broker losses"),
    ("inputs_fuzzed", "inputs fuzzed", "malformed/adversarial messages and HTTP requests generated"),
    ("attacks_tried", "attacks tried", "forgeries, replays, injections, traversals, access violations"),
    ("leaks_found", "leaks found", "NIRs, clear references, SENS/MED codes found by the privacy scans"),
    ("planted_found", "planted values found", "values planted to prove each scanner can fail"),
)

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_details: dict[str, list[str]] = {}
PLUGIN_NAME = "help-issue8-summary"


def count(key: str, n: int = 1, detail: str | None = None) -> None:
    """Add ``n`` to figure ``key`` (one of :data:`FIGURES`), with an optional detail line."""
    if key not in {k for k, _, _ in FIGURES}:
        raise KeyError(f"unknown figure {key!r}")
    with _lock:
        _counts[key] += n
        if detail:
            _details.setdefault(key, []).append(detail)


def value(key: str) -> int:
    with _lock:
        return _counts[key]


class _SummaryPlugin:
    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        with _lock:
            counts = dict(_counts)
        if not counts:
            return
        tr = terminalreporter
        tr.write_sep("=", "reliability and security suite (issue 8)")
        width = max(len(label) for _, label, _ in FIGURES)
        tr.write_line(f"{'figure'.ljust(width)}  {'count':>9}  what")
        for key, label, what in FIGURES:
            tr.write_line(f"{label.ljust(width)}  {counts.get(key, 0):>9}  {what}")


def register(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(_SummaryPlugin(), PLUGIN_NAME)
