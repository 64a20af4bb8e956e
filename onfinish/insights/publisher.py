"""Insight alerts onto onfinish.alerts: Confluent-framed Avro under the contract's subject.

A small edge over confluent-kafka's own AvroSerializer (registration and framing) and Producer, so
that a drift, an anomaly or a budget breach reaches the alerts table like the processors' alerts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from onfinish.errors import OnfinishError
from onfinish.schemas.contract import ALERT
from onfinish.schemas.models import Alert
from onfinish.settings import KafkaSettings, RegistrySettings


class PublishFailed(OnfinishError):
    """Kafka did not acknowledge every alert in time."""


class AlertPublisher:
    def __init__(self, kafka: KafkaSettings, registry: RegistrySettings) -> None:
        self.topic = ALERT.topic(kafka.topic_prefix)
        self.serializer = AvroSerializer(
            SchemaRegistryClient({"url": registry.url}),
            ALERT.schema_str,
            conf={"subject.name.strategy": topic_record_subject_name_strategy},
        )
        self.producer = Producer(
            {"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True, "log_level": 3}
        )
        self.failures: list[str] = []

    def _delivered(self, error: Any, _: Any) -> None:
        if error is not None:
            self.failures.append(str(error))

    def publish(self, alerts: Iterable[Alert], timeout_s: float = 30.0) -> int:
        """Send the alerts (keyed by their id, so a re-sent one replaces itself) and wait for Kafka."""
        sent = 0
        context = SerializationContext(self.topic, MessageField.VALUE)
        for alert in alerts:
            value = self.serializer(ALERT.to_datum(alert), context)
            self.producer.produce(self.topic, value, alert.alert_id.encode(), on_delivery=self._delivered)
            sent += 1
        left = self.producer.flush(timeout_s)
        if left or self.failures:
            raise PublishFailed(f"{left} alerts not acknowledged; failures: {self.failures[:3]}")
        return sent
