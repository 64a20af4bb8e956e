"""Governance against the real registry: register the contract, accept a safe change, refuse breaking ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from onfinish.schemas.contract import ONFINISH_EVENT
from onfinish.schemas.governance import check, register
from onfinish.settings import RegistrySettings
from tests.conftest import REPO


def _changed(tmp_path: Path, change: str) -> Path:
    schema: dict[str, Any] = json.loads(json.dumps(ONFINISH_EVENT.schema))
    fields = schema["fields"]
    if change == "optional field":
        fields.append(
            {"name": "gateway", "type": ["null", "string"], "default": None, "doc": "LLM gateway used."}
        )
    elif change == "removed field":
        schema["fields"] = [f for f in fields if f["name"] != "request_id"]
    elif change == "changed type":
        tokens = next(f for f in fields if f["name"] == "prompt_tokens")
        tokens["type"], tokens["default"] = "string", "0"
    path = tmp_path / f"{change.replace(' ', '_')}.avsc"
    path.write_text(json.dumps(schema))
    return path


@pytest.fixture
def topic(registry_settings: RegistrySettings, unique: str) -> str:
    register(registry_settings, unique)
    return unique


def test_register_puts_both_record_types_on_one_topic_under_full_transitive(
    registry_settings: RegistrySettings, unique: str
):
    first = register(registry_settings, unique)
    again = register(registry_settings, unique)
    assert [r.subject for r in first] == [
        f"{unique}.raw-io.onfinish.OnFinishEvent",
        f"{unique}.raw-io.onfinish.Feedback",
        f"{unique}.enriched-io.onfinish.EnrichedEvent",
        f"{unique}.enriched-io.onfinish.QualityUpdate",
        f"{unique}.windows-io.onfinish.WindowSnapshot",
        f"{unique}.sessions-io.onfinish.SessionSnapshot",
        f"{unique}.alerts-io.onfinish.Alert",
        f"{unique}.enriched-io.onfinish.CostCorrection",
        f"{unique}.windows-io.onfinish.WindowCostCorrection",
    ]
    assert [(r.schema_id, r.version) for r in again] == [(r.schema_id, r.version) for r in first]
    client = SchemaRegistryClient({"url": registry_settings.url})
    for registration in first:
        assert client.get_compatibility(registration.subject) == "FULL_TRANSITIVE"
        assert client.get_latest_version(registration.subject).version == 1


def test_a_new_optional_field_with_a_default_passes(
    registry_settings: RegistrySettings, topic: str, tmp_path: Path
):
    result = check(registry_settings, topic, _changed(tmp_path, "optional field"))
    assert result.compatible, result.incompatible
    assert result.versions_checked == [1]


@pytest.mark.parametrize("change", ["removed field", "changed type"])
def test_breaking_changes_are_refused_with_the_registrys_reason(
    registry_settings: RegistrySettings, topic: str, tmp_path: Path, change: str
):
    result = check(registry_settings, topic, _changed(tmp_path, change))
    assert not result.compatible
    messages = " ".join(result.incompatible[1])
    assert messages and messages != "incompatible", "the registry's own reason is reported"


def test_check_command_exits_non_zero_with_the_reason(
    registry_settings: RegistrySettings, topic: str, tmp_path: Path
):
    env = {**os.environ, "ONFINISH_REGISTRY_URL": registry_settings.url}
    command = [sys.executable, "-m", "onfinish", "schema", "check", "--topic-prefix", topic]
    breaking = subprocess.run(
        [*command, str(_changed(tmp_path, "changed type"))],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert breaking.returncode == 1
    assert "incompatible" in breaking.stderr and "version 1:" in breaking.stderr
    fine = subprocess.run(
        [*command, str(_changed(tmp_path, "optional field"))],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fine.returncode == 0, fine.stderr


def test_alert_v2_is_a_compatible_change_of_alert_v1(registry_settings: RegistrySettings, unique: str):
    from confluent_kafka.schema_registry import Schema

    from onfinish.schemas.contract import schema_path

    client = SchemaRegistryClient({"url": registry_settings.url})
    subject = f"{unique}.alerts-io.onfinish.Alert"
    client.set_compatibility(subject_name=subject, level="FULL_TRANSITIVE")
    client.register_schema(subject, Schema(schema_path("alert.v1.avsc").read_text(), "AVRO"))
    result = check(registry_settings, unique, schema_path("alert.v2.avsc"))
    assert result.compatible, result.incompatible
    assert result.versions_checked == [1]


def test_alert_v3_is_a_compatible_change_of_alert_v1_and_v2(registry_settings: RegistrySettings, unique: str):
    """`onfinish schema check` against every registered version of the Alert subject passes."""
    from confluent_kafka.schema_registry import Schema

    from onfinish.schemas.contract import schema_path

    client = SchemaRegistryClient({"url": registry_settings.url})
    subject = f"{unique}.alerts-io.onfinish.Alert"
    client.set_compatibility(subject_name=subject, level="FULL_TRANSITIVE")
    for old in ("alert.v1.avsc", "alert.v2.avsc"):
        client.register_schema(subject, Schema(schema_path(old).read_text(), "AVRO"))
    result = check(registry_settings, unique, schema_path("alert.v3.avsc"))
    assert result.compatible, result.incompatible
    assert result.versions_checked == [1, 2]
