"""Running commands in the tests: a bare group of one service's commands, wired as
``help-exchange`` wires them, and the whole command on a casebook of the test's own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from click.testing import CliRunner

from services.app import bootstrap
from services.platform.cli import provide


def wired_group(*registers: Callable[[click.Group], None]) -> click.Group:
    """No error handling (a command's error reaches the test as ``result.exception``), but the
    collaborators the app wires (:func:`services.app.bootstrap.collaborators`)."""
    @click.group()
    @click.pass_context
    def group(ctx: click.Context) -> None:
        provide(ctx, bootstrap.collaborators())

    for register in registers:
        register(group)
    return group


def run_cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    """``help-exchange ARGS`` on ``tmp_path/casebook.db``, no broker: (exit status, output)."""
    from services.app.cli import cli

    env = {"HELP_DATABASE_URL": f"sqlite:///{tmp_path / 'casebook.db'}", "HELP_VAR_DIR": str(tmp_path / "var"),
           "HELP_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")
