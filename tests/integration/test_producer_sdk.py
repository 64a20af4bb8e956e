"""The producer SDK against the real broker and registry: what is handed off arrives, decodable, once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from onfinish.producers import Emitter, Feedback, OnFinishEvent, ProducerSettings
from onfinish.settings import KafkaSettings, RegistrySettings
from onfinish.stack.topics import TopicSpec, provision_topics

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _event(i: int) -> OnFinishEvent:
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


def _topic(kafka: KafkaSettings, name: str) -> str:
    spec = TopicSpec(name, "sdk test")
    provision_topics(kafka.model_copy(update={"topic_prefix": "sdk", "partitions": 3}), (spec,))
    return f"sdk.{name}"


def _consume(kafka: KafkaSettings, topic: str, count: int, group: str, timeout_s: float = 60) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            messages.append(message)
    # Anything beyond `count` would be a duplicate: give it a moment to show up.
    extra_deadline = time.monotonic() + 2
    while time.monotonic() < extra_deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            messages.append(message)
    consumer.close()
    return messages


def _decode(messages: list[Any], topic: str, registry: RegistrySettings) -> list[dict[str, Any]]:
    """Decode with confluent-kafka's own deserializer: proof of the Confluent wire format."""
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    return [deserializer(m.value(), SerializationContext(topic, MessageField.VALUE)) for m in messages]


def test_handed_off_events_arrive_once_in_confluent_wire_format(
    kafka_settings: KafkaSettings, registry_settings: RegistrySettings, unique: str, tmp_path: Path
):
    topic = _topic(kafka_settings, unique)
    emitter = Emitter(
        ProducerSettings(topic=topic, spool_dir=tmp_path / "spool"), kafka_settings, registry_settings
    )
    events = [_event(i) for i in range(500)]
    for event in events:
        emitter.on_finish(event)
    emitter.record_feedback("req-3", session_id="sess-3", regenerated=True, rating=-1)
    emitter.on_finish({"request_id": "bad", "service": "x"})  # invalid: goes to the reject log
    assert emitter.flush(30)
    stats = emitter.stats()
    assert emitter.close()
    assert stats["handed_off"] == 502 and stats["produced"] == 501 and stats["rejected"] == 1
    assert stats["dropped"] == 0

    messages = _consume(kafka_settings, topic, 501, unique)
    assert len(messages) == 501
    decoded = _decode(messages, topic, registry_settings)
    received = {d["request_id"]: d for d in decoded if "service" in d}
    assert set(received) == {e.request_id for e in events}
    for event in events[:50]:
        got = OnFinishEvent.model_validate(received[event.request_id])
        assert got == event.model_copy(update={"prompt_text": None}), "content is not captured by default"
    feedback = [Feedback.model_validate(d) for d in decoded if "feedback_id" in d]
    assert [(f.request_id, f.regenerated, f.rating) for f in feedback] == [("req-3", True, -1)]
    keys = {m.key() for m in messages}
    assert keys == {f"sess-{i}".encode() for i in range(7)}

    reject_log = (tmp_path / "spool" / "rejected.jsonl").read_text()
    assert "provider: Field required" in reject_log
    assert not [p for p in (tmp_path / "spool").glob("*/") if any(p.glob("*.seg"))], "the spool is emptied"
