"""One mapping from Kafka client errors to ours (services.platform.kafka.kafka_errors)."""

from __future__ import annotations

import pickle

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from services.core.reasons import Reason
from services.errors import BrokerError, BrokerUnreachable, HelpExchangeError, PermanentError, Rejected
from services.platform.kafka import UNREACHABLE, broker_error, kafka_errors


def test_the_most_specific_client_error_decides() -> None:
    connect = kafka_errors("cannot connect to k:9092: {error}", "start the broker")
    with pytest.raises(BrokerUnreachable) as unreachable, connect:
        raise KafkaConnectionError("no route")
    assert unreachable.value.one_line() == \
        "cannot connect to k:9092: KafkaConnectionError: no route — start the broker"
    assert isinstance(unreachable.value.__cause__, KafkaConnectionError)
    create = kafka_errors("topic creation failed: {error!r}", "check the broker's log")
    with pytest.raises(BrokerError) as other, create:
        raise KafkaTimeoutError()
    assert type(other.value) is BrokerError
    assert other.value.what.startswith("topic creation failed: KafkaTimeoutError")


def test_a_mapping_can_say_every_client_error_means_the_broker_is_away() -> None:
    with pytest.raises(BrokerUnreachable), kafka_errors("cannot read t: {error!r}", "try again", UNREACHABLE):
        raise KafkaTimeoutError()


def test_anything_else_passes_unchanged() -> None:
    ours = BrokerError("the broker refused topic t", "check the topic configuration")
    with pytest.raises(BrokerError) as caught, kafka_errors("x {error}", "y"):
        raise ours
    assert caught.value is ours
    with pytest.raises(ValueError), kafka_errors("x {error}", "y"):
        raise ValueError("not Kafka's")
    assert broker_error(ValueError("no"), "x {error}", "y") is None
    assert isinstance(broker_error(KafkaError(), "x {error}", "y"), BrokerError)


def test_rejected_is_one_permanent_error_with_reason_and_field() -> None:
    rejected = Rejected(Reason.NIR_INVALIDE, "nir")
    assert isinstance(rejected, PermanentError) and isinstance(rejected, HelpExchangeError)
    assert rejected.what == f"nir: {Reason.NIR_INVALIDE.label}" and rejected.exit_code == 2
    again = pickle.loads(pickle.dumps(rejected))
    assert (type(again), again.reason, again.field, again.one_line()) == \
        (Rejected, rejected.reason, rejected.field, rejected.one_line())
