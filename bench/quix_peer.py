"""The peer of the correlator bench: the same job written with Quix Streams.

A team choosing a stream processor in Python today would look at Quix Streams as well as at
Faust: a ``StreamingDataFrame`` over Kafka (confluent-kafka, i.e. librdkafka), per-key state
in RocksDB with a changelog topic, checkpoints every ``commit_interval`` seconds. This module
is that team's correlator, written the way Quix Streams' documentation writes an
application, so that :mod:`bench.correlator` can run it on the same broker and the same
signals as our correlator and the plain Faust agent, in the same run.

What it does, per signal (the project's own functions, as the plain agent uses them, so the
figures differ by architecture, not by crypto or validation code):

- ``json.loads``, the fund's key from the registry (wrapped in a
  :class:`~services.core.signing.VerifyingKey` once per key id),
  :func:`services.core.signing.verify`, then :func:`services.core.messages.parse` into a
  :class:`~services.core.messages.Signal` (schema);
- the L115-2-1 policy (:func:`services.core.policy.check_exchange`, no consent on record:
  this peer reads no consent topic);
- the person's state in Quix Streams' ``State`` (``sdf.apply(..., stateful=True)``, RocksDB,
  keyed by the message key, the pseudonym): the accepted signals of the correlation window
  (id, fund, date), a duplicate signal id refused;
- one rule, ``situation_partagee`` of ``schemas/rules.yaml`` (at least ``minimum`` distinct
  funds within ``fenetre_correlation_jours``): when it first holds, one situation
  (``ouverte``) goes to the output topic with ``sdf.to_topic``; its id is
  :func:`services.core.person.situation_id_for`, as ours.

What it does not do, and ours does: receipts and dead letters to the funds, the date rules,
consents, objections, the other rules and the situation's later versions (updates,
closure, reopening), repartitioning of misrouted records, erasure, registry reload,
redelivery answered byte for byte. Its state is a small JSON document per person where ours
is the full person state.

Every topic a fund publishes on is read: one dataframe per topic, concatenated
(``sdf.concat``), so that a person's signals from two funds meet in one state store (the
topics are co-partitioned). Quix Streams then aligns the topics by timestamp.

Progress goes to stdout, one line each, prefixed ``QUIX``: ``first <t>`` when the first
message is done, ``progress <n> <t>`` every 1,000, ``done <n> <ok> <refused> <situations>
<t_first> <t_last>`` when ``--count`` messages are done (``t`` from ``time.monotonic()``, so
the rate is the peer's own, ``(n - 1) / (t_last - t_first)``); then the application stops
(its last checkpoint commits the offsets, the state and the produced situations) and
``stopped`` is printed.

``python -m bench.quix_peer --bootstrap HOST:PORT --registry PATH --output TOPIC --count N
[--guarantee at-least-once|exactly-once] [--no-changelog] [--commit-interval S]
[--session-timeout-ms MS] [--state-dir DIR]``

Quix Streams is not a dependency of the project: ``make bench`` installs it, pinned, in a
venv of its own (``.venv-bench``: its pins of pydantic and confluent-kafka are older than
ours).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from services.core.messages import LegalBasisLaw, Signal, parse
from services.core.person import situation_id_for
from services.core.policy import check_exchange, load_policy
from services.core.registry import load_registry
from services.core.rules import DistinctFundsRule, load_rules
from services.core.signing import VerifyingKey, verify
from services.core.taxonomy import load_taxonomy
from services.core.types import Fund
from services.platform.settings import DEFAULT_SCHEMAS_DIR
from services.platform.topics import signal_topic

PREFIX = "QUIX"
EVERY = 1000
RULE = "situation_partagee"
_OUT = sys.stdout


def say(*parts: object) -> None:
    _OUT.write(" ".join(map(str, (PREFIX, *parts))) + "\n")
    _OUT.flush()


def make_app(bootstrap: str, registry_path: Path, output: str, count: int, state_dir: Path, *,
             consumer_group: str = "bench-quix-peer", guarantee: str = "at-least-once",
             changelog: bool = True, commit_interval: float = 5.0,
             session_timeout_ms: int | None = None, schemas_dir: Path = DEFAULT_SCHEMAS_DIR) -> Any:
    from quixstreams import Application, State

    taxonomy = load_taxonomy(schemas_dir / "taxonomy.yaml")
    policy = load_policy(schemas_dir / "policy.yaml")
    rules = load_rules(schemas_dir / "rules.yaml", taxonomy)
    rule = rules.regles[RULE]
    assert isinstance(rule, DistinctFundsRule)
    window = dt.timedelta(days=rules.fenetre_correlation_jours)
    registry = load_registry(registry_path)
    keys: dict[tuple[str, str], VerifyingKey | None] = {}

    def key_for(fund: str, key_id: str) -> VerifyingKey | None:
        if (fund, key_id) not in keys:
            public = registry.signing_key(Fund(fund), key_id)
            keys[(fund, key_id)] = VerifyingKey(public) if public is not None else None
        return keys[(fund, key_id)]

    consumer: dict[str, Any] = {}
    if session_timeout_ms is not None:  # as the correlator and the plain agent derive them
        consumer = {"session.timeout.ms": session_timeout_ms,
                    "heartbeat.interval.ms": max(300, session_timeout_ms // 4)}
    app = Application(
        broker_address=bootstrap,
        consumer_group=consumer_group,
        auto_offset_reset="earliest",
        commit_interval=commit_interval,
        processing_guarantee=guarantee,  # type: ignore[arg-type]
        use_changelog_topics=changelog,
        state_dir=str(state_dir),
        consumer_extra_config=consumer,
        loglevel=os.environ.get("BENCH_QUIX_LOGLEVEL", "WARNING"),
    )
    sources = [app.topic(signal_topic(f), key_deserializer="str", value_deserializer="bytes") for f in Fund]
    sdf = app.dataframe(sources[0])
    for topic in sources[1:]:
        sdf = sdf.concat(app.dataframe(topic))
    situations = app.topic(output, key_serializer="str", value_serializer="json")
    progress = {"n": 0, "ok": 0, "refused": 0, "situations": 0, "first": 0.0}

    def check(raw: bytes) -> Signal | None:
        try:
            message = json.loads(raw)
            key = key_for(message["fund"], message["signature"]["key_id"])
            if key is None or not verify(message, key):
                return None
            signal = parse(Signal, raw)
        except (ValueError, KeyError, TypeError):  # pydantic's ValidationError is a ValueError
            return None
        basis = signal.legal_basis
        conditions = tuple(basis.conditions) if isinstance(basis, LegalBasisLaw) else ()
        refused = check_exchange(policy, taxonomy, fund=signal.fund, category=signal.category,
                                 purpose=signal.purpose, basis=basis.code, conditions=conditions,
                                 consent_on_record=False)
        return signal if refused is None else None

    def correlate(raw: bytes, key: str, timestamp: int, headers: Any, state: State) -> dict[str, Any] | None:
        situation = None
        signal = check(raw)
        if signal is None:
            progress["refused"] += 1
        else:
            today = dt.datetime.fromtimestamp(timestamp / 1000, dt.UTC).date()
            oldest = (today - window).isoformat()
            kept = [s for s in state.get("signals", []) if s[2] >= oldest]
            if any(s[0] == signal.signal_id for s in kept):
                progress["refused"] += 1  # a duplicate
            else:
                kept = [*kept, [signal.signal_id, signal.fund.value, signal.observed_on.isoformat()]]
                kept = kept[-rules.signalements_max_par_personne:]
                state.set("signals", kept)
                funds = sorted({s[1] for s in kept})
                if len(funds) >= rule.minimum and not state.get("situation"):
                    situation_id = situation_id_for(signal.pseudonym)
                    state.set("situation", situation_id)
                    situation = {"situation_id": situation_id, "version": 1, "kind": "ouverte", "rules": [RULE],
                                 "funds": funds, "pseudonym": signal.pseudonym.model_dump(mode="json")}
                    progress["situations"] += 1
                progress["ok"] += 1
        progress["n"] += 1
        n, now = progress["n"], time.monotonic()
        if n == 1:
            progress["first"] = now
            say("first", f"{now:.6f}")
        if n % EVERY == 0:
            say("progress", n, f"{now:.6f}")
        if n == count:
            say("done", n, progress["ok"], progress["refused"], progress["situations"],
                f"{progress['first']:.6f}", f"{now:.6f}")
            app.stop()
        return situation

    sdf = sdf.apply(correlate, stateful=True, metadata=True)
    sdf = sdf.filter(lambda situation: situation is not None)
    sdf.to_topic(situations)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quix_peer", description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of the broker")
    parser.add_argument("--registry", required=True, type=Path, help="the key registry (registry.json)")
    parser.add_argument("--output", required=True, help="the topic the situations go to")
    parser.add_argument("--count", type=int, required=True, help="stop after this many messages")
    parser.add_argument("--group", default="bench-quix-peer", help="the consumer group")
    parser.add_argument("--guarantee", default="at-least-once", choices=("at-least-once", "exactly-once"))
    parser.add_argument("--no-changelog", action="store_true", help="state in RocksDB only, no changelog topic")
    parser.add_argument("--commit-interval", type=float, default=5.0, help="seconds between checkpoints (5)")
    parser.add_argument("--session-timeout-ms", type=int, default=None, help="the group session timeout")
    parser.add_argument("--state-dir", type=Path, default=None, help="RocksDB's directory (a temporary one)")
    args = parser.parse_args(argv)
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="help-quix-peer-"))
    app = make_app(args.bootstrap, args.registry, args.output, args.count, state_dir,
                   consumer_group=args.group, guarantee=args.guarantee, changelog=not args.no_changelog,
                   commit_interval=args.commit_interval, session_timeout_ms=args.session_timeout_ms)
    app.run()
    say("stopped")


if __name__ == "__main__":
    main()
