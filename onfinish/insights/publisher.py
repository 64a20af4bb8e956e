"""Records of the insights onto their topics: Confluent-framed Avro under the contract's subjects.

A small edge over confluent-kafka's own AvroSerializer (registration and framing) and Producer, so
that a drift alert or a re-pricing's corrections reach ClickHouse through the sink like the
processors' records (the same idempotent path, in embedded and in server mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from onfinish.alerting.records import record_key
from onfinish.errors import OnfinishError
from onfinish.schemas.contract import ALERT, RecordType
from onfinish.schemas.models import Alert, _Record
from onfinish.schemas.wire import registry_client
from onfinish.security import librdkafka_config
from onfinish.settings import KafkaSettings, RegistrySettings


class PublishFailed(OnfinishError):
    """Kafka did not acknowledge every record in time."""


class RecordPublisher:
    def __init__(self, kafka: KafkaSettings, registry: RegistrySettings) -> None:
        self.kafka = kafka
        self.prefix = kafka.topic_prefix
        self.registry = registry_client(registry)
        self.producer = Producer(
            {
                **librdkafka_config(kafka),
                "enable.idempotence": True,
                "linger.ms": 50,
                "log_level": 3,
            }
        )
        self.failures: list[str] = []
        self._serializers: dict[str, AvroSerializer] = {}

    def _delivered(self, error: Any, _: Any) -> None:
        if error is not None:
            self.failures.append(str(error))

    def publish(
        self,
        record_type: RecordType,
        records: Iterable[tuple[bytes, _Record]],
        *,
        progress: Callable[[int], None] | None = None,
        timeout_s: float = 60.0,
    ) -> int:
        """Send (key, record) pairs to the record type's topic and wait until Kafka has them all."""
        topic = record_type.topic(self.prefix)
        serializer = self._serializers.get(record_type.full_name)
        if serializer is None:
            serializer = self._serializers[record_type.full_name] = AvroSerializer(
                self.registry,
                record_type.schema_str,
                conf={"subject.name.strategy": topic_record_subject_name_strategy},
            )
        context = SerializationContext(topic, MessageField.VALUE)
        sent = 0
        for key, record in records:
            value = serializer(record_type.to_datum(record), context)
            while True:
                try:
                    self.producer.produce(topic, value, key, on_delivery=self._delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self.producer.poll(0.1)
            sent += 1
            if progress is not None and sent % 1000 == 0:
                progress(1000)
            self.producer.poll(0)
        left = self.producer.flush(timeout_s)
        if progress is not None:
            progress(sent % 1000)
        if left or self.failures:
            raise PublishFailed(f"{left} records not acknowledged; failures: {self.failures[:3]}")
        return sent

    def publish_alerts(self, alerts: Iterable[Alert]) -> int:
        """Facts keyed by their id; an episode's records by rule and subject, so that they land on
        one partition in the order they happened (a firing before its resolution)."""
        return self.publish(ALERT, ((record_key(alert), alert) for alert in alerts))

    def alert_ends(self) -> dict[int, int]:
        """Per partition of the alerts topic, the offset its next record will get."""
        topic = ALERT.topic(self.prefix)
        consumer = Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap_servers,
                "group.id": f"{self.prefix}-alert-ends",  # required by the client; nothing is committed
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        try:
            timeout = self.kafka.request_timeout_s
            metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return {}
            return {
                partition: consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)[
                    1
                ]
                for partition in metadata.partitions
            }
        finally:
            consumer.close()
