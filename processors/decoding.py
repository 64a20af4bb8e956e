"""Decode and validate: the processors' first stage, from raw Kafka bytes to a contract record.

A record on `onfinish.raw` must be Confluent-framed Avro (magic byte 0, a 4-byte schema id, the
Avro body) written with a schema of the contract, decode completely, satisfy the contract's limits
(schemas/models.py) and carry plausible timestamps. Anything else raises `Refused` with an
enumerated reason (schemas/deadletter.py), which the worker turns into a dead letter; nothing here
crashes on bad input. The writer schema is looked up by id through an injected function, so this
module stays free of I/O; `RegistrySchemas` is the registry-backed lookup with a cache.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
from pydantic import ValidationError

from onfinish.errors import OnfinishError
from onfinish.schemas.contract import RECORD_TYPES, RecordType
from onfinish.schemas.deadletter import Reason
from onfinish.schemas.models import Feedback, OnFinishEvent

# A record larger than the contract can produce (about 1 MB of optional content plus 64 attributes
# of 1 KiB) is refused before any decoding work.
MAX_VALUE_BYTES = 4 * 1024 * 1024


class Refused(Exception):  # a verdict on a record, not a failure of the stage
    """The record cannot enter the pipeline; `reason` says why."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


class RegistryUnavailable(OnfinishError):
    """The registry could not be asked: not the record's fault, so the record must wait, not die."""


class SchemaRefused(OnfinishError):
    """The registry refused an output's schema (an incompatible schema holds its subject): not the
    record's fault either, and no wait mends it; the worker stops until an operator does."""


@dataclass(frozen=True)
class WriterSchema:
    """A registered schema a producer wrote with, and the contract record type it belongs to.

    `text` is the schema as registered, what the native engine plans its reads from; without it the
    native engine reads only records written with the contract's own schema (`parsed` being the
    record type's), and hands the others to this module.
    """

    record_type: RecordType
    parsed: Any
    text: str | None = None

    @property
    def schema_text(self) -> str | None:
        if self.text is not None:
            return self.text
        return self.record_type.schema_str if self.parsed is self.record_type.parsed else None


# Returns the writer schema of an id, None when the registry does not know it (or it is not a
# record of the contract), and raises RegistryUnavailable when the registry cannot be asked.
SchemaLookup = Callable[[int], WriterSchema | None]


def _record_type_named(full_name: str) -> RecordType | None:
    return next((r for r in RECORD_TYPES if r.full_name == full_name), None)


class RegistrySchemas:
    """Writer schemas by id from the registry, each fetched once."""

    def __init__(self, fetch_schema_str: Callable[[int], str | None]) -> None:
        # fetch_schema_str returns the schema text, None for an unknown id, or raises for an outage.
        self._fetch = fetch_schema_str
        self._cache: dict[int, WriterSchema | None] = {}

    def __call__(self, schema_id: int) -> WriterSchema | None:
        if schema_id in self._cache:
            return self._cache[schema_id]
        text = self._fetch(schema_id)
        writer: WriterSchema | None = None
        if text is not None:
            document = json.loads(text)
            if isinstance(document, dict):
                record_type = _record_type_named(
                    f"{document.get('namespace', '')}.{document.get('name', '')}"
                )
                if record_type is not None:
                    writer = WriterSchema(record_type, fastavro.parse_schema(document), text)
        self._cache[schema_id] = writer
        return writer


@dataclass(frozen=True)
class TimeBounds:
    """How far from now an event's finish may lie before it is refused as implausible."""

    max_future: timedelta = timedelta(minutes=5)
    max_past: timedelta = timedelta(days=7)


def unframe(value: bytes) -> int:
    """The schema id of a Confluent-framed value: magic byte 0, then the id in 4 bytes, big-endian.

    The one place the processors read the raw topic's framing (the native engine's Rust does the
    same for the records it reads). Refused when the value is not framed.
    """
    if value[0] != 0 or len(value) < 5:
        raise Refused(
            Reason.not_confluent_framed, f"first byte {value[0]:#04x}, expected the magic byte 0x00"
        )
    return int.from_bytes(value[1:5], "big")


def _describe(error: ValidationError) -> str:
    # Locations and messages only: values may be PII and dead-letter messages are shown to people.
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in error.errors(include_input=False)
    )[:1000]


class Decoder:
    """Turns raw values into validated OnFinishEvent or Feedback records, or refuses them."""

    def __init__(
        self,
        lookup: SchemaLookup,
        *,
        bounds: TimeBounds | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.lookup = lookup
        self.bounds = bounds or TimeBounds()
        self.clock = clock

    def decode(self, value: bytes | None) -> OnFinishEvent | Feedback:
        if not value:
            raise Refused(Reason.empty, "the record has no value")
        if len(value) > MAX_VALUE_BYTES:
            raise Refused(Reason.oversized, f"{len(value)} bytes, more than {MAX_VALUE_BYTES}")
        schema_id = unframe(value)
        writer = self.lookup(schema_id)
        if writer is None:
            raise Refused(Reason.unknown_schema_id, f"schema id {schema_id} is not a schema of the contract")
        datum = self._read(writer, value, schema_id)
        record_type = writer.record_type
        try:
            record = record_type.model.model_validate(datum)
        except ValidationError as exc:
            raise Refused(Reason.contract_violation, _describe(exc)) from None
        assert isinstance(record, OnFinishEvent | Feedback)
        self._check_time(record)
        return record

    @staticmethod
    def _read(writer: WriterSchema, value: bytes, schema_id: int) -> dict[str, Any]:
        body = io.BytesIO(value)
        body.seek(5)
        try:
            datum = fastavro.schemaless_reader(body, writer.parsed, writer.record_type.parsed)
        except UnicodeDecodeError as exc:
            raise Refused(Reason.invalid_encoding, f"invalid UTF-8 in a string: {exc.reason}") from None
        except (EOFError, StopIteration, IndexError) as exc:
            raise Refused(Reason.truncated, f"the body ends early ({type(exc).__name__})") from None
        except Exception as exc:  # fastavro raises assorted errors on garbage; all mean "not decodable"
            raise Refused(Reason.undecodable, f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if body.tell() != len(value):
            raise Refused(
                Reason.undecodable,
                f"{len(value) - body.tell()} bytes left after the record (schema {schema_id})",
            )
        if not isinstance(datum, dict):
            raise Refused(Reason.undecodable, "the body is not a record")
        return datum

    def _check_time(self, record: OnFinishEvent | Feedback) -> None:
        moment = record.finished_at if isinstance(record, OnFinishEvent) else record.at
        now = self.clock()
        if moment > now + self.bounds.max_future:
            raise Refused(Reason.timestamp_out_of_range, f"{moment.isoformat()} is in the future")
        if moment < now - self.bounds.max_past:
            raise Refused(
                Reason.timestamp_out_of_range, f"{moment.isoformat()} is older than {self.bounds.max_past}"
            )
