"""The real schema registry through confluent-kafka's client: register, compatibility, fetch by id."""

from __future__ import annotations

import json

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from onfinish.settings import RegistrySettings


def _record(*fields: dict[str, object]) -> Schema:
    return Schema(
        json.dumps({"type": "record", "name": "Probe", "namespace": "test", "fields": list(fields)}), "AVRO"
    )


V1 = _record({"name": "id", "type": "string"})
V2_OPTIONAL_FIELD = _record(
    {"name": "id", "type": "string"}, {"name": "note", "type": ["null", "string"], "default": None}
)
V2_TYPE_CHANGED = _record({"name": "id", "type": "long"})
V2_FIELD_REMOVED = _record({"name": "other", "type": ["null", "string"], "default": None})


@pytest.fixture
def client(registry_settings: RegistrySettings) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry_settings.url})


def test_register_is_idempotent_and_fetch_by_id_returns_the_schema(client: SchemaRegistryClient, unique: str):
    subject = f"{unique}-value"
    schema_id = client.register_schema(subject, V1)
    assert client.register_schema(subject, V1) == schema_id
    fetched = client.get_schema(schema_id)
    assert json.loads(str(fetched.schema_str)) == json.loads(str(V1.schema_str))
    latest = client.get_latest_version(subject)
    assert (latest.schema_id, latest.version) == (schema_id, 1)


def test_full_transitive_allows_optional_field_and_refuses_breaking_changes(
    client: SchemaRegistryClient, unique: str
):
    subject = f"{unique}-value"
    client.register_schema(subject, V1)
    client.set_compatibility(subject, "FULL_TRANSITIVE")
    assert client.get_compatibility(subject) == "FULL_TRANSITIVE"
    assert client.test_compatibility(subject, V2_OPTIONAL_FIELD) is True
    assert client.test_compatibility(subject, V2_TYPE_CHANGED) is False
    assert client.test_compatibility(subject, V2_FIELD_REMOVED) is False
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, V2_TYPE_CHANGED)
    assert refused.value.http_status_code == 409
    assert client.register_schema(subject, V2_OPTIONAL_FIELD) > 0
    assert client.get_versions(subject) == [1, 2]


def test_unknown_schema_id_is_a_clear_404(client: SchemaRegistryClient):
    with pytest.raises(SchemaRegistryError) as missing:
        client.get_schema(987654321)
    assert missing.value.http_status_code == 404
