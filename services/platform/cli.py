"""The platform's commands (``broker``, ``topics``, ``settings``) and what every service's
commands share: the settings of the run (:func:`settings_from`), the collaborators the
composition root provided (:func:`provided`), and :func:`run_async`.

The root command, which gathers every service's commands, is :mod:`services.app.cli`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from services.errors import ConfigurationError
from services.platform.settings import SECRET_FIELDS, Settings, load_settings

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def settings_from(ctx: click.Context) -> Settings:
    """The run's settings (``ctx.obj``), loaded from the HELP_* environment on first use."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings()
    settings: Settings = obj["settings"]
    return settings


def provide(ctx: click.Context, collaborators: dict[type[Any], Any]) -> None:
    """Hand the commands the collaborators the composition root built, by the port each fills."""
    ctx.ensure_object(dict).update(collaborators)


def provided(ctx: click.Context, port: type[T]) -> T:
    """The collaborator that fills ``port`` (a Protocol a service declares), as
    :mod:`services.app.bootstrap` built it; refused when the command runs unwired."""
    found = ctx.ensure_object(dict).get(port)
    if found is None:
        raise ConfigurationError(f"nothing provides {port.__name__} to this command",
                                 "run it through the `help-exchange` command (services.app.cli)")
    return found  # type: ignore[no-any-return]


def register(cli: click.Group) -> None:
    cli.add_command(broker)
    cli.add_command(topics)
    cli.add_command(show_settings)


# ----------------------------------------------------------------------------- broker
@click.group(invoke_without_command=True)
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
@click.group()
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
@click.command("settings")
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
