"""Registers the issue-8 summary table (printed once at the end of the run)."""

from __future__ import annotations

import pytest

from tests.suite_summary import register


def pytest_configure(config: pytest.Config) -> None:
    register(config)
