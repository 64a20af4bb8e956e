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


def _subject_levels(registry_url: str, prefix: str) -> dict[str, str]:
    """Each onfinish subject of the prefix and its own compatibility level, through the REST API."""
    import urllib.error
    import urllib.request

    from onfinish.schemas.contract import ALL_RECORD_TYPES

    levels = {}
    for record_type in ALL_RECORD_TYPES:
        subject = record_type.subject(record_type.topic(prefix))
        try:
            with urllib.request.urlopen(f"{registry_url}/config/{subject}", timeout=10) as response:
                levels[subject] = json.load(response)["compatibilityLevel"]
        except urllib.error.HTTPError as error:  # 404: no level of its own, the global default applies
            levels[subject] = f"HTTP {error.code}"
    return levels


def test_the_stack_and_the_demo_s_admin_step_govern_every_subject_full_transitive(stack, run) -> None:
    """`stack up` registers the default prefix's subjects, the demo's admin step its own prefix's."""
    url = stack.settings.registry_url
    prefix = run.demo.kafka.topic_prefix
    for levels in (_subject_levels(url, "onfinish"), _subject_levels(url, prefix)):
        assert set(levels.values()) == {"FULL_TRANSITIVE"}, levels
