"""Delivery of a batch's records (outputs and state changelog writes), and the ack that follows it.

A worker sends everything one consumer batch produced as one *group*, through confluent-kafka's
producer (librdkafka: idempotent, acks=all, its network work in its own C threads, a few
microseconds per record from Python), and runs the group's `on_delivered` once every record of it
is in Kafka: that is when the worker acks the batch's source records, so a committed offset never
stands for an output that was lost. Groups overlap: the next batch is processed while the last one
is still on its way, which is where most of a worker's speed comes from.

Faust's own producer (aiokafka) would do, at about ten times the cost per record in Python; see
docs/decisions/0007.

Nothing is given up on: librdkafka retries until the broker takes a record (`message.timeout.ms`
is 0, infinite), and a record refused for good (which the contract's size limits should make
impossible) is logged and sent again after a pause, so its partition stalls visibly instead of
losing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0


@dataclass(frozen=True, slots=True)
class Record:
    """One record to produce: to `partition` when given, else by the key's hash."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None


class KafkaProducer(Protocol):
    """What is used of confluent_kafka.Producer (a fake in unit tests)."""

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...

    def __len__(self) -> int: ...


@dataclass(eq=False)
class Group:
    """The records of one batch; `on_delivered` runs once, when the last of them is in Kafka."""

    remaining: int
    on_delivered: Callable[[], None]
    failures: int = 0


class GroupSender:
    """Produces groups of records and reports each group's delivery; call `poll` regularly."""

    def __init__(
        self,
        producer: KafkaProducer | Callable[[], KafkaProducer],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A callable makes the producer on first use: building the app (imports, `--help`, tests)
        # starts no client threads and connects to nothing.
        self._connect: Callable[[], KafkaProducer] = (
            (lambda: producer) if hasattr(producer, "produce") else producer  # type: ignore[assignment,return-value]
        )
        self.clock = clock
        self.in_flight = 0  # groups sent, not yet delivered
        self.delivered_records = 0
        self.refused_records = 0  # deliveries refused for good (each sent again later)
        self._retries: list[tuple[float, Record, Group]] = []

    @cached_property
    def producer(self) -> KafkaProducer:
        return self._connect()

    def send(self, records: Sequence[Record], on_delivered: Callable[[], None]) -> Group:
        """Send `records` as one group; with none, `on_delivered` runs at once."""
        group = Group(len(records), on_delivered)
        if not records:
            on_delivered()
            return group
        self.in_flight += 1
        for record in records:
            self._produce(record, group)
        return group

    def _produce(self, record: Record, group: Group) -> None:
        def delivered(error: Any, _message: Any) -> None:
            self._on_delivery(error, record, group)

        while True:
            try:
                if record.partition is None:
                    self.producer.produce(
                        record.topic, record.value, record.key, headers=record.headers, on_delivery=delivered
                    )
                else:
                    self.producer.produce(
                        record.topic,
                        record.value,
                        record.key,
                        partition=record.partition,
                        headers=record.headers,
                        on_delivery=delivered,
                    )
                return
            except BufferError:
                # librdkafka's queue is full: let it deliver (and run callbacks) before going on.
                self.producer.poll(0.05)

    def _on_delivery(self, error: Any, record: Record, group: Group) -> None:
        if error is not None:
            group.failures += 1
            self.refused_records += 1
            log.error(
                "a record was refused by Kafka; it is sent again shortly",
                extra={"topic": record.topic, "error": str(error)[:200]},
            )
            self._retries.append((self.clock() + RETRY_AFTER_S, record, group))
            return
        self.delivered_records += 1
        group.remaining -= 1
        if group.remaining == 0:
            self.in_flight -= 1
            group.on_delivered()

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports (running `on_delivered` of finished groups) and due retries."""
        self.producer.poll(timeout)
        if self._retries:
            now = self.clock()
            due = [entry for entry in self._retries if entry[0] <= now]
            if due:
                self._retries = [entry for entry in self._retries if entry[0] > now]
                for _, record, group in due:
                    self._produce(record, group)

    def pending(self) -> int:
        """Records not yet delivered (in librdkafka's queue or waiting to be sent again)."""
        return len(self.producer) + len(self._retries)

    def flush(self, timeout: float) -> bool:
        """Deliver what is pending, within `timeout` seconds; True when nothing is left."""
        deadline = self.clock() + timeout
        while self.pending() and self.clock() < deadline:
            self.poll(0.05)
        return not self.pending()
