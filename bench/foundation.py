"""Benchmarks of the foundation: the local stack's start, the broker and the embedded ClickHouse.

- stack start: `up` on an existing data directory (warm) next to `up` on an empty one (cold, with
  the software already cached);
- Kafka produce: the durable settings onfinish uses (idempotent, acks=all) next to the fastest
  settings librdkafka offers (acks=1, no idempotence), same records, same broker;
- ClickHouse insert: a columnar insert through clickhouse-connect into chDB next to the engine
  generating the same rows itself (INSERT ... SELECT FROM numbers), i.e. the cost of the client path.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bench.report import Figure
from onfinish.security import librdkafka_config
from onfinish.settings import ClickHouseSettings, KafkaSettings, StackSettings
from onfinish.sinks import clickhouse
from onfinish.stack.stack import Stack
from onfinish.stack.topics import TopicSpec, provision_topics

MESSAGES = int(os.environ.get("ONFINISH_BENCH_MESSAGES", "300000"))
ROWS = int(os.environ.get("ONFINISH_BENCH_ROWS", "1000000"))
PAYLOAD = os.urandom(300)  # about the size of an Avro-encoded onFinish event


def stack_start(settings: StackSettings) -> tuple[Stack, list[Figure]]:
    shutil.rmtree(settings.home, ignore_errors=True)
    stack = Stack(settings, kafka=KafkaSettings(partitions=12))
    stack.install()
    began = time.monotonic()
    stack.up()
    cold = time.monotonic() - began
    stack.down()
    began = time.monotonic()
    stack.up()
    warm = time.monotonic() - began
    figure = Figure(
        "stack up, data present (warm)",
        warm,
        "s",
        "stack up, empty data dir (cold)",
        cold,
        higher_is_better=False,
    )
    return stack, [figure]


def _produce_rate(kafka: KafkaSettings, topic: str, config: dict[str, object]) -> float:
    producer = Producer(
        {
            **librdkafka_config(kafka),
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
            **config,
        }
    )
    keys = [f"session-{i}".encode() for i in range(1000)]
    began = time.monotonic()
    for i in range(MESSAGES):
        while True:
            try:
                producer.produce(topic, PAYLOAD, keys[i % 1000])
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    elapsed = time.monotonic() - began
    if remaining:
        raise RuntimeError(f"{remaining} messages were not delivered")
    return MESSAGES / elapsed


def kafka_produce(stack: Stack) -> list[Figure]:
    kafka = stack.kafka_settings
    spec = TopicSpec(f"bench-{uuid.uuid4().hex[:8]}", "benchmark")
    provision_topics(kafka, (spec,))
    topic = spec.name(kafka)
    fast = _produce_rate(kafka, topic, {"acks": 1, "enable.idempotence": False})
    durable = _produce_rate(kafka, topic, {"acks": "all", "enable.idempotence": True})
    return [
        Figure(
            "Kafka produce, idempotent acks=all (300 B)",
            durable,
            "msg/s",
            "Kafka produce, acks=1 (300 B)",
            fast,
        )
    ]


def clickhouse_insert(stack: Stack) -> list[Figure]:
    client = clickhouse.connect(ClickHouseSettings(), stack.settings)
    table = f"bench_{uuid.uuid4().hex[:8]}"
    ddl = (
        "(event_id UInt64, model LowCardinality(String), latency_ms Float64, tokens UInt32)"
        " ENGINE = MergeTree ORDER BY (model, event_id)"
    )
    try:
        client.command(f"CREATE TABLE {table}_native {ddl}")
        began = time.monotonic()
        client.command(
            f"INSERT INTO {table}_native SELECT number, concat('model-', toString(number % 8)),"
            f" toFloat64(number % 5000), toUInt32(number % 4096) FROM numbers({ROWS})"
        )
        native = ROWS / (time.monotonic() - began)
        client.command(f"CREATE TABLE {table}_client {ddl}")
        columns: list[list[Any]] = [
            list(range(ROWS)),
            [f"model-{i % 8}" for i in range(ROWS)],
            [float(i % 5000) for i in range(ROWS)],
            [i % 4096 for i in range(ROWS)],
        ]
        began = time.monotonic()
        for start in range(0, ROWS, 100_000):
            client.insert(
                f"{table}_client",
                [c[start : start + 100_000] for c in columns],
                column_names=["event_id", "model", "latency_ms", "tokens"],
                column_oriented=True,
            )
        through_client = ROWS / (time.monotonic() - began)
        stored = client.command(f"SELECT count() FROM {table}_client")
        if stored != ROWS:
            raise RuntimeError(f"chDB holds {stored} rows, {ROWS} were inserted")
    finally:
        client.command(f"DROP TABLE IF EXISTS {table}_native")
        client.command(f"DROP TABLE IF EXISTS {table}_client")
        client.close()
    return [
        Figure(
            "chDB insert via clickhouse-connect, 100k-row batches",
            through_client,
            "rows/s",
            "chDB INSERT SELECT FROM numbers()",
            native,
        )
    ]


def stack_settings(home: Path) -> StackSettings:
    """A stack of the benchmarks' own, on ports below the ephemeral range, apart from the tests'."""
    return StackSettings(
        home=home,
        kafka_port=24092,
        kafka_controller_port=24093,
        registry_port=24081,
        postgres_port=24432,
        alertmanager_port=24094,
        webhook_port=24095,
    )


def run(stack: Stack) -> list[Figure]:
    return kafka_produce(stack) + clickhouse_insert(stack)
