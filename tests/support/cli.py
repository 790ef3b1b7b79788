"""A bare command group for the tests of one service's commands: no error handling (a
command's error reaches the test as ``result.exception``), but the collaborators the app
wires (:func:`services.app.bootstrap.collaborators`), as ``help-exchange`` runs them."""

from __future__ import annotations

from collections.abc import Callable

import click

from services.app import bootstrap
from services.platform.cli import provide


def wired_group(*registers: Callable[[click.Group], None]) -> click.Group:
    @click.group()
    @click.pass_context
    def group(ctx: click.Context) -> None:
        provide(ctx, bootstrap.collaborators())

    for register in registers:
        register(group)
    return group
