"""Every topic and its configuration, declared once: the Kafka bindings of ``schemas/asyncapi.yaml``.

``topics apply`` creates what is missing (and adds partitions where the declaration grew),
against the embedded broker or any Kafka. Replication is capped at the number of brokers
the cluster has, so the same declaration serves a one-node test broker and production.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.core.datafile import load_yaml
from services.core.types import Fund
from services.errors import ConfigurationError
from services.platform.settings import DEFAULT_SCHEMAS_DIR


@dataclass(frozen=True)
class TopicSpec:
    name: str
    channel: str
    partitions: int
    replicas: int
    config: dict[str, str] = field(default_factory=dict)


_PARAM = re.compile(r"\{(\w+)\}")


def load_topic_specs(asyncapi_path: Path) -> list[TopicSpec]:
    """Expand every channel of the AsyncAPI document into concrete topics."""
    try:
        doc: dict[str, Any] = load_yaml(asyncapi_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read {asyncapi_path}: {exc}", "check HELP_SCHEMAS_DIR") from exc
    specs: list[TopicSpec] = []
    for channel_id, channel in doc.get("channels", {}).items():
        address: str = channel["address"]
        kafka = channel.get("bindings", {}).get("kafka", {})
        if "partitions" not in kafka:
            raise ConfigurationError(
                f"channel {channel_id} of {asyncapi_path} declares no kafka partitions",
                "add bindings.kafka.partitions to the channel",
            )
        config = {
            key: ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            for key, value in kafka.get("topicConfiguration", {}).items()
        }
        names = _PARAM.findall(address)
        choices = [channel["parameters"][n]["enum"] for n in names]
        for combo in itertools.product(*choices):
            topic = address
            for name, value in zip(names, combo, strict=True):
                topic = topic.replace("{" + name + "}", value)
            specs.append(TopicSpec(topic, channel_id, int(kafka["partitions"]), int(kafka.get("replicas", 1)), config))
    return specs


def correlator_partitions(asyncapi_path: Path) -> int:
    """The partitions of the signal and consent topics, which must be equal: the correlator
    reads a person's signals and consents in one partition number (co-partitioned), and keeps
    its own topics (state, repartition) at the same count."""
    counts = {spec.channel: spec.partitions for spec in load_topic_specs(asyncapi_path)
              if spec.channel in ("signals", "consents")}
    if set(counts) != {"signals", "consents"} or len(set(counts.values())) != 1:
        raise ConfigurationError(
            f"{asyncapi_path}: the signals and consents channels must declare the same kafka "
            f"partitions (found {counts})",
            "give both channels the same bindings.kafka.partitions: the correlator co-partitions them",
        )
    return counts["signals"]


#: The partitions of the published contract (this repository's ``schemas/asyncapi.yaml``): the
#: default of the correlator's parts in tests and tools; a worker takes ``Settings.partitions``.
CONTRACT_PARTITIONS = correlator_partitions(DEFAULT_SCHEMAS_DIR / "asyncapi.yaml")


def signal_topic(fund: Fund | str) -> str:
    return f"help.signals.{Fund(fund).value}.v1"


def receipt_topic(fund: Fund | str) -> str:
    return f"help.receipts.{Fund(fund).value}.v1"


def fund_of_signal_topic(topic: str) -> Fund | None:
    """The fund owning a signal topic, or None if ``topic`` is not one."""
    match = re.fullmatch(r"help\.signals\.([a-z]+)\.v1", topic)
    if not match:
        return None
    try:
        return Fund(match.group(1))
    except ValueError:
        return None


SITUATIONS_TOPIC = "help.situations.v1"
FOLLOWUPS_TOPIC = "help.followups.v1"
CONSENTS_TOPIC = "help.consents.v1"
REVEALS_TOPIC = "help.reveals.v1"
DEADLETTER_TOPIC = "help.deadletter.v1"

#: Header of a situation tombstone the retention purge caused (the audit sink enters a
#: ``purge_conservation`` entry for it instead of an ``effacement``).
ORIGIN_HEADER = "help-origin"
ORIGIN_PURGE = b"purge"
#: Header of such a tombstone: the purge's cut-off date (``YYYY-MM-DD``, its ``--as-of``),
#: entered with the case's ``purge_conservation`` entry.
CUT_OFF_HEADER = "help-cut-off"
