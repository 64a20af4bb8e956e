"""The compiled encoder writes exactly what fastavro writes, and refuses what fastavro refuses."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest

from onfinish.loadgen.traffic import TrafficGenerator, TrafficProfile
from onfinish.schemas.avro_encoder import UnsupportedSchema, compile_encoder
from onfinish.schemas.contract import ALL_RECORD_TYPES, FEEDBACK, ONFINISH_EVENT, RecordType
from onfinish.schemas.models import Feedback, OnFinishEvent, Status

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _fastavro(record_type: RecordType, datum: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, record_type.parsed, datum)
    return buffer.getvalue()


@pytest.mark.parametrize("record_type", ALL_RECORD_TYPES, ids=lambda r: r.full_name)
def test_the_contract_records_are_compiled(record_type: RecordType):
    assert record_type.encode.__name__ == "encode"
    assert "def encode(r):" in record_type.encode.__source__  # type: ignore[attr-defined]


def test_byte_for_byte_equal_to_fastavro_on_generated_traffic():
    generator = TrafficGenerator(TrafficProfile(malformed_share=0, pii_share=0.2), seed=3)
    checked = 0
    for item in generator.items(2_000):  # every kind of event and feedback loadgen makes
        assert not isinstance(item, bytes)
        if isinstance(item, OnFinishEvent | Feedback):
            record_type = ONFINISH_EVENT if isinstance(item, OnFinishEvent) else FEEDBACK
            datum = record_type.to_datum(item)
            assert record_type.encode(datum) == _fastavro(record_type, datum)
            checked += 1
    assert checked > 1_900


EDGE_CASES: list[dict[str, Any]] = [
    {},  # every optional field null, every default
    {"attributes": {f"k{i}": "v" * i for i in range(64)}, "safety_flags": ["a", "b", "ü"]},
    {"error_message": "naïve ☃ 日本語 " * 50, "status": Status.error, "http_status": 599, "rating": -1},
    {"prompt_tokens": 10_000_000, "completion_tokens": 0, "cached_tokens": 10_000_000, "latency_ms": 0.0},
    {"latency_ms": 1e308, "ttft_ms": 5e-324, "reported_cost_usd": 0.1 + 0.2, "safety_score": 1.0},
    {
        "started_at": datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        "finished_at": datetime(1970, 1, 1, tzinfo=UTC),
        "latency_ms": 0.001,
        "ttft_ms": None,
    },
    {"prompt_chars": 2**31 - 1, "completion_chars": 63, "retry_count": 64, "stream_chunks": 8191},
    {"session_id": "", "trace_id": "x" * 256, "streamed": True, "regenerated": True, "edited": True},
]


@pytest.mark.parametrize("changes", EDGE_CASES)
def test_byte_for_byte_equal_to_fastavro_on_edge_cases(changes: dict[str, Any]):
    base: dict[str, Any] = {
        "request_id": "r",
        "service": "s",
        "provider": "p",
        "model_id": "m",
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=1),
        "latency_ms": 1000.0,
    }
    event = OnFinishEvent.model_construct(**{**OnFinishEvent(**base).__dict__, **changes})
    datum = ONFINISH_EVENT.to_datum(event)
    assert ONFINISH_EVENT.encode(datum) == _fastavro(ONFINISH_EVENT, datum)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt_chars", 2**31),
        ("latency_ms", "fast"),
        ("status", "exploded"),
        ("streamed", 1),
        ("service", 7),
    ],
)
def test_values_of_the_wrong_type_or_range_raise(field: str, value: Any):
    datum = ONFINISH_EVENT.to_datum(
        OnFinishEvent(
            request_id="r",
            service="s",
            provider="p",
            model_id="m",
            started_at=T0,
            finished_at=T0,
            latency_ms=0.0,
        )
    )
    datum[field] = value
    with pytest.raises((ValueError, TypeError, KeyError, AttributeError)):
        ONFINISH_EVENT.encode(datum)


def test_constructs_it_does_not_handle_are_left_to_fastavro():
    nested = {
        "type": "record",
        "name": "N",
        "fields": [{"name": "inner", "type": {"type": "record", "name": "I", "fields": []}}],
    }
    with pytest.raises(UnsupportedSchema):
        compile_encoder(nested)
    with pytest.raises(UnsupportedSchema):
        compile_encoder({"type": "record", "name": "U", "fields": [{"name": "u", "type": ["int", "string"]}]})


def test_the_processors_records_encode_as_fastavro_does():
    from onfinish.schemas.contract import ALERT, SESSION_SNAPSHOT, WINDOW_SNAPSHOT
    from onfinish.schemas.models import Alert, SessionSnapshot, WindowSnapshot

    window = WindowSnapshot(
        window_id="w",
        version=2**40,
        raw_partition=3,
        window_start=T0,
        window_end=T0 + timedelta(minutes=1),
        provider="openai",
        model_id="gpt-4o",
        environment="production",
        status="success",
        events=10,
        errors=1,
        prompt_tokens=5000,
        completion_tokens=700,
        cached_tokens=1024,
        reasoning_tokens=0,
        cost_usd=0.0123,
        cache_hits=1,
        fallbacks=0,
        tool_use=2,
        streamed=7,
        quality_sum=8.5,
        latency_count=10,
        latency_sum_ms=9000.0,
        latency_min_ms=120.0,
        latency_max_ms=4000.0,
        latency_buckets=[0, 150, 392],
        latency_counts=[1, 2**33, 7],
        ttft_count=7,
        ttft_sum_ms=700.0,
        emitted_at=T0,
    )
    session = SessionSnapshot(
        session_id="s",
        version=9,
        raw_partition=0,
        service="chat",
        environment="production",
        first_at=T0,
        last_at=T0 + timedelta(seconds=30),
        duration_ms=30000.0,
        turns=3,
        prompt_tokens=1,
        completion_tokens=2,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_usd=0.5,
        errors=0,
        regenerations=1,
        edits=0,
        models=["gpt-4o", "o3-mini"],
        quality_mean=0.75,
        emitted_at=T0,
    )
    alert = Alert(
        alert_id="a",
        rule="ttft_high",
        rules_version=1,
        severity="warning",
        subject_kind="request",
        subject="req-1",
        observed=2100.0,
        threshold=1500.0,
        at=T0,
        message="TTFT 2100 ms",
        raw_partition=5,
    )
    for record_type, record in ((WINDOW_SNAPSHOT, window), (SESSION_SNAPSHOT, session), (ALERT, alert)):
        datum = record_type.to_datum(record)
        assert record_type.encode(datum) == _fastavro(record_type, datum)
