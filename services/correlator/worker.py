"""Start a correlator worker process: topics it needs, then Faust's worker loop."""

from __future__ import annotations

import asyncio
import logging

from services.correlator import faust_seam
from services.correlator.app import changelog_topic, make_app
from services.correlator.engine import repartition_spec
from services.platform import metrics
from services.platform.broker import resolve_bootstrap
from services.platform.kafka import apply_topics
from services.platform.runtime import tune_for_streaming
from services.platform.settings import Settings
from services.platform.stopping import Deadline
from services.platform.topics import TopicSpec


def ensure_internal_topics(settings: Settings, bootstrap: str) -> None:
    """The correlator's own topics, co-partitioned: the repartition topic and the person-state
    changelog (compacted: the latest state per person is all that counts)."""
    specs = [repartition_spec(settings.partitions),
             TopicSpec(changelog_topic(settings.correlator_app_id), "correlator", settings.partitions, 1,
                       {"cleanup.policy": "compact"})]
    asyncio.run(apply_topics(settings, bootstrap, specs))


def run_worker(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT: then the batch in progress is finished and committed and
    the process exits 0, or 75 past ``settings.drain_timeout_s`` (services.platform.stopping)."""
    bootstrap = resolve_bootstrap(settings)
    ensure_internal_topics(settings, bootstrap)
    metrics.serve(settings, "correlator")
    deadline = Deadline(settings.drain_timeout_s, "correlator")
    app = make_app(settings, bootstrap, deadline)
    # No per-message log records: WARNING and above only. Faust's spinner (on when stdout is
    # a terminal) sets the root logger to DEBUG, so every debug record of aiokafka and Faust
    # was built per message: no spinner.
    worker = faust_seam.worker(app, deadline.arm, loglevel=logging.WARNING, quiet=True)
    worker.spinner = None
    tune_for_streaming()  # the collector's policy: services.platform.runtime
    worker.execute_from_commandline()
