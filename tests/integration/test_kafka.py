"""The real broker: topics as DESIGN.md says, and produce/consume with both client libraries.

confluent-kafka is what the SDK and sinks use; aiokafka is what Faust (the processors) uses, so the
broker version must work with both.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from onfinish.settings import KafkaSettings
from onfinish.stack.topics import TOPICS, provision_topics
from tests.integration.records import consume, make_topic


def _admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers})


def test_design_topics_exist_with_configured_partitions_and_sessions_compacted(kafka_settings: KafkaSettings):
    admin = _admin(kafka_settings)
    topics = admin.list_topics(timeout=10).topics
    for spec in TOPICS:
        name = spec.name(kafka_settings)
        assert name in topics, name
        assert len(topics[name].partitions) == kafka_settings.partitions
    resource = ConfigResource(ResourceType.TOPIC, f"{kafka_settings.topic_prefix}.sessions")
    configs = next(iter(admin.describe_configs([resource]).values())).result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"


def test_provisioning_twice_creates_nothing_new(kafka_settings: KafkaSettings):
    again = provision_topics(kafka_settings)
    assert [r.created for r in again] == [False] * len(TOPICS)
    assert all(r.note == "" for r in again)


def test_provisioning_reports_partition_mismatch_of_existing_topic(kafka_settings: KafkaSettings):
    wider = kafka_settings.model_copy(update={"partitions": kafka_settings.partitions + 1})
    results = provision_topics(wider)
    assert all("fixed at creation" in r.note for r in results)


def test_confluent_kafka_round_trip_keeps_key_order_and_headers(kafka_settings: KafkaSettings, unique: str):
    topic = make_topic(kafka_settings, unique, partitions=3)
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers, "enable.idempotence": True})
    for i in range(50):
        producer.produce(topic, key=b"session-1", value=str(i).encode(), headers={"n": str(i)})
    assert producer.flush(15) == 0
    received: list[tuple[int | None, int, str]] = []
    for message in consume(kafka_settings, topic, 50, unique, timeout_s=30):
        header = dict(message.headers() or [])["n"]
        assert isinstance(header, bytes)
        received.append((message.partition(), int(message.value() or b""), header.decode()))
    assert [value for _, value, _ in received] == list(range(50))
    assert len({partition for partition, _, _ in received}) == 1  # one key, one partition
    assert all(str(value) == header for _, value, header in received)


def test_aiokafka_produces_and_consumes_against_the_broker(kafka_settings: KafkaSettings, unique: str):
    topic = make_topic(kafka_settings, unique, partitions=1)

    async def scenario() -> list[bytes]:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_settings.bootstrap_servers, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait(topic, f"aio-{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_settings.bootstrap_servers,
            group_id=unique,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        values: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                while len(values) < 20:
                    batch = await consumer.getmany(timeout_ms=500)
                    for messages in batch.values():
                        values.extend(m.value for m in messages)
            await consumer.commit()
        finally:
            await consumer.stop()
        return values

    values = asyncio.run(scenario())
    assert values == [f"aio-{i}".encode() for i in range(20)]
    # The group's committed offset is visible to the other client library.
    consumer = Consumer({"bootstrap.servers": kafka_settings.bootstrap_servers, "group.id": unique})
    from confluent_kafka import TopicPartition

    committed = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    consumer.close()
    assert committed[0].offset == 20


def test_messages_from_aiokafka_are_read_by_confluent_kafka(kafka_settings: KafkaSettings, unique: str):
    topic = make_topic(kafka_settings, unique, partitions=1)

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"from-aiokafka", key=b"k", headers=[("stage", b"test")])
        finally:
            await producer.stop()

    asyncio.run(produce())
    (message,) = consume(kafka_settings, topic, 1, unique, timeout_s=30)
    assert message is not None
    assert (message.key(), message.value(), message.headers()) == (
        b"k",
        b"from-aiokafka",
        [("stage", b"test")],
    )
