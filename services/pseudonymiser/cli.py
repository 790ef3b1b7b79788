"""``help-exchange pseudonymiser init-key | keys | serve``: the pseudonymisation service (scheme v2)."""

from __future__ import annotations

import json

import click

from services.platform.cli import provided, settings_from
from services.platform.serving import serve_until_interrupted
from services.platform.settings import Settings
from services.platform.stopping import Deadline
from services.pseudonymiser.wiring import PseudonymiserWiring


def _settings(ctx: click.Context) -> Settings:
    return settings_from(ctx)


def register(cli: click.Group) -> None:
    cli.add_command(pseudonymiser)


@click.group()
def pseudonymiser() -> None:
    """The pseudonymisation service: RFC 9497 VOPRF under keys only it holds (scheme v2).

    Funds blind each NIR, the service evaluates batches (one proof per batch) within each
    fund's daily quota, and every batch enters the audit ledger (docs/contract.md §4.2)."""


@pseudonymiser.command("init-key")
@click.pass_context
def init_key_cmd(ctx: click.Context) -> None:
    """Create a key version: its seed stays in the service's key store; its public key is
    published in public.json and the version listed active in the registry."""
    from services.pseudonymiser.keystore import init_key

    click.echo(init_key(_settings(ctx)))


@pseudonymiser.command("destroy-key")
@click.option("--key-version", required=True, help="The version to destroy, e.g. pk-1a2b3c4d.")
@click.pass_context
def destroy_key_cmd(ctx: click.Context, key_version: str) -> None:
    """End a version's overlap window: destroy its seed, retire it (public.json, registry) and
    record the destruction in the ledger. Refused for the only active version."""
    from services.pseudonymiser.keystore import destroy_key

    settings = _settings(ctx)
    destroy_key(settings, key_version, provided(ctx, PseudonymiserWiring).log(settings).key_destroyed)
    click.echo(f"{key_version} destroyed and retired")


@pseudonymiser.command("keys")
@click.pass_context
def keys_cmd(ctx: click.Context) -> None:
    """Print the published key versions (public.json)."""
    from services.core.pseudonymisation import public_path, read_public
    from services.pseudonymiser.keystore import store_dir

    path = public_path(store_dir(_settings(ctx)))
    read_public(path)  # a missing or malformed file: one line saying so
    click.echo(json.dumps(json.loads(path.read_bytes()), indent=1))


@pseudonymiser.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=19480, show_default=True, type=click.IntRange(1024, 65535))
@click.pass_context
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve POST /v1/evaluate and GET /v1/keys until stopped (Ctrl-C, SIGTERM: the requests
    in flight are answered first)."""
    from services.core.pseudonymisation import public_path
    from services.platform import metrics
    from services.pseudonymiser.keystore import store_dir
    from services.pseudonymiser.server import make_server
    from services.pseudonymiser.service import build_service

    settings = _settings(ctx)
    service = build_service(settings, log=provided(ctx, PseudonymiserWiring).log(settings))
    try:
        server = make_server(service, public_path(store_dir(settings)), host, port)
    except OSError as exc:
        from services.errors import ConfigurationError

        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                 "check --host, and choose a free port with --port") from None
    click.echo(f"pseudonymiser on http://{host}:{port}/ (key version {service.current_version}; Ctrl-C stops it)",
               err=True)
    metrics.serve(settings, "pseudonymiser")
    # SIGTERM or SIGINT: no new connection; the requests in flight are answered (their ledger
    # rows written), within HELP_DRAIN_TIMEOUT_S (services.platform.stopping).
    serve_until_interrupted(server, Deadline(settings.drain_timeout_s, "pseudonymiser"))
