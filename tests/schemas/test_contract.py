"""The Avro files are the source of truth: the pydantic models must agree with them field by field."""

from __future__ import annotations

import io
import json
import types
import typing
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any
from uuid import UUID

import fastavro
import pytest
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from onfinish.schemas.contract import (
    ALERT,
    ALL_RECORD_TYPES,
    FEEDBACK,
    ONFINISH_EVENT,
    RecordType,
    record_type_of,
    schema_path,
)
from onfinish.schemas.models import Feedback, OnFinishEvent, Status

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _avro_shape(avro_type: Any) -> tuple[bool, Any]:
    """(optional, base type) of an Avro field type, with named types reduced to comparable shapes."""
    if isinstance(avro_type, list):
        assert avro_type[0] == "null" and len(avro_type) == 2, f"unions are only ['null', T]: {avro_type}"
        return True, _avro_shape(avro_type[1])[1]
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if kind == "enum":
            return False, ("enum", tuple(avro_type["symbols"]))
        if kind == "array":
            return False, ("array", _avro_shape(avro_type["items"])[1])
        if kind == "map":
            return False, ("map", _avro_shape(avro_type["values"])[1])
        if "logicalType" in avro_type:
            return False, avro_type["logicalType"]
        return _avro_shape(kind)
    return False, avro_type


def _python_shape(annotation: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        for item in metadata:
            extra = getattr(item, "json_schema_extra", None)
            if isinstance(extra, dict) and "avro" in extra:
                return _python_shape(base)[0], extra["avro"]  # an int that Avro holds as a long
        return _python_shape(base)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(args) == 1
        return True, _python_shape(args[0])[1]
    if origin is list:
        return False, ("array", _python_shape(typing.get_args(annotation)[0])[1])
    if origin is dict:
        key, value = typing.get_args(annotation)
        assert _python_shape(key)[1] == "string", "Avro map keys are strings"
        return False, ("map", _python_shape(value)[1])
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return False, ("enum", tuple(member.value for member in annotation))
    simple = {
        str: "string",
        int: "int",
        float: "double",
        bool: "boolean",
        UUID: "uuid",
        datetime: "timestamp-micros",
    }
    return False, simple[annotation]


def _python_default(field: FieldInfo) -> Any:
    if field.is_required():
        return "<required>"
    if (field.json_schema_extra or {}).get("generated"):  # type: ignore[union-attr]
        return "<generated>"
    value = field.get_default(call_default_factory=True)
    return value.value if isinstance(value, Enum) else value


@pytest.mark.parametrize("record_type", ALL_RECORD_TYPES, ids=lambda r: r.full_name)
def test_model_agrees_with_avro_schema_field_by_field(record_type: RecordType):
    avro_fields = record_type.schema["fields"]
    model_fields = record_type.model.model_fields
    assert [f["name"] for f in avro_fields] == list(model_fields), "same fields, same order"
    for avro_field in avro_fields:
        name = avro_field["name"]
        field = model_fields[name]
        python_shape = _python_shape(field.annotation)
        override = (field.json_schema_extra or {}).get("avro")  # type: ignore[union-attr]
        if override:
            python_shape = (python_shape[0], override)
        assert _avro_shape(avro_field["type"]) == python_shape, name
        avro_default = avro_field.get("default", "<required>")
        python_default = _python_default(field)
        if python_default == "<generated>":
            # The model fills in what Avro requires (an id) or what the SDK knows (its version).
            assert avro_default in ("<required>", "0.0.0"), name
        else:
            assert avro_default == python_default, name
        assert avro_field.get("doc"), f"{name} has no doc in the Avro file"


def _event(**overrides: Any) -> OnFinishEvent:
    values: dict[str, Any] = {
        "request_id": "req-1",
        "session_id": "sess-1",
        "service": "chat-api",
        "provider": "openai",
        "model_id": "gpt-4o",
        "started_at": T0,
        "finished_at": T0 + timedelta(milliseconds=850),
        "latency_ms": 850.0,
        "ttft_ms": 120.0,
        "prompt_tokens": 900,
        "completion_tokens": 150,
        "cached_tokens": 512,
        "status": Status.success,
        "attributes": {"tier": "pro"},
        "safety_flags": ["none"],
    }
    values.update(overrides)
    return OnFinishEvent(**values)


def _round_trip(record_type: RecordType, record: Any) -> Any:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, record_type.parsed, record_type.to_datum(record))
    buffer.seek(0)
    datum = fastavro.schemaless_reader(buffer, record_type.parsed, record_type.parsed)
    assert isinstance(datum, dict)
    return record_type.from_datum(datum)


def test_event_survives_avro_encoding_unchanged():
    event = _event()
    assert _round_trip(ONFINISH_EVENT, event) == event


def test_feedback_survives_avro_encoding_unchanged():
    feedback = Feedback(request_id="req-1", session_id="sess-1", regenerated=True, rating=-1, at=T0)
    assert _round_trip(FEEDBACK, feedback) == feedback
    assert record_type_of(feedback) is FEEDBACK


def test_subjects_let_two_record_types_share_the_raw_topic():
    assert ONFINISH_EVENT.subject("onfinish.raw") == "onfinish.raw-io.onfinish.OnFinishEvent"
    assert FEEDBACK.subject("onfinish.raw") == "onfinish.raw-io.onfinish.Feedback"


def test_the_kafka_key_is_the_session_or_else_the_request():
    assert _event().key == "sess-1"
    assert _event(session_id=None).key == "req-1"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"latency_ms": -1.0}, "greater than or equal to 0"),
        ({"latency_ms": float("nan")}, "finite number"),
        ({"finished_at": T0 - timedelta(seconds=1)}, "finished_at is before started_at"),
        ({"started_at": datetime(2026, 11, 23, 12, 0)}, "timezone-aware"),
        ({"prompt_tokens": 10, "cached_tokens": 11}, "cached_tokens exceed prompt_tokens"),
        ({"completion_tokens": 10**9}, "less than or equal to 10000000"),
        ({"ttft_ms": 900.0}, "ttft_ms exceeds latency_ms"),
        ({"rating": 5}, "less than or equal to 1"),
        ({"status": "exploded"}, "'success', 'error', 'cancelled' or 'timeout'"),
        ({"error_message": "x" * 10_000}, "at most 8192 characters"),
        ({"attributes": {f"k{i}": "v" for i in range(100)}}, "at most 64 items"),
        ({"model_id": ""}, "at least 1 character"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
    ],
)
def test_events_that_break_the_contract_are_refused_with_a_reason(overrides: dict[str, Any], reason: str):
    with pytest.raises(ValidationError, match=reason.replace("(", r"\(")):
        _event(**overrides)


def test_timestamps_are_normalised_to_utc():
    plus_two = datetime(2026, 11, 23, 14, 0, tzinfo=UTC).astimezone(
        tz=__import__("datetime").timezone(timedelta(hours=2))
    )
    event = _event(
        started_at=plus_two, finished_at=plus_two + timedelta(seconds=1), latency_ms=1000.0, ttft_ms=None
    )
    assert event.started_at.tzinfo == UTC and event.started_at.hour == 14


def test_alert_v2_and_v1_read_each_other() -> None:
    """Alert v2 adds an optional baseline: v1 records read as baseline None, v2 records by a v1 reader
    drop it (the processors and sinks of either version can meet the other's records)."""
    v1 = fastavro.parse_schema(json.loads(schema_path("alert.v1.avsc").read_text()))
    v2 = ALERT.parsed
    record = {
        "alert_id": "a1", "rule": "latency_p95_high", "rules_version": 1, "severity": "warning",
        "subject_kind": "series", "subject": "openai/gpt-4o/chat", "observed": 1600.0, "threshold": 960.0,
        "provider": "openai", "model_id": "gpt-4o", "at": 1_795_000_000_000_000, "message": "m",
        "raw_partition": 0,
    }  # fmt: skip
    old = io.BytesIO()
    fastavro.schemaless_writer(old, v1, record)
    read_new = fastavro.schemaless_reader(io.BytesIO(old.getvalue()), v1, v2)
    assert isinstance(read_new, dict) and read_new["baseline"] is None
    new = io.BytesIO()
    fastavro.schemaless_writer(new, v2, {**record, "baseline": 800.0})
    read_old = fastavro.schemaless_reader(io.BytesIO(new.getvalue()), v2, v1)
    assert isinstance(read_old, dict) and "baseline" not in read_old


def test_alert_v3_reads_v1_and_v2_records_as_facts_and_they_read_v3_records() -> None:
    """Alert v3 adds the episode fields, each optional with a default: older records read as facts,
    and readers of older versions read episode records by dropping what they do not know."""
    v3 = ALERT.parsed
    assert ALERT.file_name == "alert.v3.avsc"
    record = {
        "alert_id": "a1", "rule": "ttft_high", "rules_version": 1, "severity": "warning",
        "subject_kind": "request", "subject": "r1", "observed": 2100.0, "threshold": 1500.0,
        "provider": "openai", "model_id": "gpt-4o", "at": 1_795_000_000_000_000, "message": "m",
        "raw_partition": 3,
    }  # fmt: skip
    for old_file in ("alert.v1.avsc", "alert.v2.avsc"):
        old = fastavro.parse_schema(json.loads(schema_path(old_file).read_text()))
        written = io.BytesIO()
        fastavro.schemaless_writer(written, old, record)
        read = fastavro.schemaless_reader(io.BytesIO(written.getvalue()), old, v3)
        assert isinstance(read, dict)
        assert (read["state"], read["episode_id"], read["started_at"], read["peak"]) == (
            "fact",
            None,
            None,
            None,
        )
        episode = {**record, "baseline": None, "state": "resolved", "episode_id": "e1", "peak": 2400.0,
                   "started_at": 1_794_999_000_000_000, "ended_at": 1_795_000_000_000_000,
                   "feature_id": None, "environment": "production"}  # fmt: skip
        newer = io.BytesIO()
        fastavro.schemaless_writer(newer, v3, episode)
        back = fastavro.schemaless_reader(io.BytesIO(newer.getvalue()), v3, old)
        assert isinstance(back, dict) and "state" not in back and back["observed"] == 2100.0
