"""``help-exchange correlator``: run a correlator worker (Faust) until stopped."""

from __future__ import annotations

import click

from services.correlator.tuning import DEFAULT_TUNING as _DEFAULT
from services.correlator.tuning import Tuning


def register(cli: click.Group) -> None:
    @cli.command("correlator")
    @click.option("--app-id", default=_DEFAULT.app_id, show_default=True,
                  help="Consumer group and table prefix: workers with the same id share the partitions.")
    @click.option("--batch-max", default=_DEFAULT.batch_max, show_default=True, help="Records per batch at most.")
    @click.option("--batch-wait-ms", default=round(_DEFAULT.batch_wait_s * 1000), show_default=True,
                  help="Wait this long to fill a batch.")
    @click.option("--fetch-wait-ms", default=_DEFAULT.fetch_wait_ms, show_default=True,
                  help="Longest wait of a fetch with nothing new (faust-streaming's own is 1500 ms). "
                       "Each idle fetch costs the embedded broker CPU: shorter is not free.")
    @click.option("--check-processes", default=_DEFAULT.check_processes, show_default=True,
                  help="Helper processes for the stateless checks (JSON, signature, schema); "
                       "0 runs them in the worker itself. About one per spare core.")
    @click.option("--gc-full-every-s", default=_DEFAULT.gc_full_every_s, show_default=True,
                  help="Seconds between full garbage collections (a pause of about a second per "
                       "million live objects); between them what survives a batch is frozen. "
                       "0 leaves CPython's own schedule.")
    @click.pass_context
    def correlator(ctx: click.Context, app_id: str, batch_max: int, batch_wait_ms: int,
                   fetch_wait_ms: int, check_processes: int, gc_full_every_s: float) -> None:
        """Verify, apply the L115-2-1 policy and correlate signals into shared situations.

        Reads help.signals.<fund>.v1 and help.consents.v1; writes receipts, dead letters
        and situation events. Ctrl-C (SIGTERM) stops it after committing what is done.
        """
        from services.correlator.worker import run_worker
        from services.platform.cli import settings_from

        run_worker(settings_from(ctx), Tuning(app_id=app_id, batch_max=batch_max,
                                              batch_wait_s=batch_wait_ms / 1000,
                                              fetch_wait_ms=fetch_wait_ms,
                                              check_processes=check_processes,
                                              gc_full_every_s=gc_full_every_s))
