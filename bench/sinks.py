"""Benchmark of the sinks: one sink worker from Kafka into chDB, against a direct columnar insert.

- the sink: a worker process (events family only, a group of its own) reading a topic filled with
  enriched events beforehand, from its first inserted row to its last (start-up excluded);
- the baseline: the same rows, decoded and built beforehand, inserted into the same table schema
  in chDB with clickhouse-connect's columnar insert, in batches of the sink's size, same insert settings.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
import fastavro
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema

from bench.report import Figure, rate_until
from onfinish.loadgen.traffic import TrafficGenerator, TrafficProfile
from onfinish.processors.enrichment import Enricher
from onfinish.processors.pricing import PriceCatalog
from onfinish.processors.quality import QualityWeights
from onfinish.processors.redaction import PatternSet
from onfinish.producers import OnFinishEvent
from onfinish.schemas.contract import ENRICHED_EVENT
from onfinish.schemas.wire import framing, registry_client
from onfinish.settings import RegistrySettings
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.tables import EVENTS
from onfinish.stack.stack import Stack
from onfinish.stack.topics import provision_topics

ROWS = int(os.environ.get("ONFINISH_BENCH_SINK_ROWS", "400000"))
BATCH = 100_000  # the sink's default batch
WEB_PORT = 16466
ROOT = Path(__file__).resolve().parents[1]


def _values(stack: Stack, prefix: str) -> list[bytes]:
    """ROWS enriched events, Confluent-framed with the id the registry gives their schema."""
    registry = registry_client(RegistrySettings(url=stack.settings.registry_url))
    topic = ENRICHED_EVENT.topic(prefix)
    schema_id = registry.register_schema(
        ENRICHED_EVENT.subject(topic), Schema(ENRICHED_EVENT.schema_str, "AVRO")
    )
    enricher = Enricher(PriceCatalog.load(), QualityWeights(), PatternSet.load(), frozenset(), b"bench")
    now = datetime.now(UTC)
    items = TrafficGenerator(TrafficProfile(malformed_share=0, feedback_share=0), seed=91).items(3000)
    events = [i for i in items if isinstance(i, OnFinishEvent)]
    base = [ENRICHED_EVENT.to_datum(enricher.enrich(e, 0, n, now)) for n, e in enumerate(events)]
    header = framing(schema_id)
    values = []
    for n in range(ROWS):
        datum = dict(base[n % len(base)])
        datum["event_id"] = uuid.uuid4()
        values.append(header + ENRICHED_EVENT.encode(datum))
    return values


def _fill(stack: Stack, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_settings.bootstrap_servers, "linger.ms": 50})
    for value in values:
        while True:
            try:
                producer.produce(topic, value, b"k%d" % (len(value) % 97))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("filling the enriched topic failed")


def _direct_insert(values: list[bytes], directory: Path) -> float:
    rows = []
    for offset, value in enumerate(values):
        body = io.BytesIO(value)
        body.seek(5)
        datum = fastavro.schemaless_reader(body, ENRICHED_EVENT.parsed, ENRICHED_EVENT.parsed)
        assert isinstance(datum, dict)
        rows.append(EVENTS.to_row(datum, 0, offset))
    client = clickhouse_connect.get_client(dsn=f"chdb:///{directory}")
    try:
        client.command("CREATE DATABASE IF NOT EXISTS bench")
        client.database = "bench"
        apply_migrations(client)
        began = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            client.insert(
                "events",
                rows[start : start + BATCH],
                column_names=list(EVENTS.columns),
                settings={"optimize_on_insert": 0},
            )
        return len(rows) / (time.perf_counter() - began)
    finally:
        client.close()


def _sink(stack: Stack, prefix: str, directory: Path) -> float:
    env: dict[str, Any] = {
        **os.environ,
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_settings.bootstrap_servers,
        "ONFINISH_KAFKA_TOPIC_PREFIX": prefix,
        "ONFINISH_REGISTRY_URL": stack.settings.registry_url,
        "ONFINISH_CLICKHOUSE_DSN": f"chdb:///{directory}",
        "ONFINISH_SINK_GROUP_PREFIX": f"{prefix}-sinks",
        "ONFINISH_SINK_FAMILIES": '["events"]',
        "ONFINISH_SINK_WEB_PORT": str(WEB_PORT),
        "ONFINISH_SINK_QUERY_PORT": "0",
        "ONFINISH_SINK_BATCH_ROWS": str(BATCH),
    }
    with tempfile.TemporaryFile() as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "onfinish", "sink"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            rate = rate_until(WEB_PORT, 'onfinish_sink_rows_total{table="events"}', ROWS, poll_s=0.02)
            if rate is None:
                log.seek(0)
                raise RuntimeError(f"the sink did not store the rows in time: {log.read()[-2000:]!r}")
            return rate
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)


def run(stack: Stack) -> list[Figure]:
    prefix = f"benchs{uuid.uuid4().hex[:6]}"
    provision_topics(stack.kafka_settings.model_copy(update={"topic_prefix": prefix}))
    values = _values(stack, prefix)
    _fill(stack, ENRICHED_EVENT.topic(prefix), values)
    with tempfile.TemporaryDirectory() as scratch:
        baseline = _direct_insert(values, Path(scratch) / "direct")
        rate = _sink(stack, prefix, Path(scratch) / "sink")
    return [
        Figure(
            "sink worker, Kafka to chDB events, one process",
            rate,
            "rows/s",
            "columnar insert of the same rows into chDB",
            baseline,
        )
    ]
