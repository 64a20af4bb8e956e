"""`onfinish tail`: the records of one of the pipeline's topics, decoded, as JSON-safe dicts.

Reading a topic never joins a consumer group that matters: `tail` assigns the partitions itself
under a throwaway group id and commits nothing. Values are unframed and decoded through the one
wire module (onfinish/schemas/wire.py) with each writer schema fetched once from the registry.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from onfinish.errors import ConfigurationError, OnfinishError
from onfinish.query.results import JsonValue, json_safe
from onfinish.schemas.deadletter import DeadLetter
from onfinish.schemas.wire import (
    Refused,
    RegistryUnavailable,
    WriterSchema,
    WriterSchemas,
    read_body,
    registry_client,
    schema_id_of,
    schema_text_fetch,
)
from onfinish.settings import KafkaSettings, RegistrySettings

log = logging.getLogger(__name__)

PIPELINE_TOPICS = ("raw", "enriched", "windows", "sessions", "alerts", "dlq")
# librdkafka logs a refused connection at level 3; these tools report it once, themselves.
QUIET_LOG_LEVEL = 2


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


# Returns the writer schema of an id, None when the registry does not know it; raises
# RegistryUnavailable when the registry cannot be asked.
SchemaLookup = Callable[[int], WriterSchema | None]


def registry_schemas(registry: RegistrySettings) -> SchemaLookup:
    """Writer schemas from the registry, each fetched once; an outage is an InspectError that says where."""
    lookup = WriterSchemas(schema_text_fetch(registry_client(registry)))

    def writer(schema_id: int) -> WriterSchema | None:
        try:
            return lookup(schema_id)
        except RegistryUnavailable as exc:
            raise InspectError(f"the schema registry at {registry.url} did not answer: {exc}") from exc

    return writer


class ValueDecoder:
    """Confluent-framed Avro values into JSON-safe dicts, with each writer schema fetched once by id."""

    def __init__(self, lookup: SchemaLookup) -> None:
        self._lookup = lookup

    def decode(self, value: bytes | None) -> dict[str, JsonValue]:
        """The value's fields, or {"undecodable": reason, "bytes": n} when it cannot be read."""
        try:
            schema_id = schema_id_of(value)
            assert value is not None  # schema_id_of refuses an empty value
            writer = self._lookup(schema_id)
            if writer is None:
                return self._undecodable(f"schema id {schema_id} is unknown to the registry", value)
            datum = read_body(value, writer.parsed, None, schema_id)
        except Refused as refused:
            return self._undecodable(refused.message, value)
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
            "log_level": QUIET_LOG_LEVEL,
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
