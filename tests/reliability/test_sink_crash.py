"""Crashes of the casebook sink (issue 8, item 1): kill -9 at random points while situation
events stream in; the casebook ends equal to what was published. The heavier run is in
tests/soak/test_sink_crash_issue8.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.sink_crash import run_sink_crashes

pytestmark = pytest.mark.integration


async def test_kill9_the_casebook_sink_while_situations_stream_in(tmp_path: Path) -> None:
    report = await run_sink_crashes(tmp_path, situations=250, kills=8, seed=8)
    for line in report.lines():
        print(line)
    assert report.kills == 8
    # Some kills must land in the middle of the work (rows present but not all of them).
    assert any(0 < n < report.situations for n in report.killed_with_rows), report.killed_with_rows
