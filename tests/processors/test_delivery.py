"""Delivery groups: a batch is acked once, and only once every record of it is in Kafka."""

from __future__ import annotations

from typing import Any

import pytest

from onfinish.processors.delivery import RETRY_AFTER_S, GroupSender, Record


class FakeProducer:
    """librdkafka's shape: produce queues, poll runs the delivery callbacks of what the broker took."""

    def __init__(self, *, capacity: int = 1000, refuse: set[bytes] | None = None) -> None:
        self.capacity = capacity
        self.refuse = refuse if refuse is not None else set()
        self.queued: list[tuple[Record, Any]] = []
        self.delivered: list[tuple[str, bytes | None, int | None]] = []

    def produce(self, topic: str, value: Any = None, key: Any = None, **kwargs: Any) -> None:
        if len(self.queued) >= self.capacity:
            raise BufferError("queue full")
        record = Record(topic, key, value, kwargs.get("partition"), kwargs.get("headers"))
        self.queued.append((record, kwargs["on_delivery"]))

    def poll(self, timeout: float = 0.0) -> int:
        served, self.queued = self.queued, []
        for record, callback in served:
            if record.value in self.refuse:
                callback("MSG_SIZE_TOO_LARGE", None)
            else:
                self.delivered.append((record.topic, record.value, record.partition))
                callback(None, None)
        return len(served)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self.queued)


def _records(count: int, topic: str = "t") -> list[Record]:
    return [
        Record(topic, b"k", f"v{i}".encode(), partition=i % 3 if topic == "changelog" else None)
        for i in range(count)
    ]


def test_a_group_is_acked_once_all_its_records_are_delivered():
    producer = FakeProducer()
    sender = GroupSender(producer)
    acks: list[str] = []
    sender.send(_records(3), lambda: acks.append("first"))
    sender.send(_records(2, "changelog"), lambda: acks.append("second"))
    assert acks == [] and sender.in_flight == 2
    sender.poll()
    assert acks == ["first", "second"] and sender.in_flight == 0
    assert sender.delivered_records == 5
    assert [p for topic, _, p in producer.delivered if topic == "changelog"] == [0, 1]


def test_an_empty_group_is_acked_at_once():
    acks: list[int] = []
    GroupSender(FakeProducer()).send([], lambda: acks.append(1))
    assert acks == [1]


def test_a_full_queue_makes_the_sender_wait_for_deliveries_not_drop():
    producer = FakeProducer(capacity=2)
    sender = GroupSender(producer)
    acks: list[int] = []
    sender.send(_records(7), lambda: acks.append(1))
    sender.poll()
    assert acks == [1] and len(producer.delivered) == 7


def test_a_refused_record_is_sent_again_and_holds_its_group_until_then():
    now = [100.0]
    producer = FakeProducer(refuse={b"v1"})
    sender = GroupSender(producer, clock=lambda: now[0])
    acks: list[int] = []
    sender.send(_records(3), lambda: acks.append(1))
    sender.poll()
    assert acks == [] and sender.refused_records == 1 and sender.pending() == 1
    sender.poll()
    assert acks == [], "not before the pause"
    producer.refuse.clear()
    now[0] += RETRY_AFTER_S
    sender.poll()  # the retry is produced
    sender.poll()  # and delivered
    assert acks == [1] and sender.pending() == 0
    assert sorted(v or b"" for _, v, _ in producer.delivered) == [b"v0", b"v1", b"v2"]


@pytest.mark.parametrize("deliverable", [True, False])
def test_flush_reports_whether_everything_left(deliverable: bool):
    now = [0.0]

    def clock() -> float:
        now[0] += 0.3
        return now[0]

    producer = FakeProducer(refuse=set() if deliverable else {b"v0"})
    sender = GroupSender(producer, clock=clock)
    sender.send(_records(2), lambda: None)
    assert sender.flush(5.0) is deliverable


def test_a_producer_factory_is_called_on_first_use_only():
    made: list[FakeProducer] = []

    def connect() -> FakeProducer:
        made.append(FakeProducer())
        return made[-1]

    sender = GroupSender(connect)
    assert made == [], "building a sender connects to nothing"
    sender.send([Record("t", b"k", b"v")], lambda: None)
    sender.poll(0)
    assert len(made) == 1 and sender.producer is made[0]
