"""Turning what a caller handed off into spool records: validate, strip content, Avro-encode.

Runs on the SDK's worker thread, never the caller's. The value is the Avro binary encoding of the
record against the contract's own schema (schemas/avro_encoder.py); the worker frames it
in the Confluent wire format (magic byte and schema id) only when it produces, so the spool never
depends on the registry being reachable.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from onfinish.errors import describe_exception
from onfinish.schemas.contract import RECORD_TYPES, RecordType
from onfinish.schemas.models import Feedback, OnFinishEvent, _Record
from onfinish.schemas.wire import describe_validation_error


class RejectedEvent(Exception):
    """The caller handed off something that is not a valid record of the contract."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Encoder:
    """Validates and encodes records; the kind byte in the spool is the record type's index."""

    def __init__(self, *, capture_content: bool) -> None:
        self.capture_content = capture_content
        self._kinds = {record_type.model: index for index, record_type in enumerate(RECORD_TYPES)}

    @staticmethod
    def record_type(kind: int) -> RecordType:
        return RECORD_TYPES[kind]

    def validate(self, item: Any) -> _Record:
        if isinstance(item, OnFinishEvent | Feedback):
            return item
        if isinstance(item, dict):
            model = (
                Feedback
                if "feedback_id" in item or ("at" in item and "service" not in item)
                else OnFinishEvent
            )
            try:
                return model.model_validate(item)
            except ValidationError as exc:
                raise RejectedEvent(f"{model.__name__} invalid: {describe_validation_error(exc)}") from None
        raise RejectedEvent(f"not an onfinish record: {type(item).__name__}")

    def encode(self, item: Any) -> tuple[int, bytes, bytes]:
        """(kind, key, Avro body) of one handed-off item, or RejectedEvent, whatever the item does."""
        try:
            return self._encode(item)
        except RejectedEvent:
            raise
        except Exception as exc:  # it must not end the SDK's worker: a bug, an item that misbehaves,
            # or a model changed after validation (models do not re-validate on assignment)
            raise RejectedEvent(
                f"{type(item).__name__} cannot be encoded: {describe_exception(exc)}"
            ) from None

    def _encode(self, item: Any) -> tuple[int, bytes, bytes]:
        record = self.validate(item)
        kind = self._kinds[type(record)]
        record_type = RECORD_TYPES[kind]
        datum = record_type.to_datum(record)
        if not self.capture_content and kind == 0:
            datum["prompt_text"] = datum["completion_text"] = None
        value = record_type.encode(datum)
        key = record.key  # type: ignore[attr-defined]
        return kind, key.encode(), value
