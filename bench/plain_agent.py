"""The reference point of the correlator bench: a plain per-message Faust agent.

The issue's figure ("a plain per-message Faust agent doing signature check, validation and
a table write manages about 2,500-3,000 signals/s on this machine") was measured on one
day; the machine's speed varies from day to day, so :mod:`bench.correlator` runs this agent
itself, in the same run, on the same broker and the same records, and prints the ratio.

The agent is written the straightforward way, with Faust's defaults: one ``@app.agent`` over
every ``help.signals.<fund>.v1`` topic, one message at a time through the stream iterator,
``processing_guarantee="at_least_once"`` (Faust acks and commits), Faust's fetch settings,
a ``memory://`` store and a Faust ``Table`` with its changelog. Per message: ``json.loads``,
the fund's key from the registry, :func:`services.core.signing.verify` (the project's own
check, so the two figures differ by architecture, not by crypto: the key is wrapped in a
:class:`~services.core.signing.VerifyingKey` once per key id, as the correlator does),
:func:`services.core.messages.parse` into :class:`~services.core.messages.Signal`, then
``table[pseudonym] = {"signal_id": ..., "category": ...}``.

It produces nothing but its changelog. Progress goes to stdout, one line each, prefixed
``PLAIN``: ``first <t>`` when the first message is done, ``progress <n> <t>`` every 1,000,
and ``done <n> <ok> <refused> <t_first> <t_last>`` when ``--count`` messages are done (``t``
from ``time.monotonic()``, so the rate is the agent's own: ``(n - 1) / (t_last - t_first)``).
It goes on consuming afterwards until it is stopped (SIGTERM).

``python -m bench.plain_agent --bootstrap HOST:PORT --registry PATH --app-id ID --count N
[--session-timeout-ms MS] [--datadir DIR]``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from services.core.messages import Signal, parse
from services.core.registry import load_registry
from services.core.signing import VerifyingKey, verify
from services.core.types import Fund
from services.platform.topics import CONTRACT_PARTITIONS, signal_topic

PARTITIONS = CONTRACT_PARTITIONS
PREFIX = "PLAIN"
EVERY = 1000
#: The real stdout: the progress lines must reach the bench whatever the worker does with
#: ``sys.stdout`` (mode's worker redirects it to the log by default; that is turned off below).
_OUT = sys.stdout


def say(*parts: object) -> None:
    _OUT.write(" ".join(map(str, (PREFIX, *parts))) + "\n")
    _OUT.flush()


def group_options(session_timeout_ms: int | None) -> dict[str, Any]:
    """Group membership timings as the correlator derives them from its session timeout
    (``services/correlator/app.py``), or Faust's defaults when none is given. They bound how
    long a join or a rebalance takes, not the work per message: with Faust's 60 s the
    embedded broker held the first join for 30 s."""
    if session_timeout_ms is None:
        return {}
    session_s = session_timeout_ms / 1000
    return {"broker_session_timeout": session_s, "broker_heartbeat_interval": max(0.3, session_s / 4),
            "broker_request_timeout": max(15.0, session_s + 5), "broker_rebalance_timeout": max(10.0, session_s * 2)}


def make_app(bootstrap: str, registry_path: Path, app_id: str, count: int, datadir: Path,
             session_timeout_ms: int | None = None) -> Any:
    import faust

    registry = load_registry(registry_path)
    keys: dict[tuple[str, str], VerifyingKey | None] = {}

    def key_for(fund: str, key_id: str) -> VerifyingKey | None:
        if (fund, key_id) not in keys:
            public = registry.signing_key(Fund(fund), key_id)
            keys[(fund, key_id)] = VerifyingKey(public) if public is not None else None
        return keys[(fund, key_id)]

    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=str(datadir),
        processing_guarantee="at_least_once",
        web_enabled=False,
        web_tables_enabled=False,
        topic_partitions=PARTITIONS,
        topic_replication_factor=1,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        **group_options(session_timeout_ms),
    )
    source = app.topic(*(signal_topic(f) for f in Fund), key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    table = app.Table("plain-signals", default=None, partitions=PARTITIONS)

    @app.agent(source)
    async def plain(stream: Any) -> None:
        n = ok = refused = 0
        first = 0.0
        async for raw in stream:
            try:
                message = json.loads(raw)
                fund, key_id = message["fund"], message["signature"]["key_id"]
                key = key_for(fund, key_id)
                if key is None or not verify(message, key):
                    raise ValueError("bad signature")
                signal = parse(Signal, raw)
            except (ValueError, KeyError, TypeError):  # pydantic's ValidationError is a ValueError
                refused += 1
            else:
                table[signal.pseudonym.value] = {"signal_id": signal.signal_id,
                                                 "category": signal.category}
                ok += 1
            n += 1
            now = time.monotonic()
            if n == 1:
                first = now
                say("first", f"{now:.6f}")
            if n % EVERY == 0:
                say("progress", n, f"{now:.6f}")
            if n == count:
                say("done", n, ok, refused, f"{first:.6f}", f"{now:.6f}")

    return app


def main(argv: list[str] | None = None) -> None:
    import faust

    parser = argparse.ArgumentParser(prog="python -m bench.plain_agent", description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of the broker")
    parser.add_argument("--registry", required=True, type=Path, help="the key registry (registry.json)")
    parser.add_argument("--app-id", default="bench-plain-agent", help="Faust app id (the consumer group)")
    parser.add_argument("--count", type=int, default=10_000, help="print 'done' after this many messages")
    parser.add_argument("--datadir", type=Path, default=None, help="Faust's data directory (a temporary one)")
    parser.add_argument("--session-timeout-ms", type=int, default=None,
                        help="the group session timeout, as HELP_SESSION_TIMEOUT_MS (Faust's 60 s by default)")
    parser.add_argument("--loglevel", default="WARNING", help="the worker's log level (WARNING)")
    args = parser.parse_args(argv)
    datadir = args.datadir or Path(tempfile.mkdtemp(prefix="help-plain-agent-"))
    app = make_app(args.bootstrap, args.registry, args.app_id, args.count, datadir, args.session_timeout_ms)
    # Quiet, as the correlator's worker: WARNING and above, no spinner (it logs at DEBUG);
    # stdout left alone (mode sends it to the log by default), it carries the progress lines.
    worker = faust.Worker(app, loglevel=getattr(logging, args.loglevel.upper()), quiet=True, redirect_stdouts=False)
    worker.spinner = None
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
