"""The Collector path: OTLP protobuf from a Kafka topic, mapped like the receiver's, to onfinish.raw.

The OpenTelemetry Collector's Kafka exporter (`encoding: otlp_proto`, traces) writes one
ExportTraceServiceRequest per record to a topic (`otlp_spans` by default). This worker consumes it
in its own consumer group, and for every batch of records, top to bottom:
1. parses each record with opentelemetry-proto; a record that does not parse (empty, not protobuf,
   truncated) goes to onfinish.dlq untouched, with stage `collect` and its reason in the headers;
2. maps its spans and reads feedback from their events (ingest.py, the receiver's code), and hands
   the records to the SDK's spool (`Emitter.spool_batch`); a record with spans the mapping rejected
   also goes to the DLQ, with their reasons, once its good spans are spooled (a replay of it maps
   them again under the same ids: one event downstream);
3. waits until Kafka has acknowledged everything the batch produced (the SDK's own producer, and the
   dead letters' producer);
4. commits the batch's offsets (a commit Kafka refuses waits for a later pass, the worker consuming
   on meanwhile: onfinish/offsets.py).
A worker killed anywhere before 4 leaves its records uncommitted: the next one maps them again, to
the same event ids, and the processors count each event once. SIGTERM finishes the batch first.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import confluent_kafka

from onfinish.collect import otlp
from onfinish.collect.ingest import Ingest, Outcome
from onfinish.collect.mapping import SpanData
from onfinish.collect.metrics import CollectMetrics
from onfinish.collect.settings import CollectSettings
from onfinish.health import HealthServer
from onfinish.offsets import Committer
from onfinish.producers.emitter import Emitter
from onfinish.retry import Backoff
from onfinish.schemas.contract import MAX_RECORD_BYTES
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.sealing import Seal
from onfinish.security import librdkafka_config
from onfinish.settings import KafkaSettings

log = logging.getLogger(__name__)


class Message(Protocol):
    """What is used of a confluent_kafka.Message (a fake in unit tests)."""

    def error(self) -> Any: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


def dead_letter(message: Message, reason: Reason, text: str, seal: Seal) -> DeadLetter:
    """The record as a dead letter, its bytes sealed: OTLP carries prompts and user ids (decision 0017)."""
    return DeadLetter.sealed(
        seal,
        stage=Stage.collect,
        reason=reason,
        message=text,
        key=message.key(),
        value=message.value(),
        source_topic=message.topic() or "",
        source_partition=message.partition() or 0,
        source_offset=message.offset() or 0,
    )


def read_record(message: Message, seal: Seal) -> tuple[list[SpanData], DeadLetter | None]:
    """The spans of one Collector record, or the dead letter that says why there are none."""
    value = message.value()

    def letter(reason: Reason, text: str) -> DeadLetter:
        return dead_letter(message, reason, text, seal)

    if not value:
        return [], letter(Reason.empty, "the record has no value")
    if len(value) > MAX_RECORD_BYTES:
        return [], letter(Reason.oversized, f"{len(value)} bytes, more than {MAX_RECORD_BYTES}")
    try:
        return otlp.trace_spans(value, otlp.PROTOBUF), None
    except otlp.OtlpError as exc:
        return [], letter(Reason.undecodable, exc.message)


class TopicWorker:
    def __init__(
        self,
        settings: CollectSettings,
        kafka: KafkaSettings,
        emitter: Emitter,
        ingest: Ingest,
        metrics: CollectMetrics,
        consumer: Any | None = None,
        dead_letters: Any | None = None,
        seal: Seal | None = None,
    ) -> None:
        self.settings = settings
        self.seal = seal or Seal.configured()
        self.emitter = emitter
        self.ingest = ingest
        self.metrics = metrics
        self.dlq_topic = f"{kafka.topic_prefix}.dlq"
        self.consumer = consumer or confluent_kafka.Consumer(
            {
                **librdkafka_config(kafka),
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "client.id": settings.group_id,
                # A batch waits for Kafka's acknowledgements before its commit; while Kafka is away
                # that can take long, and the group should not give the partitions away meanwhile.
                "max.poll.interval.ms": 600_000,
                "fetch.max.bytes": 64 * 1024 * 1024,
            }
        )
        self.dead_letters = dead_letters or confluent_kafka.Producer(
            {
                **librdkafka_config(kafka),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "message.max.bytes": MAX_RECORD_BYTES + 64 * 1024,
            }
        )
        # Offsets of the batches Kafka acknowledged, committed without holding this loop.
        self.commits = Committer(
            self.consumer,
            Backoff(settings.commit_retry_initial_s, settings.commit_retry_max_s),
            settings.group_id,
        )
        self.batches = 0

    def run(self, stop: threading.Event) -> None:
        self.emitter.start()
        self.consumer.subscribe(
            [self.settings.topic],
            on_assign=lambda _, partitions: self.commits.assigned(partitions),
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not stop.is_set():
                messages = self.consumer.consume(num_messages=self.settings.batch_records, timeout=0.5)
                records = [m for m in messages if m.error() is None]
                for message in messages:
                    if message.error() is not None:
                        log.warning("consumer error", extra={"error": str(message.error())})
                if records:
                    self.process(records, stop)
                else:
                    self.commits.commit()  # what an earlier commit could not, once its backoff is over
        finally:
            self.commits.commit(last_chance=True)
            self.consumer.close()
            self.dead_letters.flush(10)
            self.emitter.close(timeout=10)

    def process(self, records: Sequence[Message], stop: threading.Event) -> Outcome:
        """Steps 1 to 4 for one batch of records."""
        total = Outcome()
        letters = 0
        for record in records:
            spans, letter = read_record(record, self.seal)
            if letter is None:
                outcome = self._spool(spans, stop)
                total.spans += outcome.spans
                total.events += outcome.events
                total.feedback += outcome.feedback
                total.ignored.update(outcome.ignored)
                total.rejected.update(outcome.rejected)
                if outcome.rejected:
                    reason = (
                        Reason.processing_error
                        if "processing_error" in outcome.rejected
                        else Reason.contract_violation
                    )
                    letter = dead_letter(record, reason, outcome.partial_success().message, self.seal)
            else:
                total.rejected[letter.reason.value] += 1
            if letter is not None:
                letters += 1
                self._dead_letter(letter)
        self._wait_delivered(stop)
        done: dict[tuple[str, int], int] = {}
        for record in records:
            partition = (record.topic() or "", record.partition() or 0)
            done[partition] = max(done.get(partition, 0), (record.offset() or 0) + 1)
        self.commits.done_with(done)
        self.commits.commit()
        self.batches += 1
        self.metrics.count("kafka", total)
        self.metrics.requests.labels("kafka", "committed").inc()
        if letters:
            log.warning("records dead-lettered", extra={"count": letters, "topic": self.dlq_topic})
        return total

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # Inside consume: every record consumed before it was processed, so all of it can be committed.
        self.commits.commit(last_chance=True)
        self.commits.forget(partitions)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # The session timed out (Kafka away): they may be another worker's already.
        self.commits.forget(partitions)

    def _spool(self, spans: list[SpanData], stop: threading.Event) -> Outcome:
        """Spool a record's records; while the spool is full, wait for Kafka to drain it (and retry
        with the whole record: what was taken before comes again under the same ids)."""
        while True:
            outcome = self.ingest.spans(spans)
            if not outcome.refused or stop.is_set():
                return outcome
            log.warning("spool full: waiting for Kafka", extra={"refused": outcome.refused})
            self.emitter.flush(self.settings.delivery_timeout_s)

    def _dead_letter(self, letter: DeadLetter) -> None:
        while True:
            try:
                self.dead_letters.produce(
                    self.dlq_topic,
                    value=letter.value,
                    key=letter.key,
                    headers=list(letter.headers()),
                )
                return
            except BufferError:
                self.dead_letters.poll(0.1)

    def _wait_delivered(self, stop: threading.Event) -> None:
        """Until Kafka acknowledged the SDK's records and the dead letters: never commit before."""
        while True:
            delivered = self.emitter.flush(self.settings.delivery_timeout_s)
            letters_left = self.dead_letters.flush(self.settings.delivery_timeout_s)
            if delivered and not letters_left:
                return
            log.warning(
                "Kafka has not acknowledged the batch yet; waiting before the commit",
                extra={"sdk": self.emitter.stats(), "dead_letters_left": letters_left},
            )
            if stop.is_set():
                # Not committed: the records are consumed again by the next worker, under the same ids.
                raise SystemExit("stopped with a batch not acknowledged; it will be consumed again")


def run_until_signalled(worker: TopicWorker, host: str, port: int) -> None:
    """Run the worker and its /health and /metrics server until SIGTERM or SIGINT."""
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = HealthServer(
        host,
        port,
        worker.metrics.registry,
        lambda: (True, {"status": "ok", "batches": worker.batches, "sdk": worker.emitter.stats()}),
    ).start()
    began = time.monotonic()
    try:
        worker.run(stop)
    finally:
        server.stop()
        log.info("collector topic worker stopped", extra={"ran_s": round(time.monotonic() - began)})
