"""Prometheus metrics of every service, in one registry, and their HTTP endpoint.

Every metric is declared here, so that one file says what an operator can see
(docs/operations.md explains each, with alert suggestions). Names start with ``help_``;
labels name topics, partitions, consumers, reasons and funds, never a person.

The services update them at the end of a batch (a counter incremented by a batch's count,
a histogram observed once per batch), never per message. A long-running command calls
:func:`serve` once: with ``HELP_METRICS_PORT`` unset or 0 it does nothing; otherwise the
standard client library's HTTP server answers ``/metrics`` from a daemon thread. A batch
command (the producer) prints its gauges instead (:func:`exposition`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from services.errors import ConfigurationError, InputError
from services.platform.settings import Settings

log = logging.getLogger("help.metrics")

#: Every metric of a process (plus the client library's process and platform collectors).
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

#: Batch and checkpoint durations: from a millisecond to a minute.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_PARTITION = ("consumer", "topic", "partition")

# ------------------------------------------------------------------ every consumer (lag)
CONSUMER_LAG = Gauge(
    "help_consumer_lag_records",
    "Records on the partition not yet processed: the partition's true end offset minus the next "
    "offset the consumer commits (measured every HELP_LAG_PROBE_EVERY_S).",
    _PARTITION, registry=REGISTRY)
OLDEST_AGE = Gauge(
    "help_consumer_oldest_unprocessed_age_seconds",
    "Age (from its broker timestamp) of the oldest record of the partition not yet processed; "
    "0 when the consumer has caught up.",
    _PARTITION, registry=REGISTRY)
BATCH_SECONDS = Histogram(
    "help_consumer_batch_seconds",
    "Time to process one batch, from the records in hand to its effects handed over.",
    ("consumer",), buckets=DURATION_BUCKETS, registry=REGISTRY)
RECORDS = Counter(
    "help_consumer_records",
    "Records processed.",
    ("consumer",), registry=REGISTRY)
LAG_PROBE_FAILURES = Counter(
    "help_consumer_lag_probe_failures",
    "Lag measurements that failed (the broker did not answer in time); the gauges keep their "
    "last value.",
    ("consumer",), registry=REGISTRY)

# ------------------------------------------------------------------ correlator worker
CHECKPOINT_SECONDS = Histogram(
    "help_correlator_checkpoint_seconds",
    "Time of a batch's checkpoint: state writes acknowledged, outputs acknowledged, offsets "
    "committed.",
    buckets=DURATION_BUCKETS, registry=REGISTRY)
RECEIPTS = Counter(
    "help_correlator_receipts",
    "Receipts and dead letters written, by outcome (accepte, rejete) and reason code (empty when "
    "accepted).",
    ("status", "reason"), registry=REGISTRY)
SIGNALS = Counter(
    "help_correlator_signals",
    "Source records the correlator processed (signals, consents, re-keyed forwards).",
    registry=REGISTRY)
CHECK_HELPERS_REPLACED = Counter(
    "help_correlator_check_helpers_replaced",
    "Check helper processes found dead between batches and replaced (a death during a batch "
    "stops the worker instead, exit 75).",
    registry=REGISTRY)
STALLED = Gauge(
    "help_partition_stalled",
    "1 while an assigned partition has records to process but its committed offset has not "
    "moved for HELP_WATCHDOG_STALL_S seconds; else 0.",
    _PARTITION, registry=REGISTRY)
PAUSED = Gauge(
    "help_partition_paused",
    "1 while the correlator has paused the fetching of an assigned partition on purpose: it "
    "holds HELP_CORRELATOR_HOLD_MAX records back for hand-overs whose answers have not come "
    "(not a stall: the watchdog does not report it); else 0.",
    _PARTITION, registry=REGISTRY)
HELD_RECORDS = Gauge(
    "help_correlator_held_records",
    "Records the worker holds back for persons waiting for a cross-partition hand-over (key "
    "rotation), processed in order when the answer comes.",
    ("consumer",), registry=REGISTRY)
OLDEST_HOLD = Gauge(
    "help_correlator_oldest_hold_seconds",
    "Seconds since the worker's oldest hand-over still waiting began to hold records; 0: none.",
    ("consumer",), registry=REGISTRY)

# ------------------------------------------------------------------ pseudonymisation service
EVALUATIONS = Counter(
    "help_pseudonymiser_evaluations",
    "Elements evaluated (VOPRF), by fund.",
    ("fund",), registry=REGISTRY)
REFUSALS = Counter(
    "help_pseudonymiser_refusals",
    "Batches refused, by fund and reason code.",
    ("fund", "reason"), registry=REGISTRY)

_served: dict[int, object] = {}
_serve_lock = threading.Lock()


def serve(settings: Settings, service: str) -> int | None:
    """Start the metrics endpoint of this process if ``HELP_METRICS_PORT`` is set; returns
    its port (None: disabled). A port already taken is a :class:`ConfigurationError`."""
    port = settings.metrics_port
    if not port:
        return None
    with _serve_lock:
        if port in _served:
            return port
        try:
            server, _thread = start_http_server(port, addr=settings.metrics_host, registry=REGISTRY)
        except OSError as exc:
            raise ConfigurationError(
                f"{service}: the metrics endpoint cannot listen on {settings.metrics_host}:{port} "
                f"(HELP_METRICS_PORT): {exc}",
                "give each process sharing a host its own HELP_METRICS_PORT, or unset it (no endpoint)",
            ) from exc
        _served[port] = server
    log.info("%s: metrics on http://%s:%d/metrics", service, settings.metrics_host, port)
    return port


def forget_partitions(consumer: str, partitions: Iterable[tuple[str, int]]) -> None:
    """Remove the per-partition series of partitions no longer assigned to ``consumer``."""
    for topic, partition in partitions:
        labels = (consumer, topic, str(partition))
        for gauge in (CONSUMER_LAG, OLDEST_AGE, STALLED, PAUSED):
            with contextlib.suppress(KeyError):  # (never set for this partition)
                gauge.remove(*labels)


def exposition(registry: CollectorRegistry = REGISTRY) -> str:
    """The registry in the Prometheus text format (what ``/metrics`` answers)."""
    return generate_latest(registry).decode()


def write_textfile(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file)."""
    try:
        if not path.name:
            raise ValueError("no file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"the metrics file {str(path)!r} cannot be written: {exc}",
                         "give a file path in a writable directory, e.g. textfile/help-outbox-caf.prom") from None


def outbox_exposition(depths: Mapping[tuple[str, str], int]) -> str:
    """The producer's outbox depth, (fund, state) -> rows, in the Prometheus text format: a
    registry of its own, for a batch command that prints it or writes it for node_exporter's
    textfile collector."""
    registry = CollectorRegistry()
    gauge = Gauge("help_producer_outbox_rows",
                  "Rows in the producer's outbox, by fund and state (pending: not yet acknowledged by "
                  "the broker; awaiting_receipt: acknowledged, no receipt yet).",
                  ("fund", "state"), registry=registry)
    for (fund, state), rows in sorted(depths.items()):
        gauge.labels(fund, state).set(rows)
    return exposition(registry)
