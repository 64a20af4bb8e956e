"""A sink family whose group session timed out while a commit waited for the coordinator goes on:
the commit is tried again later (onfinish/offsets.py) and the loop consumes, which is where
librdkafka serves the lost assignment and the rejoin."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import confluent_kafka
import pytest

from onfinish.settings import KafkaSettings, RegistrySettings
from onfinish.sinks.settings import SinkSettings
from onfinish.sinks.worker import FamilySink, SinkMetrics

TOPIC = "t.enriched"
WAIT_COORD = confluent_kafka.KafkaError._WAIT_COORD


def _error(code: int) -> confluent_kafka.KafkaException:
    return confluent_kafka.KafkaException(confluent_kafka.KafkaError(code))


def _sink(consumer: Any, **settings: Any) -> FamilySink:
    sink = FamilySink(
        "events",
        SinkSettings(retry_initial_s=0.01, retry_max_s=0.02, **settings),
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        RegistrySettings(url="http://127.0.0.1:1"),
        lambda: pytest.fail("no ClickHouse here"),
        SinkMetrics(),
        consumer=consumer,
    )
    assert sink.commits.consumer is consumer
    return sink


class _Message:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> None:
        return None

    def error(self) -> None:
        return None


class _Group:
    """A consumer whose coordinator goes away right after the first batch is consumed, for longer
    than the session: as librdkafka does, commits only wait for the coordinator ("Waiting for
    coordinator") until a consume has served the lost assignment and the rejoin; then the group has
    its coordinator back and the partition is assigned again, from the committed offset."""

    def __init__(self, records: int, done: threading.Event) -> None:
        self.records = records
        self.done = done
        self.next_offset = 0
        self.committed = 0
        self.session_expired = False
        self.rejoins = 0
        self.callbacks: dict[str, Callable[[Any, list[Any]], None]] = {}
        self.assigned: list[Any] = []

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        partition = confluent_kafka.TopicPartition(TOPIC, 0)
        if not self.assigned:
            self.assigned = [partition]
            self.callbacks["on_assign"](self, [partition])
            self.next_offset = self.committed
        elif self.session_expired:  # served here, and only here
            self.callbacks["on_lost"](self, [partition])
            self.assigned, self.session_expired = [], False
            self.rejoins += 1
            return []
        taken = list(range(self.next_offset, min(self.next_offset + num_messages, self.records)))
        self.next_offset += len(taken)
        if self.next_offset == self.records and self.rejoins == 0:
            self.session_expired = True  # the broker goes away with the batch consumed
        return [_Message(0, offset) for offset in taken]

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        if self.session_expired:
            raise _error(WAIT_COORD)
        (tp,) = offsets
        self.committed = tp.offset
        if self.committed == self.records:
            self.done.set()

    def assignment(self) -> list[Any]:
        return self.assigned

    def position(self, partitions: list[Any]) -> list[Any]:
        return []

    def pause(self, partitions: list[Any]) -> None:
        pass

    def resume(self, partitions: list[Any]) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_session_lost_while_a_commit_waits_for_the_coordinator_does_not_stop_the_family() -> None:
    """A broker away for longer than the session timeout stopped a family for good: its commit was
    retried without consuming, and only a consume lets librdkafka rejoin and find the coordinator."""
    done = threading.Event()
    group = _Group(records=10, done=done)
    sink = _sink(group, batch_seconds=0.01)
    sink._store = lambda records, batch: None  # type: ignore[method-assign]  # ClickHouse took it
    sink.builder = type("Builder", (), {"build": staticmethod(lambda records: None)})()
    worker = threading.Thread(target=sink.run, args=(done,), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the family stopped making progress"
    assert group.rejoins == 1 and group.committed == 10
