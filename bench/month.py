"""The simulated month the volume benchmarks (scaling, national) publish: topics, keys and
four funds' extract files of Ille-et-Vilaine scaled to about a number of signals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from services.core.types import Fund
from services.platform.kafka import apply_topics
from services.platform.settings import Settings
from services.platform.topics import load_topic_specs
from services.producer.keys import init_exchange_key, init_fund_keys
from services.simulator.cli import simulate, today_paris

FUNDS = (Fund.URSSAF, Fund.CAF, Fund.CPAM, Fund.CARSAT)
SIGNALS_AT_SCALE_1 = 3_160  # Ille-et-Vilaine's month at scale 1 (the demo's month)


def prepare_month(settings: Settings, bootstrap: str, extracts: Path, signals: int) -> dict[str, Any]:
    """Every topic, every fund's keys and the exchange key, then the month's extract files in
    ``extracts`` (one ``<fund>.csv`` a fund); returns the simulator's summary."""
    asyncio.run(apply_topics(settings, bootstrap, load_topic_specs(settings.schemas_dir / "asyncapi.yaml")))
    for fund in FUNDS:
        init_fund_keys(settings.key_dir, fund)
    init_exchange_key(settings.key_dir)
    today = today_paris()
    return simulate("35", today.strftime("%Y-%m"), extracts, seed=1, schemas=settings.schemas_dir,
                    today=today, scale=signals / SIGNALS_AT_SCALE_1)
