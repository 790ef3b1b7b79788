"""Cells for CSV files that people open in a spreadsheet.

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a
formula by spreadsheet software (OWASP "CSV injection"); a leading apostrophe makes it text.
Every CSV the project writes for people (worklists, audit exports, reject reports) goes
through :func:`safe_cell`.
"""

from __future__ import annotations

from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> str:
    """A cell a spreadsheet shows as text, never evaluates (``None`` is an empty cell)."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text
