"""The producer SDK against the real broker and registry: what is handed off arrives, decodable, once."""

from __future__ import annotations

from pathlib import Path

from onfinish.producers import Emitter, Feedback, OnFinishEvent, ProducerSettings
from onfinish.settings import KafkaSettings, RegistrySettings
from tests.integration.records import consume, decode, make_topic, sample_event


def test_handed_off_events_arrive_once_in_confluent_wire_format(
    kafka_settings: KafkaSettings, registry_settings: RegistrySettings, unique: str, tmp_path: Path
):
    topic = make_topic(kafka_settings, unique)
    emitter = Emitter(
        ProducerSettings(topic=topic, spool_dir=tmp_path / "spool"), kafka_settings, registry_settings
    )
    events = [sample_event(i) for i in range(500)]
    for event in events:
        emitter.on_finish(event)
    emitter.record_feedback("req-3", session_id="sess-3", regenerated=True, rating=-1)
    emitter.on_finish({"request_id": "bad", "service": "x"})  # invalid: goes to the reject log
    assert emitter.flush(30)
    stats = emitter.stats()
    assert emitter.close()
    assert stats["handed_off"] == 502 and stats["produced"] == 501 and stats["rejected"] == 1
    assert stats["dropped"] == 0

    messages = consume(kafka_settings, topic, 501, unique)
    assert len(messages) == 501
    decoded = decode(messages, topic, registry_settings)
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
