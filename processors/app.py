"""The Faust application: wires processors/pipeline.py to topics and tables, and nothing more.

A task takes `onfinish.raw`'s records in batches, as the consumer fetched them (no Faust stream
event per record), and hands them to the pipeline. Each batch's outputs and
state changes (to the tables' changelogs, in the partition of the raw record they belong to, which
is what a worker taking that partition over restores) leave as one group through confluent-kafka's
producer (processors/delivery.py), and the batch's records are acked only once the whole group is
in Kafka: every output of a committed record is delivered (at least once; downstream identities
make it once in effect). The next batch is processed while the last one is on its way. A timer
sends the snapshots of windows that changed. /health and /metrics are onfinish's own small server
(onfinish/health.py); Faust's web server is off.

Records are produced with confluent-kafka rather than Faust's producer, for speed (docs/decisions/0007).
Where the app goes around Faust's own behaviour (the consumer that hands the raw records to the batches
directly, aiokafka's fetch wait, the commit at stop), it does so through
processors/faust_overrides.py, the one module that touches Faust's private surface.

Run it with `onfinish process` (which starts `--workers N` of these), or `faust -A
onfinish.processors.app worker`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import confluent_kafka
import faust
from faust.serializers import codecs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from onfinish.errors import describe_exception
from onfinish.health import HealthServer
from onfinish.processors.alerts import RuleBook
from onfinish.processors.continuity import Continuity, Verdict
from onfinish.processors.credentials import faust_credentials
from onfinish.processors.decoding import Decoder, TimeBounds
from onfinish.processors.delivery import GroupSender, Record
from onfinish.processors.engines import NativeCore
from onfinish.processors.enrichment import Enricher
from onfinish.processors.faust_overrides import OverriddenApp, forget_restored, restored_partition, untrack
from onfinish.processors.pipeline import STAGES, Batch, Output, Pipeline, RawRecord
from onfinish.processors.pricing import PriceCatalog
from onfinish.processors.redaction import PatternSet
from onfinish.processors.settings import Engine, ProcessorSettings
from onfinish.schemas.contract import (
    DEAD_LETTER_OVERHEAD_BYTES,
    MAX_RECORD_BYTES,
    PROCESSED_RECORD_TYPES,
    RecordType,
)
from onfinish.schemas.sealing import Seal
from onfinish.schemas.wire import (
    RegistryUnavailable,
    WriterSchemas,
    framing,
    registry_client,
    schema_id_for,
    schema_text_fetch,
)
from onfinish.security import librdkafka_config
from onfinish.settings import KafkaSettings, RegistrySettings

log = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.005
LAG_SCRAPE_WAIT_S = 2.0  # the lag asks the broker at most a second per partition set (measure_lag)


class _App(OverriddenApp):
    """The processors' app: delivers what is in flight before Faust commits and stops (SIGTERM)."""

    onfinish_pipeline: Pipeline
    onfinish_sender: GroupSender
    onfinish_topics: tuple[dict[str, str], str]  # output topic by record type, and the DLQ

    onfinish_stop_timeout_s: float = 30.0

    async def on_stop(self) -> None:
        sender = getattr(self, "onfinish_sender", None)
        if sender is not None:
            # Faust's stop waits until every record it handed out is acked; a batch waiting for the
            # registry, or anything else that keeps a record unacked, would hold the stop for as
            # long as it lasts. Past the timeout the worker leaves, as a crash would.
            watchdog = threading.Timer(
                self.onfinish_stop_timeout_s,
                _leave,
                args=(sender, f"the stop took longer than {self.onfinish_stop_timeout_s:.0f}s"),
            )
            watchdog.daemon = True
            watchdog.start()
        # Faust stops the consumer: the task finishes the batch it had taken, the deliver task
        # acks each batch once its outputs are in Kafka, and Faust commits when all are acked.
        await super().on_stop()
        pipeline = getattr(self, "onfinish_pipeline", None)
        if sender is not None and pipeline is not None:
            try:  # the windows changed since the last timer tick, the last batch's included
                sender.send(_records(pipeline.dirty_snapshots(), self.onfinish_topics), lambda: None)
            except RegistryUnavailable:
                log.warning("schema registry unavailable at shutdown; the successor re-sends windows")
            if not sender.flush(10.0):
                log.warning("window snapshots undelivered at shutdown; the successor re-sends them")


def _leave(sender: GroupSender, why: str, code: int = 0) -> None:
    """End the process now, leaving what is in progress uncommitted for the next owner.

    Used when a graceful stop cannot finish: asked to stop while the registry is away (acking the
    waiting batch would commit it unprocessed, and waiting holds the stop for as long as the
    registry is away), or a stop that outlived its timeout. The batches already finished are
    delivered (their offsets were committed with them, or are re-read and found applied), then the
    process ends as a crash would: the worker that takes the partitions over re-reads the rest from
    the committed offsets and restores the state from the changelogs, as after SIGKILL.
    """
    delivered = sender.flush(10.0)
    log.warning(
        "leaving without a graceful stop; the records in progress are left to the next owner",
        extra={"why": why, "finished_batches_delivered": delivered},
    )
    logging.shutdown()
    os._exit(code)


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic of bytes: the pipeline encodes and decodes itself (Confluent-framed Avro)."""
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


class ChangelogStore:
    """A StateStore over a Faust table: live values in the table's data, their JSON form queued
    for the table's changelog (sent with the batch's outputs, in the raw record's partition).

    Keys and values are encoded with the table's own codec (JSON), so that Faust restores them.
    """

    def __init__(self, table: Any, writes: list[Record]) -> None:
        self.table = table
        self.writes = writes
        self.topic = table.changelog_topic.get_topic_name()
        self.partitions: dict[str, int] = {}  # key -> raw partition, to forget revoked ones

    def get(self, key: str) -> Any:
        return self.table.data.get(key)

    def put(self, key: str, value: Any, state: Any, partition: int) -> None:
        self.table.data[key] = value
        self.partitions[key] = partition
        self.writes.append(
            Record(self.topic, codecs.dumps("json", key), codecs.dumps("json", state), partition)
        )

    def remember(self, key: str, value: Any) -> None:
        self.table.data[key] = value

    def delete(self, key: str, partition: int) -> None:
        self.table.data.pop(key, None)
        self.partitions.pop(key, None)
        forget_restored(self.table, key)
        self.writes.append(Record(self.topic, codecs.dumps("json", key), None, partition))

    def partition_of(self, key: str) -> int | None:
        partition = self.partitions.get(key)
        return partition if partition is not None else restored_partition(self.table, key)

    def keys(self) -> list[str]:
        return list(self.table.data.keys())

    def forget(self, partitions: set[int]) -> None:
        """Drop the live values of partitions another worker now owns (it restores them)."""
        for key in [k for k, p in self.partitions.items() if p in partitions]:
            del self.partitions[key]
            self.table.data.pop(key, None)


class OutputSchemas:
    """Schema ids of the processors' outputs, registered (or, auto-registration off, looked up)
    on first use and then remembered."""

    def __init__(self, registry: RegistrySettings, topic_prefix: str, *, auto_register: bool = True) -> None:
        self.client = registry_client(registry, quick=True)  # the pipeline retries on its own
        self.topic_prefix = topic_prefix
        self.auto_register = auto_register
        self._prefixes: dict[str, bytes] = {}

    def encode(self, record_type: RecordType, datum: dict[str, Any]) -> bytes:
        return self.prefix(record_type) + record_type.encode(datum)

    def prefix(self, record_type: RecordType) -> bytes:
        """The Confluent prefix of `record_type`'s records (the native engine frames with it)."""
        prefix = self._prefixes.get(record_type.full_name)
        if prefix is None:
            subject = record_type.subject(record_type.topic(self.topic_prefix))
            schema_id = schema_id_for(self.client, record_type, subject, auto_register=self.auto_register)
            prefix = framing(schema_id)
            self._prefixes[record_type.full_name] = prefix
        return prefix


def build_app(
    settings: ProcessorSettings | None = None,
    kafka: KafkaSettings | None = None,
    registry: RegistrySettings | None = None,
) -> faust.App:
    settings = settings if settings is not None else ProcessorSettings()
    app_id = settings.app_id
    kafka = kafka or KafkaSettings()
    registry = registry or RegistrySettings()
    app = _App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(kafka),
        store="memory://",
        datadir=settings.data_dir / app_id,  # not Faust's "<app id>-data" in the working directory
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        web_enabled=False,  # /health and /metrics: onfinish's own server (onfinish/health.py), below
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
    )
    app.use_direct_delivery()
    prefix = kafka.topic_prefix
    raw = _raw_topic(app, f"{prefix}.raw")
    topics = {record_type.full_name: record_type.topic(prefix) for record_type in PROCESSED_RECORD_TYPES}
    dlq = f"{prefix}.dlq"
    sessions = app.Table("sessions", default=None)  # keys and values as JSON, the app default
    windows = app.Table("windows", default=None)

    schemas = OutputSchemas(registry, prefix, auto_register=settings.auto_register)
    decoder = Decoder(
        WriterSchemas(schema_text_fetch(registry_client(registry, quick=True))),
        bounds=TimeBounds(timedelta(seconds=settings.max_future_s), timedelta(seconds=settings.max_past_s)),
    )
    enricher = Enricher(
        PriceCatalog.load(settings.price_catalog),
        settings.quality_weights(),
        PatternSet.load(settings.redaction_patterns),
        frozenset(settings.attribute_allow_list),
        settings.pseudonym_key.get_secret_value().encode(),
    )
    continuity = Continuity()  # no record of a partition is passed over (processors/continuity.py)
    writes: list[Record] = []  # this batch's changelog writes, sent with its outputs
    session_store = ChangelogStore(sessions, writes)
    window_store = ChangelogStore(windows, writes)
    pipeline = Pipeline(
        decoder,
        enricher,
        RuleBook.load(settings.alert_rules),
        schemas.encode,
        session_store,
        window_store,
        allowed_lateness=timedelta(seconds=settings.allowed_lateness_s),
        session_gap=timedelta(seconds=settings.session_gap_s),
        clock=lambda: datetime.now(UTC),
        native=NativeCore(decoder, enricher, schemas.prefix) if settings.engine is Engine.native else None,
        seal=Seal.configured(),
    )
    sender = GroupSender(
        lambda: confluent_kafka.Producer(
            {
                **librdkafka_config(kafka),
                "enable.idempotence": True,
                "linger.ms": settings.producer_linger_ms,
                "message.timeout.ms": 0,  # never give a record up: the batch waits for it
                # A dead letter carries the refused record's bytes, up to what onfinish.raw takes.
                "message.max.bytes": MAX_RECORD_BYTES + DEAD_LETTER_OVERHEAD_BYTES,
                "client.id": f"{app_id}-outputs",
            }
        )
    )
    app.onfinish_pipeline = pipeline
    app.onfinish_sender = sender
    app.onfinish_stop_timeout_s = settings.stop_timeout_s
    app.onfinish_fetch_max_wait_ms = settings.fetch_max_wait_ms

    app.onfinish_topics = (topics, dlq)

    metrics = ProcessorMetrics(pipeline, sender, continuity)

    def records(outputs: Sequence[Output]) -> list[Record]:
        metrics.count_outputs(outputs)
        return _records(outputs, app.onfinish_topics)

    async def until_registry(step: Any) -> Any:
        """Run `step` until the registry answers: its absence is not the records' fault, so they
        wait (and their partitions with them)."""
        while True:
            try:
                return step()
            except RegistryUnavailable as exc:
                if app.should_stop:
                    _leave(sender, "asked to stop while the schema registry is away")
                log.warning("schema registry unavailable; retrying", extra={"error": str(exc)[:200]})
                await asyncio.sleep(1.0)

    batches = app.batches(raw, maxsize=max(8192, 2 * settings.batch_size))

    @app.task
    async def process() -> None:
        """Take the raw records a batch at a time and process them (decision 0007, issue 21).

        A record is acked once every output of its batch is in Kafka (delivery, below), and in no
        other way: a batch given up is never acked and stays uncommitted for the next owner. The
        task runs until Faust cancels the app's tasks, after the stop has waited for every record
        handed out to be acked, so a batch taken before the stop is finished and delivered.
        """
        while True:
            messages = await batches.take(settings.batch_size, settings.batch_within_s)
            try:
                await process_batch(messages)
            except Exception as exc:  # a bug, or a refusal by the registry: not the records' fault
                # Its records can never be acked now, so this worker could commit nothing more (the
                # batch is a gap at the head of its partitions) while carrying on without them.
                # Ending it is what is safe: the next owner processes them from the last commit.
                log.exception("a batch could not be processed; the worker ends and its records wait")
                _leave(sender, f"a batch failed: {describe_exception(exc)}", code=1)

    async def process_batch(messages: list[Any]) -> None:
        started = time.perf_counter()
        batch: Batch = pipeline.batch()
        passed_over: set[Any] = set()  # partitions with records skipped for a hole, in this batch
        processed: list[Any] = []  # the messages acked once the batch's outputs are delivered
        for message in messages:
            verdict = continuity.check(message.tp, message.offset)
            if verdict is not Verdict.process:
                if verdict is Verdict.rewind:
                    log.warning(
                        "records missing from the stream; reading the partition again from the first",
                        extra={
                            "partition": message.partition,
                            "missing_from": continuity.missing_from(message.tp),
                            "got": message.offset,
                        },
                    )
                passed_over.add(message.tp)
                # Never acked: no commit passes a hole before its records were processed (a record
                # read twice was acked, or will be, as its first copy). Nor waited for at a stop.
                untrack(app.consumer, message)
                continue
            processed.append(message)
            record = RawRecord(message.key, message.value, message.topic, message.partition, message.offset)
            try:
                batch.add(record)
            except RegistryUnavailable:  # it changed nothing: added again once the registry answers
                await until_registry(lambda: batch.add(record))  # noqa: B023 - awaited at once
        for tp in passed_over:
            # Seek again after every batch that still skips: a fetch in flight when the first seek
            # was made delivers records past the hole, after which Faust drops the hole's records as
            # already read. Once the first missing record has come, the partition is whole.
            # `seek_wait` seeks on the Kafka client's own thread; Faust's `seek` does it from this
            # one, racing the client's fetches (it crashed the fetcher with a KeyError).
            if tp in continuity.rewinding:
                await app.consumer.seek_wait({tp: continuity.missing_from(tp)})
        outputs = await until_registry(batch.finish)
        group = records(outputs) + writes
        writes.clear()
        sender.send(group, metrics.on_delivered(batch, started, _acker(app, processed)))
        sender.poll(0)

    @app.task
    async def deliver() -> None:
        """Serve delivery reports: they ack the batches whose outputs are all in Kafka.

        Also while the worker stops (Faust cancels app tasks last): the stop waits until every
        record handed out is acked, and the process task still finishes the batch it had taken, whose
        acks come from here. Ending at `should_stop` left that wait to the stop timeout, so every
        stop mid-stream ended as a crash, without a commit and without leaving the group.
        """
        while True:
            sender.poll(0)
            await asyncio.sleep(POLL_INTERVAL_S)

    @app.timer(interval=settings.snapshot_interval_s)
    async def emit_window_snapshots() -> None:
        try:
            snapshots = records(pipeline.dirty_snapshots())
        except RegistryUnavailable:
            log.warning("schema registry unavailable; window snapshots wait")
            return
        sender.send(snapshots, lambda: None)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget(app_: faust.App, revoked: set[Any], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == raw.get_topic_name()}
        continuity.forget(set(revoked))
        pipeline.forget(partitions)
        session_store.forget(partitions)
        window_store.forget(partitions)

    def health() -> tuple[bool, dict[str, Any]]:
        try:
            assignment = app.consumer.assignment()
        except Exception:  # the consumer has not started yet: alive, with nothing assigned
            assignment = set()
        assigned = sorted(tp.partition for tp in assignment if tp.topic == raw.get_topic_name())
        return True, {"status": "ok", "app": app_id, "partitions": assigned}

    def measure_lag() -> None:
        """Runs on the worker's event loop (the Kafka client is not used from other threads); a
        scrape while the loop is busy for longer than the wait keeps the last figures."""
        measured = asyncio.run_coroutine_threadsafe(
            metrics.measure_lag(
                app.consumer, _assigned(app.consumer, raw.get_topic_name()), continuity.expected
            ),
            app.loop,
        )
        try:
            measured.result(timeout=LAG_SCRAPE_WAIT_S)
        except Exception as exc:  # timed out, or the loop is stopping
            measured.cancel()
            log.debug("no fresh lag for this scrape", extra={"error": repr(exc)})

    @app.task
    async def serve_health() -> None:
        """/health and /metrics on ONFINISH_PROCESSOR_WEB_PORT, from the worker's start."""
        HealthServer(
            settings.web_host, settings.web_port, metrics.registry, health, before_scrape=measure_lag
        ).start()

    return app


def _records(outputs: Iterable[Output], topics: tuple[dict[str, str], str]) -> list[Record]:
    by_type, dlq = topics
    return [
        Record(
            dlq if output.record_type is None else by_type[output.record_type.full_name],
            output.key,
            output.value,
            headers=output.headers or None,
        )
        for output in outputs
    ]


def _acker(app: faust.App, messages: list[Any]) -> Callable[[], None]:
    def ack() -> None:
        for message in messages:
            message.ack(app.consumer)

    return ack


# Seconds: a batch's stages take milliseconds, its delivery up to the producer's linger and more.
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ProcessorMetrics:
    """The worker's Prometheus metrics (/metrics), in a registry of its own: the pipeline's counts,
    outputs by type, time per stage and per batch, and lag per raw partition."""

    def __init__(self, pipeline: Pipeline, sender: GroupSender, continuity: Continuity) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_PipelineCollector(pipeline, sender, continuity))
        self.outputs = Counter(
            "onfinish_processor_outputs",
            "Records produced, by type (EnrichedEvent, SessionSnapshot, WindowSnapshot, Alert, "
            "QualityUpdate, dead_letter); state changelog writes are not counted.",
            ["type"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "onfinish_processor_stage_seconds",
            "Time one batch spent in each stage: decode (and validate), enrich (deduplicate, price, "
            "score, redact), encode, state (sessions, windows), finish (state writes, snapshots, "
            "rules), deliver (from the send to Kafka's acks for all the batch produced).",
            ["stage"],
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "onfinish_processor_batch_seconds",
            "From a batch's start to the delivery of all it produced (its offsets may then be committed).",
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.batch_records = Histogram(
            "onfinish_processor_batch_records",
            "Raw records per batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=self.registry,
        )
        self.lag = Gauge(
            "onfinish_processor_lag",
            "Raw records of an assigned partition not yet processed: its high watermark minus the next "
            "offset to process (before the partition's first record, the consumer's position).",
            ["partition"],
            registry=self.registry,
        )

    def count_outputs(self, outputs: Sequence[Output]) -> None:
        for record_type, count in Tally(output.record_type for output in outputs).items():
            name = "dead_letter" if record_type is None else record_type.full_name.rsplit(".", 1)[-1]
            self.outputs.labels(name).inc(count)

    def on_delivered(self, batch: Batch, started: float, then: Callable[[], None]) -> Callable[[], None]:
        """`then`, once the batch's outputs are delivered, after the batch's times are recorded."""
        for stage in STAGES:
            self.stage_seconds.labels(stage).observe(batch.seconds[stage])
        self.batch_records.observe(batch.records)
        sent = time.perf_counter()

        def delivered() -> None:
            now = time.perf_counter()
            self.stage_seconds.labels("deliver").observe(now - sent)
            self.batch_seconds.observe(now - started)
            then()

        return delivered

    async def measure_lag(
        self, consumer: Any, assigned: Iterable[Any], next_offsets: Mapping[Any, int]
    ) -> None:
        highs = {tp: high for tp in assigned if (high := _highwater(consumer, tp)) is not None}
        unknown = [tp for tp in highs if tp not in next_offsets]  # nothing processed yet: ask, at once
        answers = await asyncio.gather(*(_position(consumer, tp) for tp in unknown))
        positions = dict(zip(unknown, answers, strict=True))
        self.lag.clear()  # partitions given away since the last scrape leave the metric
        for tp, high in highs.items():
            offset = next_offsets.get(tp, positions.get(tp))
            if offset is not None:
                self.lag.labels(str(tp.partition)).set(max(high - offset, 0))


def _assigned(consumer: Any, topic: str) -> list[Any]:
    """The partitions of `topic` assigned to this worker; none while its consumer has not started."""
    try:
        assignment = consumer.assignment()
    except Exception as exc:  # ConsumerNotStarted: /metrics still shows the counts
        log.debug("no assignment for the lag", extra={"error": repr(exc)})
        return []
    return [tp for tp in assignment if tp.topic == topic]


def _highwater(consumer: Any, tp: Any) -> int | None:
    """The partition's high watermark from the last fetch; None before one, or when the Kafka
    client no longer holds the partition (a rebalance in progress) or has not started."""
    try:
        high = consumer.highwater(tp)
    except Exception as exc:  # IllegalStateError, ConsumerNotStarted, ...: no figure this time
        log.debug("no high watermark for the lag", extra={"partition": tp.partition, "error": repr(exc)})
        return None
    return None if high is None else int(high)


async def _position(consumer: Any, tp: Any) -> int | None:
    """The consumer's position in a partition; None when it has none to tell within a second."""
    try:
        return await asyncio.wait_for(consumer.position(tp), timeout=1.0)
    except Exception as exc:  # between assignments, or the broker away: no figure this time
        log.debug("no position for the lag", extra={"partition": tp.partition, "error": repr(exc)})
        return None


class _PipelineCollector:
    def __init__(self, pipeline: Pipeline, sender: GroupSender, continuity: Continuity) -> None:
        self.pipeline = pipeline
        self.sender = sender
        self.continuity = continuity

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        counts = self.pipeline.counts
        for name, help_text, value in (
            ("records_in", "Raw records read, bad ones included.", counts.records_in),
            ("processed", "Events processed.", counts.processed),
            ("duplicates", "Duplicate events dropped (same event_id at another offset).", counts.duplicates),
            ("replayed", "Records replayed after a takeover and found already applied.", counts.replayed),
            ("late", "Events whose window had closed (kept in the events table only).", counts.late),
            ("feedback", "Feedback records processed.", counts.feedback),
            (
                "stream_holes",
                "Holes in a raw partition's offsets (records the stream jumped over), each read again.",
                self.continuity.holes,
            ),
            (
                "records_read_twice",
                "Raw records the consumer delivered again within one assignment, skipped.",
                self.continuity.repeats,
            ),
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
        delivered = CounterMetricFamily(
            "onfinish_processor_records_delivered", "Output and changelog records delivered to Kafka."
        )
        delivered.add_metric([], self.sender.delivered_records)
        yield delivered
        refused = CounterMetricFamily(
            "onfinish_processor_records_refused", "Deliveries Kafka refused (each record is sent again)."
        )
        refused.add_metric([], self.sender.refused_records)
        yield refused
        in_flight = GaugeMetricFamily("onfinish_processor_batches_in_flight", "Batches not yet delivered.")
        in_flight.add_metric([], self.sender.in_flight)
        yield in_flight


app = build_app()
