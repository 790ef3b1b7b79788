"""Kafka clients configured from the settings, and the admin operations the CLI needs.

Kafka client errors become ours in one place, :func:`kafka_errors` (on the pattern of
httpx's ``map_exceptions``): "the broker is not there" becomes
:class:`~services.errors.BrokerUnreachable`, any other client error
:class:`~services.errors.BrokerError`, each with what was being done and a hint, so that no
command shows a traceback for a stopped broker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from services.errors import BrokerError, BrokerUnreachable
from services.platform.settings import Settings
from services.platform.topics import TopicSpec

#: Which of our errors each Kafka client error becomes; the most specific class listed wins.
KAFKA_ERRORS: Mapping[type[Exception], type[BrokerError]] = {
    KafkaConnectionError: BrokerUnreachable,
    KafkaError: BrokerError,
}
#: For callers to whom any client error means the broker is away (reading, sending).
UNREACHABLE: Mapping[type[Exception], type[BrokerError]] = {KafkaError: BrokerUnreachable}


def broker_error(exc: BaseException, what: str, hint: str,
                 mapping: Mapping[type[Exception], type[BrokerError]] = KAFKA_ERRORS) -> BrokerError | None:
    """Our error for the Kafka client error ``exc`` (None if ``mapping`` names none of its
    classes): ``what`` formatted with ``error=exc`` (write ``{error}`` or ``{error!r}``
    where the client's words go), and ``hint``."""
    chosen: tuple[type[Exception], type[BrokerError]] | None = None
    for source, target in mapping.items():
        if isinstance(exc, source) and (chosen is None or issubclass(source, chosen[0])):
            chosen = (source, target)
    return None if chosen is None else chosen[1](what.format(error=exc), hint)


@contextlib.contextmanager
def kafka_errors(what: str, hint: str,
                 mapping: Mapping[type[Exception], type[BrokerError]] = KAFKA_ERRORS) -> Iterator[None]:
    """Raise ours (:func:`broker_error`) for a Kafka client error raised in the block;
    anything else passes unchanged."""
    try:
        yield
    except Exception as exc:
        ours = broker_error(exc, what, hint, mapping)
        if ours is None:
            raise
        raise ours from exc


def producer(settings: Settings, bootstrap: str, **overrides: object) -> AIOKafkaProducer:
    """A producer that waits for every in-sync replica (acks=all)."""
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": settings.enable_idempotence,
        "request_timeout_ms": settings.request_timeout_ms,
        "linger_ms": 5,
        "client_id": "help-exchange",
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(settings: Settings, bootstrap: str, *topics: str, **overrides: object) -> AIOKafkaConsumer:
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": max(300, settings.session_timeout_ms // 4),
        "request_timeout_ms": max(settings.request_timeout_ms, settings.session_timeout_ms + 5000),
        "client_id": "help-exchange",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


@dataclass(frozen=True)
class TopicChange:
    name: str
    action: str  # "créé", "partitions ajoutées", "existant"
    partitions: int
    replicas: int


async def apply_topics(settings: Settings, bootstrap: str, specs: Iterable[TopicSpec]) -> list[TopicChange]:
    """Create missing topics, grow partition counts; never delete nor shrink anything."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=settings.request_timeout_ms,
                                client_id="help-exchange-admin")
    with kafka_errors(f"cannot connect to Kafka at {bootstrap}: {{error}}",
                      "start the broker (`help-exchange broker`) or fix HELP_BOOTSTRAP_SERVERS"):
        await admin.start()
    try:
        with kafka_errors(f"topic creation failed on {bootstrap}: {{error}}", "check the broker's log"):
            return await _apply(admin, specs)
    finally:
        await admin.close()


async def _apply(admin: AIOKafkaAdminClient, specs: Iterable[TopicSpec]) -> list[TopicChange]:
    """The changes of :func:`apply_topics`, made with a started ``admin``."""
    cluster = await admin.describe_cluster()
    brokers = max(1, len(cluster.get("brokers", [])))
    existing = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    changes: list[TopicChange] = []
    to_create: list[NewTopic] = []
    grow: dict[str, NewPartitions] = {}
    for spec in specs:
        replicas = min(spec.replicas, brokers)
        if spec.name not in existing:
            to_create.append(NewTopic(spec.name, spec.partitions, replicas, topic_configs=dict(spec.config)))
            changes.append(TopicChange(spec.name, "créé", spec.partitions, replicas))
        elif existing[spec.name] < spec.partitions:
            grow[spec.name] = NewPartitions(spec.partitions)
            changes.append(TopicChange(spec.name, "partitions ajoutées", spec.partitions, replicas))
        else:
            changes.append(TopicChange(spec.name, "existant", existing[spec.name], replicas))
    if to_create:
        response = await admin.create_topics(to_create)
        _raise_topic_errors(getattr(response, "topic_errors", []))
    if grow:
        await admin.create_partitions(grow)
    return changes


def _raise_topic_errors(errors: Iterable[tuple[object, ...]]) -> None:
    for name, code, *rest in errors:
        if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a concurrent apply): fine
            message = rest[0] if rest else ""
            raise BrokerError(f"the broker refused topic {name}: error {code} {message or ''}".strip(),
                              "check the topic configuration in schemas/asyncapi.yaml")
