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


class _ReadOnlyRegistry:
    """A registry a read-only principal sees: versions and their schemas, and no writes."""

    def __init__(self, versions: dict[int, tuple[int, str]], status: int | None = None) -> None:
        self.versions = versions  # version -> (schema id, schema text)
        self.status = status  # an HTTP status every read fails with, if any
        self.registered: list[str] = []

    def _fail(self) -> None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if self.status is not None:
            raise SchemaRegistryError(self.status, self.status * 100, "refused")

    def get_versions(self, subject: str) -> list[int]:
        self._fail()
        if not self.versions:
            from confluent_kafka.schema_registry.error import SchemaRegistryError

            raise SchemaRegistryError(404, 40401, "Subject not found")
        return list(self.versions)

    def get_version(self, subject: str, version: int) -> Any:
        from confluent_kafka.schema_registry import RegisteredSchema, Schema

        schema_id, text = self.versions[version]
        return RegisteredSchema(subject, version, schema_id, None, Schema(text, "AVRO"))

    def register_schema(self, subject: str, schema: Any) -> int:
        self.registered.append(subject)
        return 99


def test_a_read_only_principal_finds_its_schema_id_without_writing() -> None:
    other = json.dumps(PROBE)
    # The registry may keep the text in another key order or spacing: the same schema all the same.
    respelled = json.dumps(json.loads(ONFINISH_EVENT.schema_str), indent=1, sort_keys=True)
    registry = _ReadOnlyRegistry({1: (7, respelled), 2: (8, other)})
    found = wire.schema_id_for(registry, ONFINISH_EVENT, "s-value", auto_register=False)  # type: ignore[arg-type]
    assert found == 7 and registry.registered == []
    assert wire.schema_id_for(registry, ONFINISH_EVENT, "s-value", auto_register=True) == 99  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("registry", "error", "says"),
    [
        (_ReadOnlyRegistry({}), wire.SchemaRefused, "onfinish schema register"),
        (_ReadOnlyRegistry({1: (8, json.dumps(PROBE))}), wire.SchemaRefused, "auto-registration is off"),
        (_ReadOnlyRegistry({1: (8, "{}")}, status=403), wire.RegistryAccessDenied, "read rights"),
        (_ReadOnlyRegistry({1: (8, "{}")}, status=503), wire.RegistryUnavailable, "reading s-value"),
    ],
)
def test_a_schema_a_read_only_principal_cannot_find_says_what_to_do(
    registry: _ReadOnlyRegistry, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=re.escape(says)):
        wire.registered_id(registry, ONFINISH_EVENT, "s-value")  # type: ignore[arg-type]
