"""``help-exchange signal-keys serve``: the exchange's key endpoint (sealed signals)."""

from __future__ import annotations

import click

from services.platform.cli import provided, settings_from
from services.platform.serving import serve_until_interrupted
from services.platform.stopping import Deadline
from services.signalkeys.wiring import SignalKeysWiring


def register(cli: click.Group) -> None:
    cli.add_command(signal_keys)


@click.group("signal-keys")
def signal_keys() -> None:
    """The key endpoint: the keys funds seal their signals' person members with.

    Each key is the person's current data key derived for the asking fund; erasure destroys
    the data key, and with it every copy of the fund's signals (docs/contract.md §4.4)."""




@signal_keys.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=19490, show_default=True, type=click.IntRange(1024, 65535))
@click.pass_context
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve POST /v1/signal-keys until stopped (Ctrl-C, SIGTERM: the requests in flight are
    answered first)."""
    from services.errors import ConfigurationError
    from services.platform import metrics
    from services.platform.datakeys import KeyStore
    from services.platform.db import open_engine
    from services.platform.markers import marker_key
    from services.signalkeys.server import make_server
    from services.signalkeys.service import SignalKeyService

    settings = settings_from(ctx)
    service = SignalKeyService(KeyStore(open_engine(settings.database_url)), marker_key(settings),
                               quota_per_day=settings.signal_keys_quota_per_day,
                               batch_limit=settings.signal_keys_batch_limit,
                               log=provided(ctx, SignalKeysWiring).log(settings))
    try:
        server = make_server(service, host, port)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                 "check --host, and choose a free port with --port") from None
    click.echo(f"signal keys on http://{host}:{port}/ (Ctrl-C stops it)", err=True)
    metrics.serve(settings, "signal-keys")
    serve_until_interrupted(server, Deadline(settings.drain_timeout_s, "signal-keys"))
