"""The platform commands, run as a user runs them (a real process), on real failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.platform.settings import DEFAULT_SCHEMAS_DIR
from services.platform.topics import load_topic_specs
from tests.support.local import free_port

pytestmark = pytest.mark.integration
EXE = [sys.executable, "-m", "services.app.cli"]


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def assert_one_clear_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("help-exchange: error:"), done.stderr
    assert "how to fix:" in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_bad_setting(tmp_path: Path) -> None:
    done = run(["topics", "apply"], {"HELP_VAR_DIR": str(tmp_path), "HELP_TERRITORY": "99"})
    assert_one_clear_error(done, "HELP_TERRITORY", "département")


def test_unreachable_broker(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = run(["topics", "apply"], {"HELP_VAR_DIR": str(tmp_path), "HELP_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"})
    assert_one_clear_error(done, f"127.0.0.1:{port}", "help-exchange broker")


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        done = run(["broker", "start", "--detach"], {"HELP_VAR_DIR": str(tmp_path), "HELP_BROKER_PORT": str(port)})
    assert_one_clear_error(done, f"port {port}", "HELP_BROKER_PORT")


def test_embedded_broker_lifecycle_and_topics_apply(tmp_path: Path) -> None:
    env = {"HELP_VAR_DIR": str(tmp_path), "HELP_BROKER_PORT": str(free_port())}
    try:
        # Unset bootstrap servers: `topics apply` starts the embedded broker on demand.
        first = run(["topics", "apply"], env)
        assert first.returncode == 0, first.stderr
        assert "started the embedded broker" in first.stderr
        declared = load_topic_specs(DEFAULT_SCHEMAS_DIR / "asyncapi.yaml")
        assert len(declared) >= 15  # signals x5, receipts x5, situations, followups, consents, ...
        assert f"{len(declared)} topics declared" in first.stdout and "créé" in first.stdout
        assert all(spec.name in first.stdout for spec in declared)
        again = run(["topics", "apply"], env)
        assert again.returncode == 0 and "0 created or grown" in again.stdout  # idempotent
        status = run(["broker", "status"], env)
        assert status.returncode == 0 and "answers" in status.stdout
    finally:
        stop = run(["broker", "stop"], env)
    assert "stopped the embedded broker" in stop.stdout
    assert run(["broker", "status"], env).returncode == 1


def test_help_explains_every_command() -> None:
    done = run(["--help"], {})
    assert done.returncode == 0
    for command in ("broker", "topics", "settings"):
        assert command in done.stdout
