"""What integration tests share to talk to the real stack: topics of their own, consuming, decoding."""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from onfinish.schemas.contract import ONFINISH_EVENT
from onfinish.schemas.models import OnFinishEvent
from onfinish.settings import KafkaSettings, RegistrySettings
from onfinish.stack.topics import TopicSpec, provision_topics

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def from_the_start(kafka: KafkaSettings, topic: str, group: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    return consumer


def make_topic(kafka: KafkaSettings, name: str, partitions: int = 3) -> str:
    """A topic of the test's own, `test.<name>`."""
    provision_topics(
        kafka.model_copy(update={"topic_prefix": "test", "partitions": partitions}),
        (TopicSpec(name, "integration test"),),
    )
    return f"test.{name}"


def consume(
    kafka: KafkaSettings, topic: str, count: int, group: str, timeout_s: float = 60, settle_s: float = 2
) -> list[Any]:
    """Every message of `topic` from the start: `count` of them, then `settle_s` more to catch duplicates."""
    consumer = from_the_start(kafka, topic, group)
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            messages.append(message)
    settle = time.monotonic() + settle_s
    while time.monotonic() < settle:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            messages.append(message)
    consumer.close()
    return messages


def decode(messages: list[Any], topic: str, registry: RegistrySettings) -> list[dict[str, Any]]:
    """Decode with confluent-kafka's own deserializer: proof of the Confluent wire format."""
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    return [deserializer(m.value(), SerializationContext(topic, MessageField.VALUE)) for m in messages]


def sample_event(i: int) -> OnFinishEvent:
    """Event `i` of a small, predictable stream: request req-i in one of seven sessions."""
    return OnFinishEvent(
        request_id=f"req-{i}",
        session_id=f"sess-{i % 7}",
        service="chat-api",
        provider="openai",
        model_id="gpt-4o",
        started_at=T0 + timedelta(seconds=i),
        finished_at=T0 + timedelta(seconds=i, milliseconds=500),
        latency_ms=500.0,
        ttft_ms=80.0,
        prompt_tokens=100 + i,
        completion_tokens=20,
        attributes={"i": str(i)},
        prompt_text="secret prompt",
    )


def consume_all(
    kafka: KafkaSettings, topic: str, group: str, idle_s: float = 3, timeout_s: float = 60
) -> list[Any]:
    """Every message of `topic` from the start, until none has come for `idle_s`."""
    consumer = from_the_start(kafka, topic, group)
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < idle_s:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            messages.append(message)
            last = time.monotonic()
    consumer.close()
    return messages


def hostile_values(frame: bytes, now: datetime, rng: random.Random) -> list[tuple[bytes, str]]:
    """(value, reason it must be dead-lettered with) for the hostile inputs of the fault suite;
    `frame` is the Confluent prefix of the contract's event schema, `now` the processors' clock."""

    def event(**changes: Any) -> bytes:
        datum = ONFINISH_EVENT.to_datum(sample_event(rng.randrange(10**6)))
        datum.update(changes)
        return frame + ONFINISH_EVENT.encode(datum)

    marker = "X" * 12
    invalid_utf8 = event(attributes={"k": marker}).replace(marker.encode(), b"\xff\xfe" * 6)
    return [
        (random.Random(1).randbytes(300), "not_confluent_framed"),
        (b"\x07" + event()[1:], "not_confluent_framed"),
        (b"\x00\x7f\xff\xff\x00" + event()[5:], "unknown_schema_id"),
        (event()[:-40], "truncated"),
        (event(error_message="e" * 200_000), "contract_violation"),
        (event(error_message="e" * 10_000_000), "oversized"),  # a 10 MB string
        (event(latency_ms=math.nan), "contract_violation"),
        (event(latency_ms=-5.0), "contract_violation"),
        (
            event(started_at=now + timedelta(days=400), finished_at=now + timedelta(days=400, seconds=1)),
            "timestamp_out_of_range",
        ),
        (
            event(
                started_at=now - timedelta(days=900),
                finished_at=now - timedelta(days=900) + timedelta(seconds=1),
            ),
            "timestamp_out_of_range",
        ),
        (invalid_utf8, "invalid_encoding"),
    ]
