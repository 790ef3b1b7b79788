"""Benchmarks: each module runs standalone (``python -m bench.<name>``) and prints its figures.

Each also ends with one machine-readable line, written by :func:`emit`, that ``make bench``
(``python -m bench``) collects into ``bench/report.json`` and ``bench/report.md``: every
figure in the report comes from a measurement taken in that run.
"""

from __future__ import annotations

import json
from typing import Any

MARKER = "BENCH-JSON "


def emit(name: str, figures: dict[str, Any]) -> None:
    """Print the figures of benchmark ``name`` for the report (after the human-readable ones)."""
    print(MARKER + json.dumps({"bench": name, **figures}, ensure_ascii=False, sort_keys=True), flush=True)
