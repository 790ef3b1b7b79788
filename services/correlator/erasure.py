"""Erasure commands to the correlator: forget a person's signals and situation.

One command per person, on the internal topic ``help-correlator-repartition`` (header
``help-erase``), in the partition of the person's state, keyed by the person's subject and
naming them by keyed digests, not by the pseudonym (:func:`~services.correlator.engine.erasure_command`).
The correlator forgets the person and publishes the situation's tombstone itself, after its
state is erased, so that a signal read meanwhile cannot publish a version after it. Used by
``help-exchange purge`` (:mod:`services.app.purge`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from services.correlator.engine import H_ERASE, REPARTITION_TOPIC, erasure_command, repartition_spec
from services.errors import BrokerError
from services.platform import kafka
from services.platform.markers import marker_key
from services.platform.settings import Settings
from services.platform.topics import ORIGIN_PURGE


async def send_erasures(settings: Settings, bootstrap: str, persons: Iterable[tuple[str, str]], *,
                        cut_off: dt.date | None = None) -> int:
    """Send an erasure command per person ``(pseudonym key id, value)`` and wait for the
    broker's acknowledgements; returns how many were acknowledged. Raises BrokerError if the
    broker does not take them (the caller has deleted nothing yet).

    Each command carries the time it was issued (the correlator erases only what it had
    received by then: a command read again after a restart spares what came after it) and
    the purge's ``cut_off`` date (entered with each case's ledger entry)."""
    todo = sorted(set(persons))
    if not todo:
        return 0
    producer = kafka.producer(settings, bootstrap)
    try:
        # aiokafka's errors and OSError alike become ours: nothing was deleted yet
        with kafka.kafka_errors("could not send the purge's erasure commands: {error!r}",
                                "nothing was deleted; start the broker and run the purge again",
                                {Exception: BrokerError}):
            await kafka.apply_topics(settings, bootstrap, [repartition_spec(settings.partitions)])
            await producer.start()
            futures = []
            issued_at = dt.datetime.now(dt.UTC)
            secret = marker_key(settings)  # the commands name the persons by keyed digests
            for key_id, value in todo:
                key, command, partition = erasure_command(key_id, value, settings.partitions, secret=secret,
                                                          issued_at=issued_at, cut_off=cut_off)
                futures.append(await producer.send(REPARTITION_TOPIC, command, key=key, partition=partition,
                                                   headers=[(H_ERASE, ORIGIN_PURGE)]))
            for future in futures:
                await future
    finally:
        await producer.stop()
    return len(todo)
