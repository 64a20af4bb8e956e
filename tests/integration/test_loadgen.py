"""The load generator against the real stack: what it reports sending is what the topic holds."""

from __future__ import annotations

import json
from pathlib import Path

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from onfinish.loadgen.load import PACE_SLACK_S, LoadPlan, run_load
from onfinish.loadgen.traffic import TrafficProfile
from onfinish.producers.settings import ProducerSettings
from onfinish.settings import KafkaSettings, RegistrySettings
from tests.integration.records import consume, make_topic


def test_loadgen_sends_what_it_reports(
    kafka_settings: KafkaSettings, registry_settings: RegistrySettings, unique: str, tmp_path: Path
):
    topic = make_topic(kafka_settings, unique)
    plan = LoadPlan(
        rate=2000,
        duration_s=1.5,
        seed=7,
        profile=TrafficProfile(sessions=20, malformed_share=0.02, pii_share=0.05),
    )
    seen: list[int] = []
    report = run_load(
        plan,
        ProducerSettings(topic=topic, spool_dir=tmp_path / "spool"),
        kafka_settings,
        registry_settings,
        progress=lambda done, _: seen.append(done),
        manifest=tmp_path / "manifest.json",
    )
    assert report.delivered
    # Paced: no item left more than PACE_SLACK_S before its time on the schedule.
    assert report.send_seconds >= (plan.items - 1) / plan.rate - PACE_SLACK_S
    assert report.sent == plan.items == 3000 and seen[-1] == 3000
    assert report.events > 2500 and report.feedback > 0 and sum(report.malformed.values()) > 0
    assert report.sdk["produced"] == report.events + report.feedback and report.sdk["rejected"] == 0

    messages = consume(kafka_settings, topic, report.sent, unique)
    assert len(messages) == report.sent
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_settings.url}))
    context = SerializationContext(topic, MessageField.VALUE)
    decodable = []
    for message in messages:
        try:
            decodable.append(deserializer(message.value(), context))
        except Exception:  # the malformed records are meant not to decode
            continue
    events = [d for d in decodable if "service" in d]
    assert len(events) == report.events
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(manifest["event_ids"]) == sorted(str(e["event_id"]) for e in events)
    texts = " ".join(str(e["error_message"]) + json.dumps(e["attributes"]) for e in events)
    assert manifest["planted_pii"] and all(pii in texts for pii in manifest["planted_pii"])
