"""A sink's commit after ClickHouse took a batch: waits out a coordinator that is away, and gives up
only when the partitions moved on (the next owner re-reads the batch and ClickHouse drops it)."""

from __future__ import annotations

import threading
from typing import Any

import confluent_kafka
import pytest

from onfinish.settings import KafkaSettings, RegistrySettings
from onfinish.sinks.settings import SinkSettings
from onfinish.sinks.worker import FamilySink, SinkMetrics


class _Consumer:
    """Fails its first commits with the given errors, then succeeds."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.attempts = 0
        self.committed: list[Any] = []

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        assert asynchronous is False
        self.attempts += 1
        if self.errors:
            raise confluent_kafka.KafkaException(confluent_kafka.KafkaError(self.errors.pop(0)))
        self.committed = offsets


def _sink(consumer: _Consumer) -> FamilySink:
    settings = SinkSettings(retry_initial_s=0.01, retry_max_s=0.02)
    sink = FamilySink(
        "events",
        settings,
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        RegistrySettings(url="http://127.0.0.1:1"),
        lambda: pytest.fail("no ClickHouse here"),
        SinkMetrics(),
    )
    sink.consumer.close()
    sink.consumer = consumer  # type: ignore[assignment]
    return sink


OFFSETS = [confluent_kafka.TopicPartition("t.enriched", 0, 42)]


def test_a_coordinator_that_is_away_is_waited_for() -> None:
    consumer = _Consumer(
        confluent_kafka.KafkaError._WAIT_COORD,
        confluent_kafka.KafkaError.COORDINATOR_NOT_AVAILABLE,
        confluent_kafka.KafkaError._TRANSPORT,
    )
    sink = _sink(consumer)
    sink._commit_offsets(OFFSETS)
    assert consumer.attempts == 4 and consumer.committed == OFFSETS


@pytest.mark.parametrize(
    "code", [confluent_kafka.KafkaError.ILLEGAL_GENERATION, confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID]
)
def test_a_commit_after_the_partitions_moved_on_is_given_up(code: int) -> None:
    consumer = _Consumer(code, code)
    _sink(consumer)._commit_offsets(OFFSETS)
    assert consumer.attempts == 1 and consumer.committed == []


def test_stopping_ends_the_retries() -> None:
    consumer = _Consumer(*[confluent_kafka.KafkaError._WAIT_COORD] * 1000)
    sink = _sink(consumer)
    sink.stop = threading.Event()
    threading.Timer(0.2, sink.stop.set).start()
    sink._commit_offsets(OFFSETS)
    assert 1 < consumer.attempts < 1000 and consumer.committed == []
