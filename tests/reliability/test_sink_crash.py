"""Crashes of the casebook sink (issue 8, item 1): kill -9 at random points while situation
events stream in; the casebook ends equal to what was published. The heavier run is in
tests/soak/test_sink_crash_issue8.py."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.sink_crash import run_sink_crashes
from tests.support.processes import broker, settings_for, start_service, terminate

pytestmark = pytest.mark.integration


async def test_kill9_the_casebook_sink_while_situations_stream_in(tmp_path: Path) -> None:
    report = await run_sink_crashes(tmp_path, situations=250, kills=8, seed=8)
    for line in report.lines():
        print(line)
    assert report.kills == 8
    # Some kills must land in the middle of the work (rows present but not all of them).
    assert any(0 < n < report.situations for n in report.killed_with_rows), report.killed_with_rows


async def test_sigterm_the_casebook_sink_while_situations_stream_in(tmp_path: Path) -> None:
    # Each stop must exit 0 (the batch in flight committed); the end state is checked as above.
    report = await run_sink_crashes(tmp_path, situations=150, kills=4, seed=9, stop="SIGTERM")
    assert report.kills == 4
    assert any(0 < n < report.situations for n in report.killed_with_rows), report.killed_with_rows


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_audit_sink_stops_on_a_signal_and_exits_0(tmp_path: Path, signum: int) -> None:
    with broker(tmp_path / "broker") as b:
        settings = settings_for(tmp_path / "var", b.listener)
        log = tmp_path / "audit-sink.log"
        proc = start_service(settings, log, "audit", "sink")
        try:
            deadline = time.monotonic() + 60
            while "reading from" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()[-3000:]
            os.kill(proc.pid, signum)
            assert proc.wait(timeout=40) == 0, log.read_text()[-3000:]
            assert "audit sink: 0 records read" in log.read_text()
        finally:
            terminate(proc)
