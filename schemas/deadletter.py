"""The dead-letter contract: why a record was refused, and how that travels on `onfinish.dlq`.

Any stage that cannot process a record sends the original key and value bytes, untouched, to the
DLQ topic with headers that say which stage refused it, why (an enumerated reason, never a free
string), a human message, and where the record came from. The sinks store them in ClickHouse's
`dlq` table; `onfinish dlq replay` sends fixed ones back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Stage(StrEnum):
    decode = "decode"
    validate = "validate"
    enrich = "enrich"
    redact = "redact"
    sink = "sink"
    collect = "collect"  # onfinish collect's Collector topic worker: an OTLP record it could not read


class Reason(StrEnum):
    """Why a record was dead-lettered. Stable values: analysts group by them."""

    empty = "empty"  # no value at all
    not_confluent_framed = "not_confluent_framed"  # first byte is not the magic byte 0
    unknown_schema_id = "unknown_schema_id"  # the registry does not know the id
    unknown_record_type = "unknown_record_type"  # a registered schema that is not part of the contract
    truncated = "truncated"  # the Avro body ends before the record does
    invalid_encoding = "invalid_encoding"  # bytes that are not valid UTF-8 where a string is due
    undecodable = "undecodable"  # any other Avro decoding failure
    contract_violation = "contract_violation"  # decoded, but breaks the contract's limits
    timestamp_out_of_range = "timestamp_out_of_range"  # far in the future or the past
    oversized = "oversized"  # larger than any record the contract allows
    processing_error = "processing_error"  # a stage failed on a valid record (a bug: alert on it)


class Sealer(Protocol):
    """What makes a dead letter's bytes unreadable without its key (schemas/sealing.py's Seal)."""

    def seal(self, data: bytes | None) -> bytes | None: ...


class RefusedRecord(Protocol):
    """A consumed record as the processors and sinks hold it."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass(frozen=True)
class DeadLetter:
    """A refused record and why; what goes to `onfinish.dlq`."""

    stage: Stage
    reason: Reason
    message: str
    key: bytes | None
    value: bytes | None
    source_topic: str
    source_partition: int
    source_offset: int

    @classmethod
    def sealed(
        cls,
        sealer: Sealer,
        stage: Stage,
        reason: Reason,
        message: str,
        key: bytes | None,
        value: bytes | None,
        source_topic: str,
        source_partition: int,
        source_offset: int,
    ) -> DeadLetter:
        """How every stage makes a dead letter of a refused record: its key and value sealed, as it
        came before redaction (decision 0017)."""
        return cls(
            stage,
            reason,
            message,
            sealer.seal(key),
            sealer.seal(value),
            source_topic,
            source_partition,
            source_offset,
        )

    @classmethod
    def of_record(
        cls, sealer: Sealer, stage: Stage, reason: Reason, message: str, record: RefusedRecord
    ) -> DeadLetter:
        """`sealed` for a consumed record that carries its own key, value and origin."""
        return cls.sealed(
            sealer,
            stage,
            reason,
            message,
            record.key,
            record.value,
            record.topic,
            record.partition,
            record.offset,
        )

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("onfinish.stage", self.stage.value.encode()),
            ("onfinish.reason", self.reason.value.encode()),
            ("onfinish.message", self.message[:2048].encode(errors="replace")),
            ("onfinish.source.topic", self.source_topic.encode()),
            ("onfinish.source.partition", str(self.source_partition).encode()),
            ("onfinish.source.offset", str(self.source_offset).encode()),
        ]

    @classmethod
    def from_headers(
        cls, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> DeadLetter:
        fields = {name: raw.decode(errors="replace") for name, raw in headers if name.startswith("onfinish.")}
        return cls(
            stage=Stage(fields["onfinish.stage"]),
            reason=Reason(fields["onfinish.reason"]),
            message=fields.get("onfinish.message", ""),
            key=key,
            value=value,
            source_topic=fields.get("onfinish.source.topic", ""),
            source_partition=int(fields.get("onfinish.source.partition", "-1")),
            source_offset=int(fields.get("onfinish.source.offset", "-1")),
        )
