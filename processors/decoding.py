"""Decode and validate: the processors' first stage, from raw Kafka bytes to a contract record.

A record on `onfinish.raw` must be Confluent-framed Avro (magic byte 0, a 4-byte schema id, the
Avro body) written with a schema of the contract, decode completely, satisfy the contract's limits
(schemas/models.py) and carry plausible timestamps. Anything else raises `Refused` with an
enumerated reason (schemas/deadletter.py), which the worker turns into a dead letter; nothing here
crashes on bad input. Unframing, reading the Avro body and the registry lookup are the wire module's
(schemas/wire.py); the writer schema is looked up by id through an injected function, so this
module stays free of I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from onfinish.schemas.contract import RECORD_TYPES
from onfinish.schemas.deadletter import Reason
from onfinish.schemas.models import Feedback, OnFinishEvent
from onfinish.schemas.wire import (
    Refused,
    WriterSchema,
    describe_validation_error,
    read_body,
    schema_id_of,
)

# A record larger than the contract can produce (about 1 MB of optional content plus 64 attributes
# of 1 KiB) is refused before any decoding work.
MAX_VALUE_BYTES = 4 * 1024 * 1024


# Returns the writer schema of an id, None when the registry does not know it; raises
# RegistryUnavailable when the registry cannot be asked. `WriterSchemas` (schemas/wire.py) is the
# registry-backed lookup with its cache; tests give a dict's `get`.
SchemaLookup = Callable[[int], WriterSchema | None]


@dataclass(frozen=True)
class TimeBounds:
    """How far from now an event's finish may lie before it is refused as implausible."""

    max_future: timedelta = timedelta(minutes=5)
    max_past: timedelta = timedelta(days=7)


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
        if value is not None and len(value) > MAX_VALUE_BYTES:
            raise Refused(Reason.oversized, f"{len(value)} bytes, more than {MAX_VALUE_BYTES}")
        schema_id = schema_id_of(value)
        assert value is not None  # schema_id_of refuses an empty value
        writer = self.lookup(schema_id)
        record_type = None if writer is None else writer.record_type
        if writer is None or record_type is None or record_type not in RECORD_TYPES:
            raise Refused(Reason.unknown_schema_id, f"schema id {schema_id} is not a schema of the contract")
        datum = read_body(value, writer.parsed, record_type.parsed, schema_id)
        try:
            record = record_type.model.model_validate(datum)
        except ValidationError as exc:
            raise Refused(Reason.contract_violation, describe_validation_error(exc)) from None
        assert isinstance(record, OnFinishEvent | Feedback)
        self._check_time(record)
        return record

    def _check_time(self, record: OnFinishEvent | Feedback) -> None:
        moment = record.finished_at if isinstance(record, OnFinishEvent) else record.at
        now = self.clock()
        if moment > now + self.bounds.max_future:
            raise Refused(Reason.timestamp_out_of_range, f"{moment.isoformat()} is in the future")
        if moment < now - self.bounds.max_past:
            raise Refused(
                Reason.timestamp_out_of_range, f"{moment.isoformat()} is older than {self.bounds.max_past}"
            )
