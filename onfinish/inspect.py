"""Debugging and ops helpers: read a topic, look into the dead letters, replay them, check the pipeline.

These are the edges behind `onfinish tail`, `onfinish dlq` and `onfinish status`; the CLI renders
what they return. Reading a topic never joins a consumer group that matters: `tail` assigns the
partitions itself under a throwaway group id and commits nothing. Dead letters are read from the
`dlq` table (with FINAL) through a `Querier` (onfinish/analytics.py), not from the topic, because
the table is where they are kept for as long as anyone needs them.

Dead letters may hold personal data: their values are shown as base64 and only when asked.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import fastavro
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from onfinish.analytics import Querier, records, seconds_of, sql_string, timestamp
from onfinish.errors import ConfigurationError, OnfinishError
from onfinish.processors.settings import ProcessorSettings
from onfinish.schemas.deadletter import DeadLetter, Reason
from onfinish.settings import KafkaSettings, RegistrySettings, StackSettings
from onfinish.sinks.query import JsonValue, json_safe
from onfinish.sinks.settings import FAMILIES, SinkSettings
from onfinish.stack.component import ComponentStatus

log = logging.getLogger(__name__)

PIPELINE_TOPICS = ("raw", "enriched", "windows", "sessions", "alerts", "dlq")
REPLAYED_HEADER = ("onfinish.replayed", b"1")
"""Marks a record `onfinish dlq replay` sent back, so it can be told apart from the original."""
MAX_PROCESSOR_WORKERS = 8
"""`status` probes the processors' web ports from ONFINISH_PROCESSOR_WEB_PORT up to this many."""
REPLAY_PAGE = 1000
"""Dead letters read per query while replaying (each carries its whole value)."""
PROBE_TIMEOUT_S = 2.0
"""How long `status` waits for a worker's /health or /metrics."""
STATUS_TIMEOUT_S = 3.0
"""How long `status` waits for each Kafka request (metadata, group offsets, watermarks)."""
# librdkafka logs a refused connection at level 3; these tools report it once, themselves.
_QUIET = 2


class InspectError(OnfinishError):
    """A topic, the registry or Kafka could not be read, or a replay was not acknowledged."""


# --- Reading a topic ------------------------------------------------------------------------------


def topic_name(kafka: KafkaSettings, name: str) -> str:
    """The full name of one of the pipeline's topics, given as `raw` or as `onfinish.raw`."""
    short = name.removeprefix(f"{kafka.topic_prefix}.")
    if short not in PIPELINE_TOPICS:
        choices = ", ".join(PIPELINE_TOPICS)
        raise ConfigurationError(f"{name!r} is not a topic of the pipeline; choose from {choices}")
    return f"{kafka.topic_prefix}.{short}"


def parse_filters(filters: list[str]) -> list[tuple[str, str]]:
    """`field=value` filters as pairs; the value may itself hold `=`."""
    pairs = []
    for text in filters:
        field, equals, value = text.partition("=")
        if not equals or not field.strip():
            raise ConfigurationError(f"filter {text!r} must read field=value, e.g. model_id=gpt-4o")
        pairs.append((field.strip(), value))
    return pairs


def _as_text(value: Any) -> str:
    """A field's value as a filter compares it: JSON's spelling, strings bare."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def matches(record: dict[str, Any], filters: list[tuple[str, str]]) -> bool:
    """Whether every filter's top-level field is in the record with that value, compared as text."""
    return all(field in record and _as_text(record[field]) == value for field, value in filters)


# Returns the schema text of an id, None when the registry does not know it; raises InspectError
# when the registry cannot be asked.
SchemaFetch = Callable[[int], str | None]


def registry_schemas(registry: RegistrySettings) -> SchemaFetch:
    """A schema fetch from the registry (its client caches by id)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = SchemaRegistryClient({"url": registry.url, "timeout": registry.timeout_s})

    def fetch(schema_id: int) -> str | None:
        try:
            return str(client.get_schema(schema_id).schema_str)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise InspectError(
                f"the schema registry at {registry.url} refused schema {schema_id}: {exc}"
            ) from exc
        except Exception as exc:  # the client's transport errors
            raise InspectError(f"the schema registry at {registry.url} did not answer: {exc}") from exc

    return fetch


class ValueDecoder:
    """Confluent-framed Avro values into JSON-safe dicts, with each writer schema fetched once by id."""

    def __init__(self, fetch: SchemaFetch) -> None:
        self._fetch = fetch
        self._schemas: dict[int, Any] = {}

    def decode(self, value: bytes | None) -> dict[str, JsonValue]:
        """The value's fields, or {"undecodable": reason, "bytes": n} when it cannot be read."""
        if not value:
            return self._undecodable("the record has no value", value)
        if value[0] != 0 or len(value) < 5:
            return self._undecodable(f"not Confluent-framed (first byte {value[0]:#04x})", value)
        schema_id = int.from_bytes(value[1:5], "big")
        if schema_id not in self._schemas:
            text = self._fetch(schema_id)
            self._schemas[schema_id] = None if text is None else fastavro.parse_schema(json.loads(text))
        schema = self._schemas[schema_id]
        if schema is None:
            return self._undecodable(f"schema id {schema_id} is unknown to the registry", value)
        body = io.BytesIO(value)
        body.seek(5)
        try:
            datum = fastavro.schemaless_reader(body, schema, None)
        except Exception as exc:  # fastavro raises assorted errors on garbage
            return self._undecodable(f"{type(exc).__name__} with schema {schema_id}", value)
        if body.tell() != len(value):
            return self._undecodable(f"{len(value) - body.tell()} bytes left after the record", value)
        if not isinstance(datum, dict):
            return self._undecodable("the body is not a record", value)
        return {str(name): json_safe(item) for name, item in datum.items()}

    @staticmethod
    def _undecodable(reason: str, value: bytes | None) -> dict[str, JsonValue]:
        return {"undecodable": reason, "bytes": len(value or b"")}


def dead_letter_record(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> dict[str, JsonValue]:
    """A record of the DLQ topic: its DeadLetter headers, and its key and value as base64."""
    try:
        letter = DeadLetter.from_headers(key, value, headers)
    except (KeyError, ValueError) as exc:
        return {"undecodable": f"dead-letter headers incomplete ({exc})", "bytes": len(value or b"")}
    return {
        "stage": letter.stage.value,
        "reason": letter.reason.value,
        "message": letter.message,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "key": base64.b64encode(key).decode("ascii") if key else None,
        "value": base64.b64encode(value).decode("ascii") if value else None,
        "value_bytes": len(value or b""),
    }


def _kafka_coordinates(message: Message) -> dict[str, JsonValue]:
    kind, milliseconds = message.timestamp()
    key = message.key()
    coordinates: dict[str, JsonValue] = {
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": None
        if kind == TIMESTAMP_NOT_AVAILABLE
        else datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(),
    }
    if key is None:
        coordinates["key"] = None
    else:
        try:
            coordinates["key"] = key.decode()
        except UnicodeDecodeError:
            coordinates["key_base64"] = base64.b64encode(key).decode("ascii")
    return coordinates


def _header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    """Message headers as (name, bytes) pairs, whichever shape the client gave them in."""
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    return [
        (str(name), value.encode() if isinstance(value, str) else (value or b"")) for name, value in pairs
    ]


def tail(
    kafka: KafkaSettings,
    registry: RegistrySettings,
    topic_name_or_suffix: str,
    *,
    follow: bool,
    filters: list[str],
    limit: int | None,
    decoder: ValueDecoder | None = None,
) -> Generator[dict[str, JsonValue], None, None]:
    """The records of one pipeline topic from its beginning, decoded, that pass every filter.

    Each record is its value's fields at the top level (what filters match) plus `_kafka`: topic,
    partition, offset, timestamp and key. Without `follow` it stops at the end of every partition
    as it was when reached; with it, it waits for new records until the caller stops iterating.
    """
    topic = topic_name(kafka, topic_name_or_suffix)
    wanted = parse_filters(filters)
    if limit is not None and limit < 1:
        raise ConfigurationError(f"the limit must be at least 1, not {limit}")
    is_dlq = topic == f"{kafka.topic_prefix}.dlq"
    values = decoder or ValueDecoder(registry_schemas(registry))
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            # Never used to commit: partitions are assigned, not subscribed, so no group forms.
            "group.id": f"onfinish-tail-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "log_level": _QUIET,
        }
    )
    try:
        pending = set(_assign_from_beginning(consumer, topic, kafka))
        emitted = 0
        while follow or pending:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                    continue
                if error.retriable():
                    continue
                raise InspectError(f"reading {topic} failed: {error.str()}")
            if is_dlq:
                body = dead_letter_record(message.key(), message.value(), _header_pairs(message.headers()))
            else:
                body = values.decode(message.value())
            record: dict[str, JsonValue] = {**body, "_kafka": _kafka_coordinates(message)}
            if matches(record, wanted):
                yield record
                emitted += 1
                if limit is not None and emitted >= limit:
                    return
    finally:
        consumer.close()


def _assign_from_beginning(consumer: Consumer, topic: str, kafka: KafkaSettings) -> list[int]:
    try:
        metadata = consumer.list_topics(topic, timeout=kafka.request_timeout_s)
    except KafkaException as exc:
        raise InspectError(
            f"Kafka at {kafka.bootstrap_servers} did not answer within {kafka.request_timeout_s:.0f}s: "
            f"{exc.args[0].str()}"
        ) from exc
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise InspectError(
            f"topic {topic} does not exist on {kafka.bootstrap_servers}: `onfinish topics create`"
        )
    partitions = sorted(described.partitions)
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
    return partitions


# --- Dead letters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterGroup:
    stage: str
    reason: str
    source_topic: str
    letters: int
    value_bytes: int
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True)
class DeadLetterRow:
    stage: str
    reason: str
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    value_bytes: int
    base64_chars: int
    received_at: datetime
    value_base64: str | None
    """The value's bytes as base64, only when asked for: they may hold personal data."""


def reason_of(text: str) -> Reason:
    """A dead-letter reason by its value, refused with the list of reasons when unknown."""
    try:
        return Reason(text)
    except ValueError:
        raise ConfigurationError(
            f"{text!r} is not a dead-letter reason; choose from {', '.join(r.value for r in Reason)}"
        ) from None


def dlq_list_sql(seconds: int) -> str:
    return f"""
SELECT stage, reason, source_topic, count() AS letters, sum(value_bytes) AS value_bytes_total,
    min(received_at) AS first_received, max(received_at) AS last_received
FROM dlq FINAL
WHERE received_at >= now() - toIntervalSecond({int(seconds)})
GROUP BY stage, reason, source_topic
ORDER BY letters DESC, stage, reason, source_topic
"""  # noqa: S608 - numbers only


def dlq_list(q: Querier, since: timedelta) -> list[DeadLetterGroup]:
    """Dead letters received within `since`, counted by stage, reason and source topic."""
    return [
        DeadLetterGroup(
            stage=str(row["stage"]),
            reason=str(row["reason"]),
            source_topic=str(row["source_topic"]),
            letters=int(row["letters"]),
            value_bytes=int(row["value_bytes_total"]),
            first_at=timestamp(row["first_received"]),
            last_at=timestamp(row["last_received"]),
        )
        for row in records(q.query(dlq_list_sql(seconds_of(since))))
    ]


def dlq_show_sql(reason: Reason, limit: int, include_bytes: bool) -> str:
    # Named apart from the column, so that length(value) still reads the column.
    value = "value" if include_bytes else "CAST(NULL, 'Nullable(String)')"
    return f"""
SELECT stage, reason, message, source_topic, source_partition, source_offset, value_bytes,
    length(value) AS base64_chars, received_at, {value} AS value_base64
FROM dlq FINAL
WHERE reason = {sql_string(reason.value)}
ORDER BY received_at DESC, source_topic, source_partition, source_offset
LIMIT {int(limit)}
"""  # noqa: S608 - an enumerated reason, quoted, and numbers


def dlq_show(q: Querier, reason: str, limit: int, *, include_bytes: bool = False) -> list[DeadLetterRow]:
    """The latest `limit` dead letters of `reason`; their values only with `include_bytes`."""
    if limit < 1:
        raise ConfigurationError(f"the limit must be at least 1, not {limit}")
    return [
        DeadLetterRow(
            stage=str(row["stage"]),
            reason=str(row["reason"]),
            message=str(row["message"]),
            source_topic=str(row["source_topic"]),
            source_partition=int(row["source_partition"]),
            source_offset=int(row["source_offset"]),
            value_bytes=int(row["value_bytes"]),
            base64_chars=int(row["base64_chars"]),
            received_at=timestamp(row["received_at"]),
            value_base64=None if row["value_base64"] is None else str(row["value_base64"]),
        )
        for row in records(q.query(dlq_show_sql(reason_of(reason), limit, include_bytes)))
    ]


def _replay_filter(reason: Reason, source_topic: str | None) -> str:
    # Letters whose headers lacked their origin have nowhere to go back to.
    condition = f"reason = {sql_string(reason.value)} AND source_topic != ''"
    if source_topic is not None:
        condition += f" AND source_topic = {sql_string(source_topic)}"
    return condition


def replay_count_sql(reason: Reason, source_topic: str | None) -> str:
    return f"""
SELECT uniqExact(source_topic, source_partition, source_offset) AS letters
FROM dlq FINAL
WHERE {_replay_filter(reason, source_topic)}
"""  # noqa: S608 - quoted literals only


def replay_page_sql(
    reason: Reason, source_topic: str | None, after: tuple[str, int, int] | None, page: int
) -> str:
    """One page of letters to replay, in origin order, each origin once, after the origin `after`."""
    condition = _replay_filter(reason, source_topic)
    if after is not None:
        topic, partition, offset = after
        condition += (
            f" AND (source_topic, source_partition, source_offset) > "
            f"({sql_string(topic)}, {int(partition)}, {int(offset)})"
        )
    return f"""
SELECT source_topic, source_partition, source_offset, key, value
FROM dlq FINAL
WHERE {condition}
ORDER BY source_topic, source_partition, source_offset
LIMIT 1 BY source_topic, source_partition, source_offset
LIMIT {int(page)}
"""  # noqa: S608 - quoted literals and numbers


class ReplayProducer(Protocol):
    """What replay needs of a confluent_kafka Producer."""

    def produce(
        self,
        topic: str,
        value: bytes | None = ...,
        key: bytes | None = ...,
        *,
        on_delivery: Callable[[KafkaError | None, Message[bytes, bytes]], None] | None = ...,
        headers: list[tuple[str, str | bytes | None]] | None = ...,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


def _producer(kafka: KafkaSettings) -> ReplayProducer:
    return Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "log_level": _QUIET,
        }
    )


def _bytes_or_none(text: str) -> bytes | None:
    return base64.b64decode(text) if text else None


def dlq_replay(
    kafka: KafkaSettings,
    q: Querier,
    *,
    reason: str,
    source_topic: str | None,
    dry_run: bool,
    producer: ReplayProducer | None = None,
) -> int:
    """Send the dead letters of `reason` back to the topics they came from; how many were (or would be).

    For records refused because of a bug that has since been fixed: each letter's original key and
    value bytes go back to its source topic (by key, so to the partition its siblings are on), with
    the header onfinish.replayed=1. Letters are read from the `dlq` table, each origin once. A
    replayed record that is refused again becomes a new dead letter.
    """
    wanted = reason_of(reason)
    if dry_run:
        rows = records(q.query(replay_count_sql(wanted, source_topic)))
        return int(rows[0]["letters"]) if rows else 0
    sender = producer or _producer(kafka)
    failures: list[str] = []

    def delivered(error: KafkaError | None, _: Message[bytes, bytes]) -> None:
        if error is not None:
            failures.append(error.str())

    sent = 0
    after: tuple[str, int, int] | None = None
    while True:
        page = records(q.query(replay_page_sql(wanted, source_topic, after, REPLAY_PAGE)))
        for letter in page:
            while True:
                try:
                    sender.produce(
                        str(letter["source_topic"]),
                        value=_bytes_or_none(str(letter["value"])),
                        key=_bytes_or_none(str(letter["key"])),
                        headers=[(REPLAYED_HEADER[0], REPLAYED_HEADER[1])],
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    sender.poll(0.5)
            sent += 1
            sender.poll(0)
        if len(page) < REPLAY_PAGE:
            break
        last = page[-1]
        after = (str(last["source_topic"]), int(last["source_partition"]), int(last["source_offset"]))
    unsent = sender.flush(kafka.request_timeout_s * 2)
    if unsent or failures:
        detail = f": {failures[0]}" if failures else ""
        raise InspectError(
            f"{unsent + len(failures)} of {sent} replayed records were not acknowledged by Kafka at "
            f"{kafka.bootstrap_servers}{detail}; replaying again is safe, duplicates are dropped downstream"
        )
    return sent


# --- The pipeline's health ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    name: str
    healthy: bool
    address: str
    detail: str = ""


@dataclass(frozen=True)
class GroupLag:
    group: str
    lag: int | None
    """Records not yet consumed, summed over the group's partitions; None when unknown."""
    partitions: int
    detail: str = ""


@dataclass(frozen=True)
class PipelineStatus:
    components: list[Health]
    lags: list[GroupLag]
    events_in_per_s: float | None
    """Events the processor workers processed per second, None when none answers."""
    rows_out_per_s: float | None
    """Rows the sink inserted into ClickHouse per second, None when it does not answer."""
    processor_us_per_record: dict[str, float] | None = None
    """Processor time per raw record in each pipeline stage since the workers started (µs), None
    before any record."""

    @property
    def healthy(self) -> bool:
        return all(component.healthy for component in self.components)


def _get(url: str, timeout: float = PROBE_TIMEOUT_S) -> bytes | None:
    """The body of GET `url`, None when nothing answers with 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http URLs we built
            return bytes(response.read()) if response.status == 200 else None
    except (OSError, ValueError):
        return None


def counter_total(metrics_text: str, sample: str) -> float | None:
    """The sum over labels of a Prometheus sample (e.g. `onfinish_sink_rows_total`), None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [
        s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == sample
    ]
    return sum(values) if values else None


def rate(before: float | None, after: float | None, seconds: float) -> float | None:
    """Per-second increase of a counter; a restart (counter went down) counts from zero."""
    if before is None or after is None or seconds <= 0:
        return None
    return (after - before if after >= before else after) / seconds


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - compared, not bound


def _stack_health(component: ComponentStatus) -> Health:
    if component.healthy:
        detail = f"local stack, pid {component.pid}"
    else:
        detail = "running, not answering" if component.running else "stopped: `onfinish stack up`"
    return Health(component.name, component.healthy, component.address, detail)


def _processor_workers(processors: ProcessorSettings) -> list[Health]:
    """Health of the workers on consecutive web ports, up to the first that does not answer."""
    host = _loopback(processors.web_host)
    workers: list[Health] = []
    for index in range(MAX_PROCESSOR_WORKERS):
        address = f"http://{host}:{processors.web_port + index}"
        body = _get(f"{address}/health")
        if body is None:
            if not workers:
                workers.append(Health("processor", False, address, "no worker answers: `onfinish process`"))
            break
        try:
            partitions = json.loads(body).get("partitions", [])
            detail = (
                f"partitions {','.join(map(str, partitions))}" if partitions else "no partitions assigned"
            )
        except (ValueError, AttributeError):
            detail = ""
        workers.append(Health(f"processor {index + 1}", True, address, detail))
    return workers


def _sink(sink: SinkSettings) -> Health:
    address = f"http://{_loopback(sink.web_host)}:{sink.web_port}"
    answered = _get(f"{address}/health") is not None
    return Health("sink", answered, address, "" if answered else "does not answer: `onfinish sink`")


def stage_costs(metrics_texts: list[str]) -> dict[str, float] | None:
    """µs per raw record in each processor stage, over the workers' /metrics texts (the stage
    histograms' sums over their records read), None before any record."""
    from prometheus_client.parser import text_string_to_metric_families

    from onfinish.processors.pipeline import STAGES

    seconds = dict.fromkeys(STAGES, 0.0)
    records = 0.0
    for text in metrics_texts:
        records += counter_total(text, "onfinish_processor_records_in_total") or 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "onfinish_processor_stage_seconds_sum"
                    and sample.labels.get("stage") in seconds
                ):
                    seconds[sample.labels["stage"]] += sample.value
    if not records:
        return None
    return {stage: total / records * 1e6 for stage, total in seconds.items()}


def _metrics_texts(addresses: list[str]) -> list[str]:
    """The /metrics pages of the workers at `addresses` that answer."""
    bodies = (_get(f"{address}/metrics") for address in addresses)
    return [body.decode(errors="replace") for body in bodies if body is not None]


def _counters(texts: list[str], sample: str) -> float | None:
    known = [value for text in texts if (value := counter_total(text, sample)) is not None]
    return sum(known) if known else None


def _kafka_health(kafka: KafkaSettings, admin: AdminClient, timeout: float) -> Health:
    try:
        topics = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        return Health("kafka", False, kafka.bootstrap_servers, f"does not answer: {exc.args[0].str()}")
    ours = sum(name.startswith(f"{kafka.topic_prefix}.") for name in topics)
    return Health("kafka", True, kafka.bootstrap_servers, f"{ours} {kafka.topic_prefix}.* topics")


def _registry_health(registry: RegistrySettings) -> Health:
    answered = _get(f"{registry.url.rstrip('/')}/subjects") is not None
    return Health("registry", answered, registry.url, "" if answered else "does not answer")


def consumer_groups(processors: ProcessorSettings, sink: SinkSettings) -> list[str]:
    """The pipeline's consumer groups: the processors', then one per sink family."""
    return [processors.app_id, *(f"{sink.group_prefix}-{family}" for family in FAMILIES)]


def group_lag(admin: AdminClient, consumer: Consumer, group: str, timeout: float) -> GroupLag:
    """How far a group's committed offsets are behind the partitions' ends."""
    try:
        future = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
        )[group]
        committed = future.result(timeout=timeout).topic_partitions or []
    except Exception as exc:  # KafkaException, or a timeout of the future
        return GroupLag(group, None, 0, f"offsets unknown: {exc}")
    if not committed:
        return GroupLag(group, None, 0, "no committed offsets: has it run?")
    lag = 0
    topics = set()
    for tp in committed:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=timeout
            )
        except KafkaException as exc:
            return GroupLag(group, None, len(committed), f"watermarks unknown: {exc.args[0].str()}")
        # A partition without a commit is read from its start (auto.offset.reset = earliest).
        lag += max(high - (tp.offset if tp.offset >= 0 else low), 0)
        topics.add(tp.topic)
    return GroupLag(group, lag, len(committed), ", ".join(sorted(topics)))


def status(
    kafka: KafkaSettings,
    registry: RegistrySettings,
    stack: StackSettings,
    processors: ProcessorSettings,
    sink: SinkSettings,
    *,
    interval_s: float = 1.0,
) -> PipelineStatus:
    """Every component's health, each consumer group's lag, and events/s in and rows/s out.

    With the local stack (Kafka on the stack's address) its components come from `Stack.status()`;
    otherwise Kafka and the registry are asked directly. Rates are two reads of the workers'
    counters `interval_s` apart.
    """
    timeout = min(kafka.request_timeout_s, STATUS_TIMEOUT_S)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "log_level": _QUIET})
    kafka_health = _kafka_health(kafka, admin, timeout)
    if kafka.bootstrap_servers == stack.kafka_bootstrap:
        from onfinish.stack.stack import Stack

        components = [_stack_health(s) for s in Stack(stack, kafka).status()]
    else:
        components = [kafka_health, _registry_health(registry)]
    workers = _processor_workers(processors)
    sink_health = _sink(sink)
    components += [*workers, sink_health]

    processor_addresses = [w.address for w in workers if w.healthy]
    sink_addresses = [sink_health.address] if sink_health.healthy else []
    began = time.monotonic()
    processed_before = _counters(_metrics_texts(processor_addresses), "onfinish_processor_processed_total")
    rows_before = _counters(_metrics_texts(sink_addresses), "onfinish_sink_rows_total")

    if kafka_health.healthy:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": f"onfinish-status-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "log_level": _QUIET,
            }
        )
        try:
            lags = [group_lag(admin, consumer, group, timeout) for group in consumer_groups(processors, sink)]
        finally:
            consumer.close()
    else:
        lags = [
            GroupLag(group, None, 0, "Kafka does not answer") for group in consumer_groups(processors, sink)
        ]

    time.sleep(max(interval_s - (time.monotonic() - began), 0.0))
    elapsed = time.monotonic() - began
    processor_texts = _metrics_texts(processor_addresses)  # the rate's second read and the stage costs
    processed_after = _counters(processor_texts, "onfinish_processor_processed_total")
    rows_after = _counters(_metrics_texts(sink_addresses), "onfinish_sink_rows_total")
    return PipelineStatus(
        components=components,
        lags=lags,
        events_in_per_s=rate(processed_before, processed_after, elapsed),
        rows_out_per_s=rate(rows_before, rows_after, elapsed),
        processor_us_per_record=stage_costs(processor_texts),
    )
