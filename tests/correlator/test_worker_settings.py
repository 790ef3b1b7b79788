"""The worker's knobs are settings (``HELP_CORRELATOR_*``), overridden by the command's
options and validated the same way; the partition count is the contract's (asyncapi.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from services.correlator import cli as correlator_cli
from services.correlator import worker
from services.errors import ConfigurationError
from services.platform.settings import DEFAULT_SCHEMAS_DIR, Settings, load_settings
from services.platform.topics import CONTRACT_PARTITIONS


def run(monkeypatch: pytest.MonkeyPatch, settings: Settings, *args: str) -> Any:
    started: list[Settings] = []
    monkeypatch.setattr(worker, "run_worker", started.append)
    group = click.Group()
    correlator_cli.register(group)
    result = CliRunner().invoke(group, ["correlator", *args], obj={"settings": settings})
    return started[0] if started else result.exception


def test_options_override_the_settings_and_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELP_CORRELATOR_BATCH_MAX", "1200")
    settings = load_settings()
    assert settings.correlator_batch_max == 1200
    assert run(monkeypatch, settings) == settings  # no option: the settings as they are
    chosen = run(monkeypatch, settings, "--app-id", "w2", "--check-processes", "0", "--batch-wait-ms", "5")
    assert (chosen.correlator_app_id, chosen.correlator_check_processes, chosen.correlator_batch_wait_ms,
            chosen.correlator_batch_max) == ("w2", 0, 5.0, 1200)
    refused = run(monkeypatch, settings, "--batch-max", "0")
    assert isinstance(refused, ConfigurationError) and "HELP_CORRELATOR_BATCH_MAX=0" in str(refused)


def test_partitions_come_from_the_contract(tmp_path: Path) -> None:
    assert load_settings().partitions == CONTRACT_PARTITIONS
    doc = yaml.safe_load((DEFAULT_SCHEMAS_DIR / "asyncapi.yaml").read_text())
    doc["channels"]["consents"]["bindings"]["kafka"]["partitions"] = CONTRACT_PARTITIONS * 2
    (tmp_path / "asyncapi.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigurationError, match="same kafka partitions"):
        _ = load_settings(schemas_dir=tmp_path).partitions
    for channel in ("signals", "consents"):
        doc["channels"][channel]["bindings"]["kafka"]["partitions"] = 12
    (tmp_path / "asyncapi.yaml").write_text(yaml.safe_dump(doc))
    assert load_settings(schemas_dir=tmp_path).partitions == 12
