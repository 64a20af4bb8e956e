"""Decode and validate: every kind of bad input is refused with its reason, good input passes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest

from onfinish.loadgen.traffic import Malformed, TrafficGenerator, TrafficProfile
from onfinish.processors.decoding import Decoder
from onfinish.schemas.contract import FEEDBACK, ONFINISH_EVENT, RecordType
from onfinish.schemas.deadletter import Reason
from onfinish.schemas.models import Feedback, OnFinishEvent
from onfinish.schemas.wire import Refused, WriterSchema

NOW = datetime(2026, 11, 23, 12, 5, tzinfo=UTC)
EVENT_ID, FEEDBACK_ID, EVOLVED_ID = 1, 2, 3


def _evolved_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(json.dumps(ONFINISH_EVENT.schema))
    schema["fields"].append({"name": "gateway", "type": ["null", "string"], "default": None})
    return schema


WRITERS = {
    EVENT_ID: WriterSchema(ONFINISH_EVENT, ONFINISH_EVENT.parsed),
    FEEDBACK_ID: WriterSchema(FEEDBACK, FEEDBACK.parsed),
    EVOLVED_ID: WriterSchema(ONFINISH_EVENT, fastavro.parse_schema(_evolved_schema())),
}
decoder = Decoder(WRITERS.get, clock=lambda: NOW)


def _event(**changes: Any) -> OnFinishEvent:
    base = OnFinishEvent(
        request_id="r",
        service="s",
        provider="openai",
        model_id="gpt-4o",
        started_at=NOW - timedelta(seconds=2),
        finished_at=NOW - timedelta(seconds=1),
        latency_ms=1000.0,
        attributes={"tier": "pro"},
    )
    return OnFinishEvent.model_construct(**{**base.__dict__, **changes})


def _framed(schema_id: int, record_type: RecordType, datum: dict[str, Any]) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + record_type.encode(datum)


def _refusal(value: bytes | None) -> Reason:
    with pytest.raises(Refused) as refused:
        decoder.decode(value)
    assert refused.value.message
    return refused.value.reason


def test_a_valid_event_and_feedback_decode_to_equal_records():
    event = _event()
    assert decoder.decode(_framed(EVENT_ID, ONFINISH_EVENT, ONFINISH_EVENT.to_datum(event))) == event
    feedback = Feedback(request_id="r", rating=1, at=NOW)
    assert decoder.decode(_framed(FEEDBACK_ID, FEEDBACK, FEEDBACK.to_datum(feedback))) == feedback


def test_a_newer_writer_schema_is_read_with_the_contract_schema():
    datum = {**ONFINISH_EVENT.to_datum(_event()), "gateway": "litellm"}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, WRITERS[EVOLVED_ID].parsed, datum)
    decoded = decoder.decode(b"\x00" + EVOLVED_ID.to_bytes(4, "big") + buffer.getvalue())
    assert isinstance(decoded, OnFinishEvent) and decoded.request_id == "r"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Reason.empty),
        (b"", Reason.empty),
        (b"\x01\x00\x00\x00\x01rest", Reason.not_confluent_framed),
        (b'{"request_id": "json"}', Reason.not_confluent_framed),
        (b"\x00\x7f\xff\xff\xf9" + b"x" * 20, Reason.unknown_schema_id),
        (b"\x00\x00\x00\x00\x01\x48abc", Reason.truncated),
        (b"\x00" + b"\x00" * (5 * 1024 * 1024), Reason.oversized),
    ],
)
def test_malformed_values_are_refused_with_their_reason(value: bytes | None, reason: Reason):
    assert _refusal(value) == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"latency_ms": -5.0}, Reason.contract_violation),
        ({"latency_ms": float("nan")}, Reason.contract_violation),
        ({"finished_at": NOW - timedelta(seconds=10)}, Reason.contract_violation),  # before started_at
        ({"prompt_tokens": -1}, Reason.contract_violation),
        ({"error_message": "x" * 20_000}, Reason.contract_violation),
        (
            {"started_at": NOW + timedelta(days=1), "finished_at": NOW + timedelta(days=1)},
            Reason.timestamp_out_of_range,
        ),
        (
            {"started_at": NOW - timedelta(days=400), "finished_at": NOW - timedelta(days=400)},
            Reason.timestamp_out_of_range,
        ),
    ],
)
def test_contract_violations_are_refused(changes: dict[str, Any], reason: Reason):
    datum = ONFINISH_EVENT.to_datum(_event(**changes))
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, ONFINISH_EVENT.parsed, datum)  # Avro itself accepts these values
    assert _refusal(b"\x00" + EVENT_ID.to_bytes(4, "big") + buffer.getvalue()) == reason


def test_ten_megabyte_strings_and_invalid_utf8_are_refused():
    huge = _framed(EVENT_ID, ONFINISH_EVENT, ONFINISH_EVENT.to_datum(_event(error_message="y" * 10_000_000)))
    assert _refusal(huge) == Reason.oversized
    good = _framed(EVENT_ID, ONFINISH_EVENT, ONFINISH_EVENT.to_datum(_event(attributes={"note": "AAAA"})))
    broken = good.replace(b"AAAA", b"\xff\xfe\xfd\xfc")
    assert _refusal(broken) == Reason.invalid_encoding


def test_trailing_bytes_after_the_record_are_refused():
    value = _framed(EVENT_ID, ONFINISH_EVENT, ONFINISH_EVENT.to_datum(_event())) + b"junk"
    assert _refusal(value) == Reason.undecodable


def test_every_malformed_record_of_the_load_generator_is_refused():
    generator = TrafficGenerator(TrafficProfile(malformed_share=0.5, feedback_share=0), seed=11)
    lenient = Decoder(WRITERS.get, clock=lambda: datetime.now(UTC) + timedelta(days=3650))
    seen: dict[str, set[Reason]] = {}
    for item in generator.items(2000):
        if isinstance(item, Malformed):
            with pytest.raises(Refused) as refused:
                lenient.decode(item.value)
            seen.setdefault(item.defect, set()).add(refused.value.reason)
    assert set(seen) == {
        "random_bytes",
        "wrong_magic_byte",
        "unknown_schema_id",
        "truncated_avro",
        "negative_latency",
        "finished_before_started",
    }
    assert seen["unknown_schema_id"] == {Reason.unknown_schema_id}
    assert seen["wrong_magic_byte"] == {Reason.not_confluent_framed}
    assert seen["truncated_avro"] <= {Reason.truncated, Reason.undecodable}
