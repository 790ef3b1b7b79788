"""``help-exchange correlator``: run a correlator worker (Faust) until stopped.

Every option overrides a ``HELP_CORRELATOR_*`` setting (services/platform/settings.py)."""

from __future__ import annotations

from typing import Any

import click


def register(cli: click.Group) -> None:
    @cli.command("correlator")
    @click.option("--app-id", default=None, help="Consumer group and state-topic prefix: workers with "
                  "the same id share the partitions. [HELP_CORRELATOR_APP_ID]")
    @click.option("--batch-max", type=int, default=None, help="Records per batch at most. "
                  "[HELP_CORRELATOR_BATCH_MAX]")
    @click.option("--batch-wait-ms", type=float, default=None, help="Wait this long to fill a batch. "
                  "[HELP_CORRELATOR_BATCH_WAIT_MS]")
    @click.option("--fetch-wait-ms", type=int, default=None,
                  help="Longest wait of a fetch with nothing new (faust-streaming's own is 1500 ms); "
                       "each idle fetch costs the broker CPU: shorter is not free. [HELP_CORRELATOR_FETCH_WAIT_MS]")
    @click.option("--check-processes", type=int, default=None,
                  help="Helper processes for the stateless checks (JSON, signature, schema); "
                       "0 runs them in the worker itself. About one per spare core. "
                       "[HELP_CORRELATOR_CHECK_PROCESSES]")
    @click.option("--gc-full-every-s", type=float, default=None,
                  help="Seconds between full garbage collections (a pause of about a second per "
                       "million live objects); between them what survives a batch is frozen. "
                       "0 leaves CPython's own schedule. [HELP_CORRELATOR_GC_FULL_EVERY_S]")
    @click.pass_context
    def correlator(ctx: click.Context, /, **options: Any) -> None:
        """Verify, apply the L115-2-1 policy and correlate signals into shared situations.

        Reads help.signals.<fund>.v1 and help.consents.v1; writes receipts, dead letters
        and situation events. Ctrl-C (SIGTERM) stops it after committing the batch in progress
        (exit 0), within HELP_DRAIN_TIMEOUT_S (past it: exit 75, the rest read again at restart).
        """
        from services.correlator.worker import run_worker
        from services.platform.cli import settings_from
        from services.platform.settings import load_settings

        settings = settings_from(ctx)
        given = {f"correlator_{name}": value for name, value in options.items() if value is not None}
        if given:  # validated as the environment variables are
            settings = load_settings(**{**settings.model_dump(), **given})
        run_worker(settings)
