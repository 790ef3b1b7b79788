"""The date rules on the real embedded broker and a real worker process (issue #14): signals
a fund built by hand — observed tomorrow, observed five years ago, emitted a year ahead —
and a consent dated in the future each get a rejection receipt and a dead letter naming the
field, while the same fund's well-dated signal is accepted."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.core.dates import today_paris
from services.core.types import Fund, format_timestamp
from services.platform.partitioning import partition_for
from services.platform.settings import Settings
from services.platform.topics import CONSENTS_TOPIC, signal_topic
from tests.correlator.harness import Collector, publish, start_worker, stop
from tests.support.signals import Funds, wire

pytestmark = pytest.mark.integration


@pytest.fixture
async def collector(bootstrap: str, settings: Settings) -> AsyncIterator[Collector]:
    c = Collector(bootstrap, settings.database_url)
    await c.start()
    yield c
    await c.stop()


async def test_hand_built_dates_are_refused_by_a_real_worker(
        settings: Settings, collector: Collector, tmp_path: Path) -> None:
    funds = Funds()  # real clock: the worker judges against its own
    funds.write_registry(settings.key_dir)
    today = today_paris()
    year_ahead = format_timestamp(dt.datetime.now(dt.UTC) + dt.timedelta(days=365))
    caf = signal_topic(Fund.CAF)
    cases = [  # (topic, message, expected reason, detail prefix)
        (caf, funds.signal("dates-p0", Fund.CAF, "impaye_loyer"), "", ""),
        (caf, funds.signal("dates-p1", Fund.CAF, "impaye_loyer", observed_on=today + dt.timedelta(days=30)),
         "date_future", "/observed_on:in_future"),
        (caf, funds.signal("dates-p2", Fund.CAF, "separation", observed_on=today.replace(year=today.year - 5)),
         "date_trop_ancienne", "/observed_on:older_than_2_years"),
        (caf, funds.signal("dates-p3", Fund.CAF, "impaye_loyer", emitted_at=year_ahead),
         "date_future", "/emitted_at:in_future"),
        (CONSENTS_TOPIC, funds.consent("dates-p4", "opposition", fund=Fund.CAF, effective_at=year_ahead),
         "date_future", "/effective_at:in_future"),
    ]
    items = [(topic, m["pseudonym"]["value"].encode(), wire(m), partition_for(m["pseudonym"]["value"], 8))
             for topic, m, _, _ in cases]
    positions = await publish(settings.bootstrap_servers or "", items)
    proc = start_worker(settings, "corr-dates", tmp_path / "worker.log")
    try:
        rejected = {p for (_, _, expected, _), p in zip(cases, positions, strict=True) if expected}

        def lettered(c: Collector) -> set[tuple[str, int, int]]:
            return {(d["source"]["topic"], d["source"]["partition"], d["source"]["offset"])
                    for d in c.deadletters.values()}

        await collector.until(lambda c: all(c.receipt_for(*p) for p in positions)
                              and rejected <= lettered(c), timeout=90)
        for (_, _, expected, detail), pos in zip(cases, positions, strict=True):
            receipt = collector.receipt_for(*pos)
            assert receipt is not None and receipt["fund"] == "caf"
            letters = [d for d in collector.deadletters.values()
                       if (d["source"]["topic"], d["source"]["partition"], d["source"]["offset"]) == pos]
            if not expected:
                assert receipt["status"] == "accepte" and not letters, pos
                continue
            assert (receipt["status"], receipt["reason"]) == ("rejete", expected), pos
            assert len(letters) == 1 and letters[0]["reason"] == expected
            assert letters[0]["detail"].startswith(detail), letters[0]["detail"]
        assert proc.poll() is None
    finally:
        stop(proc)
        print((tmp_path / "worker.log").read_text()[-3000:])
