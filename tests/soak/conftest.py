"""Soak tests: long runs, not part of the default ``pytest`` run; ``make soak`` (or
``pytest tests/soak``) runs them, and CI does too.

They are left out of collection unless a path under ``tests/soak`` is asked for on the
command line: not skipped (a skipped test reads as "fine"), simply not collected."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.resolve() == HERE / "conftest.py":
        return None
    asked = [Path(str(a).split("::")[0]).resolve() for a in config.args]
    if any(a == HERE or HERE in a.parents for a in asked):
        return None
    return True
