"""The contract's record types: their Avro schema files, models, subjects and Avro datums.

Both record types share `onfinish.raw`, so subjects follow Confluent's TopicRecordNameStrategy:
`<topic>-<record full name>` (e.g. `onfinish.raw-io.onfinish.OnFinishEvent`), which lets each
type evolve under its own compatibility history on one topic.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro

from onfinish.schemas.avro_encoder import UnsupportedSchema, compile_encoder
from onfinish.schemas.models import (
    Alert,
    CostCorrection,
    EnrichedEvent,
    Feedback,
    OnFinishEvent,
    QualityUpdate,
    SessionSnapshot,
    WindowCostCorrection,
    WindowSnapshot,
    _Record,
)

COMPATIBILITY = "FULL_TRANSITIVE"
# The largest record onfinish.raw and onfinish.dlq take (the broker's default is 1 MiB). Larger than
# any record the contract allows (processors/decoding.py MAX_VALUE_BYTES, 4 MiB), so that an
# oversized record reaches the processors and is dead-lettered with its reason and its bytes instead
# of being bounced at the broker, where nobody downstream sees it; the dlq holds the same bytes.
MAX_RECORD_BYTES = 16 * 1024 * 1024
# What a dead letter adds to the refused record: its headers (stage, reason, message, origin).
DEAD_LETTER_OVERHEAD_BYTES = 64 * 1024
AvroDatum = dict[str, Any]


def schema_path(file_name: str) -> Path:
    return Path(str(resources.files("onfinish.schemas").joinpath("avro", file_name)))


@dataclass(frozen=True)
class RecordType:
    """One record of the contract: its Avro schema (the source of truth) and its pydantic model."""

    file_name: str
    model: type[_Record]
    topic_suffix: str = "raw"  # the record travels on <topic prefix>.<suffix>

    @cached_property
    def schema(self) -> dict[str, Any]:
        document = json.loads(schema_path(self.file_name).read_text())
        assert isinstance(document, dict)
        return document

    @cached_property
    def full_name(self) -> str:
        return f"{self.schema['namespace']}.{self.schema['name']}"

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        """The record's field names, in schema order."""
        return tuple(str(field["name"]) for field in self.schema["fields"])

    @cached_property
    def schema_str(self) -> str:
        """The schema as registered: compact JSON of the file."""
        return json.dumps(self.schema, separators=(",", ":"))

    @cached_property
    def parsed(self) -> Any:
        return fastavro.parse_schema(self.schema)

    @cached_property
    def encode(self) -> Callable[[AvroDatum], bytes]:
        """The Avro binary encoder of this record: compiled when it can be, else fastavro's."""
        try:
            return compile_encoder(self.schema)
        except UnsupportedSchema:
            parsed = self.parsed

            def with_fastavro(datum: AvroDatum) -> bytes:
                buffer = io.BytesIO()
                fastavro.schemaless_writer(buffer, parsed, datum)
                return buffer.getvalue()

            return with_fastavro

    def topic(self, prefix: str) -> str:
        return f"{prefix}.{self.topic_suffix}"

    def subject(self, topic: str) -> str:
        return f"{topic}-{self.full_name}"

    def to_datum(self, record: _Record) -> AvroDatum:
        """The record as an Avro datum, without pydantic's (slower) serialisation machinery.

        fastavro takes the model's values as they are: its enum writer looks str-based enums up by
        value and its uuid writer accepts UUID objects. The datum is a copy, free to change.
        """
        return dict(record.__dict__)

    def from_datum(self, datum: AvroDatum) -> _Record:
        return self.model.model_validate(datum)


ONFINISH_EVENT = RecordType("onfinish_event.v1.avsc", OnFinishEvent)
FEEDBACK = RecordType("feedback.v1.avsc", Feedback)
ENRICHED_EVENT = RecordType("enriched_event.v1.avsc", EnrichedEvent, topic_suffix="enriched")
WINDOW_SNAPSHOT = RecordType("window_snapshot.v1.avsc", WindowSnapshot, topic_suffix="windows")
SESSION_SNAPSHOT = RecordType("session_snapshot.v1.avsc", SessionSnapshot, topic_suffix="sessions")
# Version 2 added the baseline of the insights' anomalies, version 3 the episodes (state, episode_id,
# start, end, peak, series labels); alert.v1.avsc and alert.v2.avsc stay as the history it evolved from.
ALERT = RecordType("alert.v3.avsc", Alert, topic_suffix="alerts")
# Feedback that arrives after its event changes the event's score: an update next to the events.
QUALITY_UPDATE = RecordType("quality_update.v1.avsc", QualityUpdate, topic_suffix="enriched")
# What producers write to onfinish.raw; the index of a type here is its kind byte in the SDK's spool.
RECORD_TYPES: tuple[RecordType, ...] = (ONFINISH_EVENT, FEEDBACK)
# What the processors write, each on its own topic under its own subject.
PROCESSED_RECORD_TYPES: tuple[RecordType, ...] = (
    ENRICHED_EVENT,
    QUALITY_UPDATE,
    WINDOW_SNAPSHOT,
    SESSION_SNAPSHOT,
    ALERT,
)
# What `onfinish reprice` writes: corrections next to the events and windows they re-price.
COST_CORRECTION = RecordType("cost_correction.v1.avsc", CostCorrection, topic_suffix="enriched")
WINDOW_COST_CORRECTION = RecordType(
    "window_cost_correction.v1.avsc", WindowCostCorrection, topic_suffix="windows"
)
CORRECTION_RECORD_TYPES: tuple[RecordType, ...] = (COST_CORRECTION, WINDOW_COST_CORRECTION)
ALL_RECORD_TYPES: tuple[RecordType, ...] = (
    *RECORD_TYPES,
    *PROCESSED_RECORD_TYPES,
    *CORRECTION_RECORD_TYPES,
)

RECORD_TYPES_BY_NAME: dict[str, RecordType] = {
    record_type.full_name: record_type for record_type in ALL_RECORD_TYPES
}
"""Every record of the contract by its Avro full name (namespace.name), as writer schemas name it."""


def record_type_of(record: _Record) -> RecordType:
    for record_type in RECORD_TYPES:
        if isinstance(record, record_type.model):
            return record_type
    raise TypeError(f"{type(record).__name__} is not a record of the onfinish contract")
