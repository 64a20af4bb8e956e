"""The wire module: Confluent framing both ways, body reading, writer schemas by id, PII-safe errors."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry.serde import SchemaId
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from onfinish.schemas import wire
from onfinish.schemas.contract import ENRICHED_EVENT, FEEDBACK, ONFINISH_EVENT
from onfinish.schemas.deadletter import Reason
from onfinish.schemas.models import OnFinishEvent
from onfinish.settings import RegistrySettings
from tests.conftest import REPO


@given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=64))
def test_framing_is_what_confluent_writes_and_reads(schema_id: int, body: bytes) -> None:
    framed = wire.frame(schema_id, body)
    assert framed[: wire.HEADER_BYTES] == SchemaId("AVRO", schema_id).id_to_bytes()
    assert wire.schema_id_of(framed) == schema_id
    theirs = SchemaId("AVRO")
    rest = theirs.from_bytes(io.BytesIO(framed))
    assert theirs.id == schema_id and rest.read() == body
    assert wire.framing_of(framed) == framed[:5]


@pytest.mark.parametrize(
    ("value", "reason", "message"),
    [
        (None, Reason.empty, "the record has no value"),
        (b"", Reason.empty, "the record has no value"),
        (b"{}", Reason.not_confluent_framed, "first byte 0x7b, expected the magic byte 0x00"),
        (b"\x00\x00\x01", Reason.not_confluent_framed, "3 bytes, shorter than the header"),
        (b"\x01" + bytes(16) + b"body", Reason.not_confluent_framed, "schema GUID"),
    ],
)
def test_values_that_are_not_id_framed_are_refused_with_their_reason(
    value: bytes | None, reason: Reason, message: str
) -> None:
    with pytest.raises(wire.Refused) as refused:
        wire.schema_id_of(value)
    assert refused.value.reason is reason
    assert message in refused.value.message
    assert wire.framing_of(value) is None


def _body(schema: Any, datum: dict[str, object]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    return out.getvalue()


PROBE = {"type": "record", "name": "P", "namespace": "t", "fields": [{"name": "s", "type": "string"}]}


def test_a_body_is_read_whole_and_every_failure_has_its_reason() -> None:
    parsed = fastavro.parse_schema(PROBE)
    framed = wire.frame(3, _body(PROBE, {"s": "héllo"}))
    assert wire.read_body(framed, parsed, None, 3) == {"s": "héllo"}
    cases = {
        Reason.truncated: framed[:-2],
        Reason.undecodable: framed + b"\x00",
        Reason.invalid_encoding: wire.frame(3, b"\x04\xff\xfe"),
    }
    for reason, value in cases.items():
        with pytest.raises(wire.Refused) as refused:
            wire.read_body(value, parsed, None, 3)
        assert refused.value.reason is reason, value


def test_writer_schemas_are_fetched_once_and_an_outage_is_not_remembered() -> None:
    asked: list[int] = []
    outage = True

    def fetch(schema_id: int) -> str | None:
        asked.append(schema_id)
        if outage:
            raise wire.RegistryUnavailable("away")
        return {1: ONFINISH_EVENT.schema_str, 2: json.dumps(PROBE)}.get(schema_id)

    writers = wire.WriterSchemas(fetch)
    with pytest.raises(wire.RegistryUnavailable):
        writers(1)
    outage = False
    first = writers(1)
    assert first is not None and first.record_type is ONFINISH_EVENT
    assert writers(1) is first
    other = writers(2)
    assert other is not None and other.record_type is None  # registered, but not the contract's
    assert writers(9) is None and writers(9) is None
    assert asked == [1, 1, 2, 9]


def test_validation_errors_name_the_place_never_the_value() -> None:
    secret = "alice@example.com sk-live-1234567890"
    with pytest.raises(ValidationError) as error:
        OnFinishEvent.model_validate({"request_id": secret, "latency_ms": -5, "service": secret})
    text = wire.describe_validation_error(error.value)
    assert "latency_ms" in text
    assert secret not in text and "alice" not in text


def test_the_registry_client_is_configured_from_the_settings_alone() -> None:
    settings = RegistrySettings(url="http://127.0.0.1:1", timeout_s=9)
    assert wire.registry_client(settings)._rest_client.timeout == 9
    quick = wire.registry_client(settings, quick=True)._rest_client
    assert quick.timeout == wire.QUICK_TIMEOUT_S and quick.max_retries == 0


def test_every_record_type_of_the_contract_is_known_by_its_full_name() -> None:
    for record_type in (ONFINISH_EVENT, FEEDBACK, ENRICHED_EVENT):
        text: str = record_type.schema_str

        def fetch(_: int, text: str = text) -> str | None:
            return text

        writers = wire.WriterSchemas(fetch)
        found = writers(1)
        assert found is not None and found.record_type is record_type


# The header is sliced, written or read in the wire module only: no other production module does it.
_FRAMING_BY_HAND = re.compile(r"\[1:5\]|\[:5\]|to_bytes\(4|from_bytes\(|b\"\\x00\" \+")
_PRODUCTION = ("onfinish", "producers", "processors", "schemas", "sinks", "bench")


def test_no_module_but_the_wire_module_frames_by_hand() -> None:
    stages = {Path("onfinish", stage) for stage in ("producers", "processors", "schemas", "sinks")}
    offenders = []
    for folder in _PRODUCTION:
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO)
            if Path(*relative.parts[:2]) in stages or relative == Path("schemas", "wire.py"):
                continue  # the stages are checked in their own folders; the wire module may
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if _FRAMING_BY_HAND.search(line):
                    offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "frame with onfinish.schemas.wire instead:\n" + "\n".join(offenders)
