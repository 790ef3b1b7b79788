"""The funds' producer transport: librdkafka (``confluent-kafka``) sending whole batches and
reporting where the broker put each message.

Why not aiokafka here: its Python-side accumulator costs tens of microseconds a message in
the publishing process, which is also the one that reads the extract and writes the outbox;
librdkafka batches, sends and retries in its own C threads. The settings mean what
:func:`services.platform.kafka.producer` means: ``acks=all``, idempotence as
``settings.enable_idempotence`` says, Kafka's default partitioner (murmur2 of the key, so
a key lands where aiokafka and the Java client put it), batches no larger than the topics'
``max.message.bytes``, and a message not acknowledged within ``settings.request_timeout_ms``
reported as failed (its row stays pending in the outbox).

Delivery reports are served by :meth:`BatchProducer.send` itself (``poll`` from the event
loop between short sleeps), so every callback runs on the loop's thread and no lock is
needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from services.errors import BrokerUnreachable
from services.platform.settings import Settings

#: How long :meth:`BatchProducer.send` sleeps between two polls of the delivery reports.
POLL_INTERVAL_S = 0.002
#: librdkafka's own log lines (a refused connection while the broker is down…) go to this
#: logger, not straight to stderr over the command's French summary.
LOG = logging.getLogger("help_exchange.librdkafka")


class Outgoing(Protocol):
    """What :meth:`BatchProducer.send` sends: an outbox row (pending or freshly built)."""

    @property
    def key(self) -> bytes: ...

    @property
    def value(self) -> bytes: ...

    @property
    def partition(self) -> int | None: ...


class Delivered(NamedTuple):
    """Where the broker put a message. (A named tuple: one per message sent.)"""

    partition: int
    offset: int


class DeliveryFailed(Exception):
    """The broker did not acknowledge a message (librdkafka's error in ``error``)."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error

    def __repr__(self) -> str:
        return f"DeliveryFailed({self.error.name()}: {self.error.str()})"


def producer_config(settings: Settings, bootstrap: str, *, linger_ms: int, max_batch_bytes: int) -> dict[str, Any]:
    """librdkafka's settings for the funds' producers (see the module docstring)."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": "help-exchange",
        "acks": "all",
        "enable.idempotence": settings.enable_idempotence,
        # Kafka's (Java) default: murmur2 of the key; librdkafka's own default is CRC32.
        "partitioner": "murmur2_random",
        "linger.ms": linger_ms,
        "batch.size": max_batch_bytes,
        "request.timeout.ms": settings.request_timeout_ms,
        "message.timeout.ms": settings.request_timeout_ms,
        "socket.connection.setup.timeout.ms": settings.request_timeout_ms,
        "logger": LOG,
    }


class BatchProducer:
    """One librdkafka producer; :meth:`start` checks the broker answers (as aiokafka's does)."""

    def __init__(self, settings: Settings, bootstrap: str, *, linger_ms: int = 10,
                 max_batch_bytes: int = 64 * 1024) -> None:
        self._timeout_s = settings.request_timeout_ms / 1000
        self._producer = Producer(producer_config(settings, bootstrap, linger_ms=linger_ms,
                                                  max_batch_bytes=max_batch_bytes))

    async def start(self) -> None:
        """Raise :class:`BrokerUnreachable` if no broker answers within the request timeout."""
        try:
            await asyncio.to_thread(self._producer.list_topics, timeout=self._timeout_s)
        except KafkaException as exc:
            raise BrokerUnreachable(f"no Kafka broker answers: {exc.args[0].str() if exc.args else exc}",
                                    "start the broker (or check HELP_BOOTSTRAP_SERVERS)") from None

    async def partitions_for(self, topic: str) -> int | None:
        """The partition count of ``topic``, or None if the broker does not know it."""
        try:
            meta = await asyncio.to_thread(self._producer.list_topics, topic, timeout=self._timeout_s)
        except KafkaException:
            return None
        found = meta.topics.get(topic)
        if found is None or found.error is not None:
            return None
        return len(found.partitions) or None

    async def send(self, topic: str, rows: Sequence[Outgoing]) -> list[Delivered | BaseException]:
        """Send ``rows`` and wait until each is acknowledged or has failed: one result per
        row, in order (a :class:`Delivered` position, or the exception)."""
        results: list[Delivered | BaseException | None] = [None] * len(rows)
        waiting = len(rows)

        def report(i: int) -> Any:
            def on_delivery(err: KafkaError | None, msg: Message) -> None:
                nonlocal waiting
                offset = msg.offset()
                partition = msg.partition()
                if err is None and offset is not None and offset >= 0 and partition is not None:
                    results[i] = Delivered(partition, offset)
                else:
                    results[i] = DeliveryFailed(err) if err is not None else RuntimeError("no offset reported")
                waiting -= 1
            return on_delivery

        produce, poll = self._producer.produce, self._producer.poll
        for i, row in enumerate(rows):
            while True:
                try:
                    if row.partition is None:
                        produce(topic, row.value, row.key, on_delivery=report(i))
                    else:
                        produce(topic, row.value, row.key, row.partition, on_delivery=report(i))
                    break
                except BufferError:  # librdkafka's local queue is full: let it drain
                    poll(0)
                    await asyncio.sleep(POLL_INTERVAL_S)
                except KafkaException as exc:
                    results[i] = exc
                    waiting -= 1
                    break
        while waiting:
            poll(0)
            if waiting:
                await asyncio.sleep(POLL_INTERVAL_S)
        return [r if r is not None else RuntimeError("no delivery report") for r in results]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Wait (at most ``timeout_s``) for what is still queued, then let the client go."""
        with contextlib.suppress(KafkaException):
            await asyncio.to_thread(self._producer.flush, timeout_s)
