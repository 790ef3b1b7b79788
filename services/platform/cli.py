"""``help-exchange``: the one command-line entry point.

Each service contributes its own commands from its own ``cli`` module (see ``_SERVICE_CLIS``);
this module only holds the platform commands (broker, topics, settings, demo) and the error
handling every command shares: a :class:`~services.errors.HelpExchangeError` becomes one
line on stderr saying what is wrong and how to fix it, and a non-zero exit, no traceback.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from services import __version__
from services.errors import HelpExchangeError
from services.platform.clitypes import OutputFile
from services.platform.settings import SECRET_FIELDS, Settings, load_settings

T = TypeVar("T")

#: Modules that define a ``register(cli: click.Group)`` function, one per service.
_SERVICE_CLIS = (
    "services.producer.cli",
    "services.producer.consent_cli",
    "services.correlator.cli",
    "services.casebook.cli",
    "services.casebook.meeting_cli",
    "services.ledger.cli",
    "services.pseudonymiser.cli",
    "services.simulator.cli",
    "services.platform.demo",
)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def settings_from(ctx: click.Context) -> Settings:
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings()
    settings: Settings = obj["settings"]
    return settings


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
def cli() -> None:
    """help-exchange: inter-branch fragility signalling (article L115-2-1 CSS).

    Back-offices of Urssaf, CPAM, CAF and Carsat publish pseudonymised signals; the
    correlator finds shared situations; the casebook prepares the monthly joint review.

    Settings come from HELP_* environment variables (see `help-exchange settings`).
    Without HELP_BOOTSTRAP_SERVERS, commands use the embedded broker, started on demand.
    """


# ----------------------------------------------------------------------------- broker
@cli.group(invoke_without_command=True)
@click.pass_context
def broker(ctx: click.Context) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in memory) on loopback.

    Without a sub-command: start it in the foreground until Ctrl-C.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(broker_start, detach=False)


@broker.command("start")
@click.option("--detach", is_flag=True, help="Start in the background and return once it answers.")
@click.pass_context
def broker_start(ctx: click.Context, detach: bool) -> None:
    """Start the embedded broker and wait until it answers Kafka requests."""
    from services.platform.broker import EmbeddedBroker

    settings = settings_from(ctx)
    embedded = EmbeddedBroker(settings)
    running = embedded.running()
    if running is not None:
        click.echo(f"the embedded broker already runs on {running.bootstrap} (pid {running.pid})")
        return
    state, proc = embedded.start(detach=detach)
    click.echo(f"embedded broker ready on {state.bootstrap} (pid {state.pid}, log {embedded.log_file})")
    if detach:
        click.echo("stop it with: help-exchange broker stop")
        return
    click.echo("Ctrl-C stops it; memory storage: topics are lost when it stops")

    def _terminate(*_: object) -> None:
        proc.terminate()

    signal.signal(signal.SIGTERM, _terminate)
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=10)
    finally:
        embedded.state_file.unlink(missing_ok=True)


@broker.command("stop")
@click.pass_context
def broker_stop(ctx: click.Context) -> None:
    """Stop the embedded broker started with --detach (or on demand)."""
    from services.platform.broker import EmbeddedBroker

    state = EmbeddedBroker(settings_from(ctx)).stop()
    click.echo(f"stopped the embedded broker (pid {state.pid})" if state else "no embedded broker was running")


@broker.command("status")
@click.pass_context
def broker_status(ctx: click.Context) -> None:
    """Say whether the broker in use answers (exit 1 if not)."""
    from services.platform.broker import EmbeddedBroker, ensure_reachable

    settings = settings_from(ctx)
    if settings.bootstrap_servers:
        ensure_reachable(settings.bootstrap_servers, settings.broker_connect_timeout_s)
        click.echo(f"Kafka answers at {settings.bootstrap_servers}")
        return
    state = EmbeddedBroker(settings).running()
    if state is None:
        click.echo("no embedded broker is running (start one: help-exchange broker start --detach)")
        ctx.exit(1)
    click.echo(f"embedded broker answers on {state.bootstrap} (pid {state.pid})")


# ----------------------------------------------------------------------------- topics
@cli.group()
def topics() -> None:
    """The topics declared in schemas/asyncapi.yaml."""


@topics.command("list")
@click.pass_context
def topics_list(ctx: click.Context) -> None:
    """Print every declared topic with its partitions and configuration (no broker needed)."""
    from services.platform.topics import load_topic_specs

    for spec in load_topic_specs(settings_from(ctx).schemas_dir / "asyncapi.yaml"):
        config = ", ".join(f"{k}={v}" for k, v in sorted(spec.config.items()))
        click.echo(f"{spec.name:<28} partitions={spec.partitions:<2} {config}")


@topics.command("apply")
@click.pass_context
def topics_apply(ctx: click.Context) -> None:
    """Create every declared topic that is missing, with its configuration (idempotent)."""
    from services.platform.broker import resolve_bootstrap
    from services.platform.kafka import apply_topics
    from services.platform.topics import load_topic_specs

    settings = settings_from(ctx)
    specs = load_topic_specs(settings.schemas_dir / "asyncapi.yaml")
    bootstrap = resolve_bootstrap(settings)
    changes = run_async(apply_topics(settings, bootstrap, specs))
    for change in changes:
        click.echo(f"{change.name:<28} {change.action:<20} partitions={change.partitions} "
                   f"replicas={change.replicas}")
    created = sum(c.action != "existant" for c in changes)
    click.echo(f"{len(changes)} topics declared on {bootstrap}, {created} created or grown")


# ----------------------------------------------------------------------------- settings
@cli.command("settings")
@click.pass_context
def show_settings(ctx: click.Context) -> None:
    """Print the effective settings (HELP_* environment variables) and check the data files."""
    settings = settings_from(ctx)
    for name in Settings.model_fields:
        value = getattr(settings, name)
        shown = "(set, not shown)" if name in SECRET_FIELDS and value is not None else value
        click.echo(f"HELP_{name.upper():<28} {shown}")
    click.echo(f"taxonomy: {len(settings.taxonomy.categories)} categories; policy version {settings.policy.version}")
    from services.core.registry import load_signer_public, load_verified_registry, registry_path
    from services.errors import ConfigurationError

    path = registry_path(settings.key_dir)
    if not path.exists():
        click.echo(f"key registry: none yet at {path} (help-exchange keys init …)")
        return
    try:
        registry = load_verified_registry(path, load_signer_public(settings.registry_signer_path))
    except ConfigurationError as exc:
        click.echo(f"key registry: NOT usable by the correlator: {exc.one_line()}")
        return
    click.echo(f"key registry: signature verified ({settings.registry_signer_path}); "
               f"{registry.active_signing_keys()} active signing keys")


def _register_services() -> None:
    for module_name in _SERVICE_CLIS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that service has no CLI yet
                continue
            raise
        register: Callable[[click.Group], None] = module.register
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


_register_services()


#: Files and folders the commands create (databases, outboxes, reject reports, exports, keys,
#: logs) are the owner's only: 0600 and 0700. Public key documents are made 0644 on purpose.
UMASK = 0o077


def main() -> None:
    os.umask(UMASK)
    cli(prog_name="help-exchange")


if __name__ == "__main__":  # pragma: no cover
    main()
