"""Schema governance against the registry: register the contract, and check a change before it ships.

`register` puts each record type's schema on its subject and sets FULL_TRANSITIVE (many independent
producers, few consumers: every version must be readable by and able to read every other one).
`check` asks the registry whether a changed schema file is compatible with every registered version
of its subject, and returns the registry's own reasons when it is not.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from onfinish.errors import OnfinishError
from onfinish.schemas.contract import ALL_RECORD_TYPES, COMPATIBILITY, RecordType
from onfinish.schemas.wire import registry_client
from onfinish.settings import RegistrySettings


class SchemaGovernanceError(OnfinishError):
    """The registry could not be asked, or refused what was asked."""


@dataclass(frozen=True)
class Registration:
    subject: str
    schema_id: int
    version: int
    compatibility: str


@dataclass
class CheckResult:
    subject: str
    schema_file: Path
    versions_checked: list[int] = field(default_factory=list)
    incompatible: dict[int, list[str]] = field(default_factory=dict)
    compatibility: str = ""

    @property
    def compatible(self) -> bool:
        return not self.incompatible


def _client(settings: RegistrySettings) -> SchemaRegistryClient:
    return registry_client(settings)


@contextmanager
def _asking(settings: RegistrySettings, what: str) -> Iterator[None]:
    """Turn the registry client's errors, including transport ones, into one clear error."""
    try:
        yield
    except SchemaRegistryError:
        raise
    except Exception as exc:  # the client raises its HTTP library's own transport errors
        raise SchemaGovernanceError(
            f"{what}: the registry at {settings.url} cannot be reached ({exc})"
        ) from exc


def register(
    settings: RegistrySettings, topic_prefix: str, record_types: tuple[RecordType, ...] = ALL_RECORD_TYPES
) -> list[Registration]:
    """Register every record type on its topic (<prefix>.raw, <prefix>.enriched) under FULL_TRANSITIVE."""
    client = _client(settings)
    registrations = []
    for record_type in record_types:
        subject = record_type.subject(record_type.topic(topic_prefix))
        try:
            with _asking(settings, f"registering {subject}"):
                # Set the level first, so even the first version is governed by it.
                client.set_compatibility(subject, COMPATIBILITY)
                schema_id = client.register_schema(subject, Schema(record_type.schema_str, "AVRO"))
                version = client.lookup_schema(subject, Schema(record_type.schema_str, "AVRO")).version
        except SchemaRegistryError as exc:
            raise SchemaGovernanceError(f"registering {subject} failed: {exc.error_message}") from exc
        registrations.append(Registration(subject, schema_id, int(version or 0), COMPATIBILITY))
    return registrations


def _post(settings: RegistrySettings, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - the URL is the configured registry
        settings.url.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:  # noqa: S310
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise SchemaGovernanceError(f"the registry answered {exc.code} to {path}: {detail}") from exc
    except OSError as exc:
        raise SchemaGovernanceError(f"the registry at {settings.url} cannot be reached: {exc}") from exc
    assert isinstance(answer, dict)
    return answer


def record_type_for(schema_file: Path) -> RecordType:
    """The record type a (possibly changed) schema file belongs to, by its full name."""
    document = json.loads(schema_file.read_text())
    full_name = f"{document.get('namespace', '')}.{document.get('name', '')}"
    for record_type in ALL_RECORD_TYPES:
        if record_type.full_name == full_name:
            return record_type
    raise SchemaGovernanceError(
        f"{schema_file} defines {full_name}, which is not a record of the onfinish contract"
    )


def check(settings: RegistrySettings, topic_prefix: str, schema_file: Path) -> CheckResult:
    """Check `schema_file` against every registered version of its subject under FULL_TRANSITIVE."""
    record_type = record_type_for(schema_file)
    subject = record_type.subject(record_type.topic(topic_prefix))
    result = CheckResult(subject=subject, schema_file=schema_file)
    client = _client(settings)
    try:
        with _asking(settings, f"reading {subject}"):
            versions = client.get_versions(subject)
            result.compatibility = client.get_compatibility(subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            return result  # nothing registered yet: any first version is acceptable
        raise SchemaGovernanceError(f"reading {subject} failed: {exc.error_message}") from exc
    if result.compatibility != COMPATIBILITY:
        result.incompatible[0] = [
            f"{subject} is governed by {result.compatibility}, not {COMPATIBILITY}: "
            "run `onfinish schema register` first"
        ]
    body = {"schema": json.dumps(json.loads(schema_file.read_text())), "schemaType": "AVRO"}
    quoted = urllib.parse.quote(subject, safe="")
    for version in versions:
        answer = _post(settings, f"/compatibility/subjects/{quoted}/versions/{version}?verbose=true", body)
        result.versions_checked.append(version)
        if not answer.get("is_compatible", False):
            result.incompatible[version] = [str(m) for m in answer.get("messages") or ["incompatible"]]
    return result
