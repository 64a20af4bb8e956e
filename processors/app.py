"""The Faust application: wires processors/pipeline.py to topics and tables, and nothing more.

One agent reads `onfinish.raw` in batches and hands each record to the pipeline. State goes to
the tables' changelogs in the partition of the raw record it belongs to (a worker that takes the
partition over restores exactly that state), and a batch is acked only once every changelog write
and output of it is delivered: every output of a committed record is in Kafka (at least once;
downstream identities make it once in effect). A timer sends the snapshots of windows that
changed. /health and /metrics are pages of Faust's web server.

Run it with `onfinish process` (which starts `--workers N` of these), or `faust -A
onfinish.processors.app worker`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily

from onfinish.processors.alerts import RuleBook
from onfinish.processors.decoding import Decoder, RegistrySchemas, RegistryUnavailable, TimeBounds
from onfinish.processors.enrichment import Enricher
from onfinish.processors.pipeline import Output, Pipeline
from onfinish.processors.pricing import PriceCatalog
from onfinish.processors.redaction import PatternSet
from onfinish.processors.settings import ProcessorSettings
from onfinish.schemas.contract import PROCESSED_RECORD_TYPES, RecordType
from onfinish.schemas.models import _Record
from onfinish.settings import KafkaSettings, RegistrySettings

log = logging.getLogger(__name__)
BATCH = 1000


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic of bytes: the pipeline encodes and decodes itself (Confluent-framed Avro)."""
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


class ChangelogStore:
    """A StateStore over a Faust table: the table's data, written to its changelog explicitly.

    The pipeline names the raw partition of each write, which is the changelog partition a
    successor restores for that raw partition. Every changelog write's future is kept so that the
    worker can wait for the batch's state and outputs to be delivered before the batch is acked:
    Faust's own flush before a commit can miss the message its producer buffer is sending at that
    moment, and a worker killed right after such a commit would lose that state update.
    """

    def __init__(self, table: Any, pending: list[Any]) -> None:
        self.table = table
        self.pending = pending

    def get(self, key: str) -> Any:
        return self.table.data.get(key)

    def put(self, key: str, value: Any, partition: int) -> None:
        self.table.data[key] = value
        self.pending.append(self.table.send_changelog(partition, key, value))

    def delete(self, key: str, partition: int) -> None:
        self.table.data.pop(key, None)
        self.pending.append(self.table.send_changelog(partition, key, None, value_serializer="raw"))

    def keys(self) -> list[str]:
        return list(self.table.data.keys())


class OutputSchemas:
    """Schema ids of the processors' outputs, registered on first use and then remembered."""

    def __init__(self, registry: RegistrySettings, topic_prefix: str) -> None:
        self.client = SchemaRegistryClient({"url": registry.url, "timeout": registry.timeout_s})
        self.topic_prefix = topic_prefix
        self._prefixes: dict[str, bytes] = {}

    def encode(self, record_type: RecordType, record: _Record) -> bytes:
        prefix = self._prefixes.get(record_type.full_name)
        if prefix is None:
            subject = record_type.subject(record_type.topic(self.topic_prefix))
            try:
                schema_id = self.client.register_schema(subject, Schema(record_type.schema_str, "AVRO"))
            except SchemaRegistryError:
                raise
            except Exception as exc:  # the client's transport errors: the registry is away
                raise RegistryUnavailable(f"registering {subject}: {exc}") from exc
            prefix = b"\x00" + int(schema_id).to_bytes(4, "big")
            self._prefixes[record_type.full_name] = prefix
        return prefix + record_type.encode(record_type.to_datum(record))


def _fetch_schema(client: SchemaRegistryClient) -> Any:
    def fetch(schema_id: int) -> str | None:
        try:
            return client.get_schema(schema_id).schema_str
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise RegistryUnavailable(f"schema {schema_id}: {exc}") from exc
        except Exception as exc:  # transport errors
            raise RegistryUnavailable(f"schema {schema_id}: {exc}") from exc

    return fetch


def build_app(
    settings: ProcessorSettings | None = None,
    kafka: KafkaSettings | None = None,
    registry: RegistrySettings | None = None,
) -> faust.App:
    settings = settings if settings is not None else ProcessorSettings()
    app_id = settings.app_id
    kafka = kafka or KafkaSettings()
    registry = registry or RegistrySettings()
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        store="memory://",
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        web_port=settings.web_port,
        web_host=settings.web_host,
        producer_acks=-1,
        producer_linger_ms=20,
        stream_buffer_maxsize=8192,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
    )
    prefix = kafka.topic_prefix
    raw = _raw_topic(app, f"{prefix}.raw")
    outputs = {
        record_type.full_name: _raw_topic(app, record_type.topic(prefix))
        for record_type in PROCESSED_RECORD_TYPES
    }
    dlq = _raw_topic(app, f"{prefix}.dlq")
    sessions = app.Table("sessions", default=None)  # keys and values as JSON, the app default
    windows = app.Table("windows", default=None)

    schemas = OutputSchemas(registry, prefix)
    registry_client = SchemaRegistryClient({"url": registry.url, "timeout": registry.timeout_s})
    decoder = Decoder(
        RegistrySchemas(_fetch_schema(registry_client)),
        bounds=TimeBounds(timedelta(seconds=settings.max_future_s), timedelta(seconds=settings.max_past_s)),
    )
    enricher = Enricher(
        PriceCatalog.load(settings.price_catalog),
        settings.quality_weights(),
        PatternSet.load(settings.redaction_patterns),
        frozenset(settings.attribute_allow_list),
        settings.pseudonym_key.get_secret_value().encode(),
    )
    pending: list[Any] = []  # futures of this batch's changelog writes and outputs
    pipeline = Pipeline(
        decoder,
        enricher,
        RuleBook.load(settings.alert_rules),
        schemas.encode,
        ChangelogStore(sessions, pending),
        ChangelogStore(windows, pending),
        allowed_lateness=timedelta(seconds=settings.allowed_lateness_s),
        clock=lambda: datetime.now(UTC),
    )
    app.onfinish_pipeline = pipeline  # type: ignore[attr-defined]

    def send(batch: Iterable[Output], into: list[Any]) -> None:
        for output in batch:
            topic = dlq if output.record_type is None else outputs[output.record_type.full_name]
            into.append(topic.send_soon(key=output.key, value=output.value, headers=output.headers or None))

    @app.agent(raw)
    async def process(stream: Any) -> None:  # faust's stub of Stream lacks take_events
        async for events in stream.take_events(BATCH, within=0.2):
            for event in events:
                message = event.message
                while True:
                    try:
                        outputs = pipeline.process(
                            message.key, message.value, message.topic, message.partition, message.offset
                        )
                        send(outputs, pending)
                        break
                    except RegistryUnavailable as exc:
                        # Not the record's fault: it waits (and its partition with it) until the
                        # registry answers again.
                        log.warning("schema registry unavailable; retrying", extra={"error": str(exc)[:200]})
                        await asyncio.sleep(1.0)
            # The batch is acked (and later committed) only once its state and outputs are in Kafka.
            batch, pending[:] = list(pending), []
            await asyncio.gather(*batch)

    @app.timer(interval=settings.snapshot_interval_s)
    async def emit_window_snapshots() -> None:
        try:
            sent: list[Any] = []
            send(pipeline.dirty_snapshots(), sent)
            await asyncio.gather(*sent)
        except RegistryUnavailable:
            log.warning("schema registry unavailable; window snapshots wait")

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            assignment = app.consumer.assignment() if app.consumer else set()
            assigned = sorted(tp.partition for tp in assignment if tp.topic == raw.get_topic_name())
            return self.json({"status": "ok", "app": app_id, "partitions": assigned})

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            registry_ = CollectorRegistry()
            registry_.register(_PipelineCollector(pipeline))
            return self.text(generate_latest(registry_).decode(), content_type="text/plain; version=0.0.4")

    return app


class _PipelineCollector:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterable[CounterMetricFamily]:
        counts = self.pipeline.counts
        for name, help_text, value in (
            ("processed", "Events processed.", counts.processed),
            ("duplicates", "Duplicate events dropped (same event_id at another offset).", counts.duplicates),
            ("replayed", "Records replayed after a takeover and found already applied.", counts.replayed),
            ("late", "Events whose window had closed (kept in the events table only).", counts.late),
            ("feedback", "Feedback records processed.", counts.feedback),
        ):
            family = CounterMetricFamily(f"onfinish_processor_{name}", help_text)
            family.add_metric([], value)
            yield family
        dead = CounterMetricFamily(
            "onfinish_processor_dead_lettered", "Records sent to the DLQ.", labels=["reason"]
        )
        for reason, value in sorted(counts.dead_lettered.items()):
            dead.add_metric([reason], value)
        yield dead


app = build_app()
