"""The metrics endpoint: off unless configured, served over HTTP in the Prometheus text format
(read back with the client library's own parser), a taken port refused with a clear error."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.errors import ConfigurationError
from services.platform import metrics
from services.platform.settings import load_settings
from tests.support.local import free_port


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {family.name: [(s.labels, s.value) for s in family.samples]
            for family in text_string_to_metric_families(text)}


def test_no_endpoint_unless_a_port_is_set(tmp_path: Path) -> None:
    assert metrics.serve(load_settings(var_dir=tmp_path), "test") is None
    assert metrics.serve(load_settings(var_dir=tmp_path, metrics_port=0), "test") is None


def test_the_endpoint_answers_in_the_text_format_the_parser_reads(tmp_path: Path) -> None:
    port = free_port()
    settings = load_settings(var_dir=tmp_path, metrics_port=port, metrics_host="127.0.0.1")
    assert metrics.serve(settings, "test") == port
    assert metrics.serve(settings, "test") == port  # a second call reuses the endpoint
    metrics.CONSUMER_LAG.labels("test-consumer", "help.t", "3").set(42)
    metrics.RECORDS.labels("test-consumer").inc(7)
    families = _scrape(port)
    assert ({"consumer": "test-consumer", "topic": "help.t", "partition": "3"}, 42.0) \
        in families["help_consumer_lag_records"]
    assert ({"consumer": "test-consumer"}, 7.0) in families["help_consumer_records"]
    metrics.forget_partitions("test-consumer", [("help.t", 3)])
    assert all(labels.get("consumer") != "test-consumer"
               for labels, _ in _scrape(port).get("help_consumer_lag_records", []))


def test_a_taken_port_is_a_configuration_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(var_dir=tmp_path, metrics_port=port, metrics_host="127.0.0.1")
        with pytest.raises(ConfigurationError, match="HELP_METRICS_PORT"):
            metrics.serve(settings, "test")


def test_outbox_depth_as_text_for_a_batch_command() -> None:
    text = metrics.outbox_exposition({("caf", "pending"): 3, ("caf", "awaiting_receipt"): 5})
    samples = {(s.labels["fund"], s.labels["state"]): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples == {("caf", "pending"): 3.0, ("caf", "awaiting_receipt"): 5.0}
