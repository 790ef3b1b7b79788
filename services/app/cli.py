"""``help-exchange``: the one command-line entry point, the composition root.

Each service contributes its own commands from its own ``cli`` module, imported here by
name (:func:`_register`); the commands that span several services (``demo``, ``purge``,
``access-report``) are the app's own. Before any command runs, the root hands it the
collaborators :mod:`services.app.bootstrap` builds (the casebook's audit sink wired to the
ledger, the ledger's view of the casebook's cases, …). This module also holds the error
handling every command shares: a :class:`~services.errors.HelpExchangeError` becomes one
line on stderr saying what is wrong and how to fix it, and a non-zero exit, no traceback.
"""

from __future__ import annotations

import os
from typing import Any

import click

from services import __version__
from services.app import access_report, bootstrap, demo, purge
from services.casebook import cli as casebook_cli
from services.casebook import meeting_cli
from services.correlator import cli as correlator_cli
from services.errors import HelpExchangeError
from services.ledger import cli as ledger_cli
from services.platform import cli as platform_cli
from services.platform.clitypes import OutputFile
from services.producer import cli as producer_cli
from services.producer import consent_cli
from services.pseudonymiser import cli as pseudonymiser_cli
from services.signalkeys import cli as signalkeys_cli
from services.simulator import cli as simulator_cli


def _usage_error(ctx: click.Context, exc: click.UsageError) -> None:
    if type(exc).__name__ == "NoArgsIsHelpError":  # a group typed alone: its help, as click shows it
        raise exc
    command = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
    click.secho(f"help-exchange: error: {exc.format_message()}", fg="red", err=True)
    click.echo(f"  how to fix: see `{command} --help`", err=True)
    ctx.exit(2)


class _Cli(click.Group):
    """A group that turns our errors into one clear line and an exit status."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # an unknown option before the command
            _usage_error(ctx, exc)
            raise  # pragma: no cover - ctx.exit raised

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HelpExchangeError as exc:
            click.secho(f"help-exchange: error: {exc.what}", fg="red", err=True)
            if exc.hint:
                click.echo(f"  how to fix: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except click.UsageError as exc:  # a wrong command, option or value: one line and a hint, exit 2
            _usage_error(ctx, exc)
        except OSError as exc:  # a path given on the command line that cannot be read or written
            if exc.filename is None:
                raise
            click.secho(f"help-exchange: error: {exc.strerror or exc} : {exc.filename}", fg="red", err=True)
            click.echo("  how to fix: vérifiez le chemin (un fichier, pas un dossier), qu'il existe et vos droits "
                       "dessus", err=True)
            ctx.exit(2)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="help-exchange")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """help-exchange: inter-branch fragility signalling (article L115-2-1 CSS).

    Back-offices of Urssaf, CPAM, CAF and Carsat publish pseudonymised signals; the
    correlator finds shared situations; the casebook prepares the monthly joint review.

    Settings come from HELP_* environment variables (see `help-exchange settings`).
    Without HELP_BOOTSTRAP_SERVERS, commands use the embedded broker, started on demand.
    """
    platform_cli.provide(ctx, bootstrap.collaborators())


def _register() -> None:
    for register in (platform_cli.register, producer_cli.register, consent_cli.register,
                     correlator_cli.register, casebook_cli.register, meeting_cli.register,
                     ledger_cli.register, pseudonymiser_cli.register, signalkeys_cli.register,
                     simulator_cli.register,
                     demo.register, purge.register, access_report.register):
        register(cli)
    _check_output_files(cli)


def _check_output_files(group: click.Group) -> None:
    """Every ``--out`` that names a file gets :class:`OutputFile` (no empty name, no folder), in
    every service's commands, so that ``--out ''`` is refused at the edge everywhere."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _check_output_files(command)
            continue
        for param in command.params:
            if ("--out" in param.opts and isinstance(param.type, click.Path) and not param.type.dir_okay
                    and not isinstance(param.type, OutputFile)):
                param.type = OutputFile()


_register()


#: Files and folders the commands create (databases, outboxes, reject reports, exports, keys,
#: logs) are the owner's only: 0600 and 0700. Public key documents are made 0644 on purpose.
UMASK = 0o077


def main() -> None:
    os.umask(UMASK)
    cli(prog_name="help-exchange")


if __name__ == "__main__":  # pragma: no cover
    main()
