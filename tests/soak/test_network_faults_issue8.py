"""Soak (issue 8): every fund's extract published through the fault proxy, three seeds. Run by
`make soak` (not by the default `pytest`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import test_network_faults as nf
from tests.reliability.faultproxy import FaultProxy
from tests.suite_summary import register
from tests.support.local import free_port
from tests.support.processes import Broker, apply_all_topics, start_broker

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register(request.config)


@pytest.fixture(params=[31, 32, 33])
def proxied(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FaultProxy, Broker]]:
    broker_port, proxy_port = free_port(), free_port()
    proxy = FaultProxy(target_port=broker_port, port=proxy_port, seed=request.param).start()
    b = start_broker(tmp_path / "broker", port=broker_port, advertised=proxy.address, apply=False)
    try:
        apply_all_topics(proxy.address)
        yield proxy, b
    finally:
        b.stop()
        proxy.stop()


@pytest.mark.timeout(1800)
def test_soak_publish_every_fund_through_faults(proxied: tuple[FaultProxy, Broker], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from services.core.types import Fund

    monkeypatch.setattr(nf, "FUNDS", (Fund.CAF, Fund.URSSAF, Fund.CPAM, Fund.CARSAT))
    nf.test_publish_through_a_faulty_network_delivers_every_line_exactly_once(proxied, tmp_path)
