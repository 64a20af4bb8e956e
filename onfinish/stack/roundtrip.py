"""A real round trip through every system onfinish depends on, used by `make demo` and the tests.

One Avro record is registered with the schema registry, produced to Kafka in the Confluent wire
format, consumed back and decoded, then written to ClickHouse and read back. Each step is timed and
checked; any mismatch raises, so a success means every hop really worked.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from onfinish.errors import OnfinishError
from onfinish.schemas.wire import Refused, registry_client, schema_id_of
from onfinish.settings import ClickHouseSettings, KafkaSettings, RegistrySettings, StackSettings
from onfinish.sinks import clickhouse
from onfinish.stack.topics import TopicSpec, provision_topics

PROBE_SCHEMA = """
{
  "type": "record",
  "name": "RoundTripProbe",
  "namespace": "io.onfinish.selfcheck",
  "doc": "One record sent through registry, Kafka and ClickHouse to prove the stack works.",
  "fields": [
    {"name": "probe_id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "sent_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "message", "type": "string"}
  ]
}
"""
SELFCHECK_TOPIC = TopicSpec("selfcheck", "round-trip probes of `onfinish demo`")
SELFCHECK_TABLE = "selfcheck"
# librdkafka's own log lines go to Python logging instead of straight to stderr. Its warnings here
# are retried transients (a new broker still loading its coordinators): a real failure raises below.
_CLIENT_LOG = logging.getLogger("onfinish.stack.roundtrip.kafka")
_CLIENT_LOG.setLevel(logging.ERROR)


class RoundTripError(OnfinishError):
    """A hop of the round trip did not give back what was sent."""


@dataclass
class RoundTripReport:
    probe_id: str
    topic: str
    schema_id: int = 0
    partition: int = -1
    offset: int = -1
    clickhouse_rows: int = 0
    steps: list[tuple[str, float]] = field(default_factory=list)


class _Timer:
    def __init__(self, report: RoundTripReport) -> None:
        self.report = report

    def step(self, name: str, began: float) -> None:
        self.report.steps.append((name, time.monotonic() - began))


def run_round_trip(
    kafka: KafkaSettings,
    registry: RegistrySettings,
    clickhouse_settings: ClickHouseSettings,
    stack: StackSettings,
) -> RoundTripReport:
    topic = SELFCHECK_TOPIC.name(kafka)
    probe_id = uuid.uuid4()
    report = RoundTripReport(probe_id=str(probe_id), topic=topic)
    timer = _Timer(report)
    record = {
        "probe_id": probe_id,
        "sent_at": datetime.now(UTC).replace(microsecond=0),
        "message": "hello from onfinish",
    }

    began = time.monotonic()
    provision_topics(kafka.model_copy(update={"partitions": 1}), (SELFCHECK_TOPIC,))
    client_of_registry = registry_client(registry)
    serializer = AvroSerializer(client_of_registry, PROBE_SCHEMA)
    context = SerializationContext(topic, MessageField.VALUE)
    payload = serializer(record, context)
    try:
        report.schema_id = schema_id_of(payload)
    except Refused as exc:
        raise RoundTripError(
            f"the serializer did not produce the Confluent wire format: {exc.message}"
        ) from None
    registered = client_of_registry.get_schema(report.schema_id)
    if "RoundTripProbe" not in (registered.schema_str or ""):
        raise RoundTripError(f"schema id {report.schema_id} does not resolve to the probe schema")
    timer.step(f"registered the Avro schema (id {report.schema_id}) and encoded one record", began)

    began = time.monotonic()
    delivered: list[Any] = []
    producer = Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "logger": _CLIENT_LOG,
        }
    )
    producer.produce(
        topic,
        key=report.probe_id.encode(),
        value=payload,
        on_delivery=lambda err, msg: delivered.append(err or msg),
    )
    if producer.flush(kafka.request_timeout_s) != 0 or not delivered:
        raise RoundTripError(f"the record was not delivered to {topic} within {kafka.request_timeout_s}s")
    outcome = delivered[0]
    if isinstance(outcome, KafkaError):
        raise RoundTripError(f"delivery to {topic} failed: {outcome.str()}")
    report.partition, report.offset = outcome.partition(), outcome.offset()
    timer.step(f"produced it to {topic} (partition {report.partition}, offset {report.offset})", began)

    began = time.monotonic()
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"onfinish-selfcheck-{report.probe_id}",
            "enable.auto.commit": False,
            "logger": _CLIENT_LOG,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, report.partition, report.offset)])
        message = None
        deadline = time.monotonic() + kafka.request_timeout_s
        while message is None and time.monotonic() < deadline:
            candidate = consumer.poll(0.5)
            if candidate is not None and candidate.error() is None:
                message = candidate
    finally:
        consumer.close()
    if message is None:
        raise RoundTripError(f"the record was not read back from {topic} within {kafka.request_timeout_s}s")
    decoded = AvroDeserializer(client_of_registry)(message.value(), context)
    if decoded != record:
        raise RoundTripError(f"the record read back differs from the one sent: {decoded!r}")
    timer.step("consumed it back and decoded it through the registry", began)

    began = time.monotonic()
    client = clickhouse.connect(clickhouse_settings, stack)
    try:
        client.command(
            f"CREATE TABLE IF NOT EXISTS {SELFCHECK_TABLE} ("
            " probe_id UUID, sent_at DateTime64(3, 'UTC'), message String, schema_id UInt32,"
            " topic LowCardinality(String), partition UInt32, offset UInt64"
            ") ENGINE = MergeTree ORDER BY (sent_at, probe_id)"
        )
        client.insert(
            SELFCHECK_TABLE,
            [
                [
                    probe_id,
                    decoded["sent_at"],
                    decoded["message"],
                    report.schema_id,
                    topic,
                    report.partition,
                    report.offset,
                ]
            ],
            column_names=["probe_id", "sent_at", "message", "schema_id", "topic", "partition", "offset"],
        )
        rows = client.query(
            f"SELECT message, offset FROM {SELFCHECK_TABLE} WHERE probe_id = {{probe:UUID}}",  # noqa: S608 - constant table
            parameters={"probe": report.probe_id},
        ).result_rows
    finally:
        client.close()
    if rows != [(record["message"], report.offset)]:
        raise RoundTripError(f"ClickHouse returned {rows!r} for the probe, expected one matching row")
    report.clickhouse_rows = len(rows)
    timer.step(f"inserted it into ClickHouse ({SELFCHECK_TABLE}) and selected it back", began)
    return report
