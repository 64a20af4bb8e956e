"""The stack's lifecycle on a stack of its own: idempotent up, clean down, persistence, clear errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from onfinish.errors import ComponentStartError, PortInUseError
from onfinish.settings import KafkaSettings
from onfinish.stack.stack import Stack
from tests.conftest import REPO, isolated_stack_settings

# Below the kernel's ephemeral range (32768+), where client sockets could already hold a port.
PORT_BASE = 26000


def _processes_mentioning(path: Path) -> list[int]:
    """Pids of live processes whose command line names `path` (every stack process names its home)."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(isolated_stack_settings(tmp_path / "home", PORT_BASE), kafka=KafkaSettings(partitions=2))
    yield stack
    stack.down()


def test_up_twice_is_harmless_and_down_leaves_nothing_behind(own_stack: Stack):
    first = own_stack.up()
    assert [s.name for s in first.started] == ["postgres", "registry", "kafka", "webhook", "alertmanager"]
    assert all(s.started for s in first.started)
    second = own_stack.up()
    assert not any(s.started for s in second.started)
    assert [s.pid for s in second.started] == [s.pid for s in first.started]
    assert not any(t.created for t in second.topics)
    assert all(status.healthy for status in own_stack.status())
    assert sorted(_processes_mentioning(own_stack.settings.home)) != []

    assert sorted(own_stack.down()) == ["alertmanager", "kafka", "postgres", "registry", "webhook"]
    assert _processes_mentioning(own_stack.settings.home) == []
    assert not any(status.running for status in own_stack.status())
    assert own_stack.down() == []


def test_schemas_and_topics_survive_a_restart(own_stack: Stack, unique: str):
    own_stack.up()
    registry = SchemaRegistryClient({"url": own_stack.settings.registry_url})
    schema = Schema(
        json.dumps({"type": "record", "name": "Kept", "fields": [{"name": "a", "type": "int"}]}), "AVRO"
    )
    schema_id = registry.register_schema(f"{unique}-value", schema)
    registry.set_compatibility(f"{unique}-value", "FULL_TRANSITIVE")

    own_stack.down()
    report = own_stack.up()
    assert all(s.started for s in report.started)
    assert not any(t.created for t in report.topics), "topics must survive down/up"

    fresh = SchemaRegistryClient({"url": own_stack.settings.registry_url})
    assert json.loads(str(fresh.get_schema(schema_id).schema_str)) == json.loads(str(schema.schema_str))
    assert fresh.register_schema(f"{unique}-value", schema) == schema_id
    assert fresh.get_compatibility(f"{unique}-value") == "FULL_TRANSITIVE"
    other = Schema(
        json.dumps({"type": "record", "name": "New", "fields": [{"name": "b", "type": "int"}]}), "AVRO"
    )
    assert fresh.register_schema(f"{unique}-other-value", other) > schema_id  # ids are never reused
    admin = AdminClient({"bootstrap.servers": own_stack.settings.kafka_bootstrap})
    assert f"{own_stack.kafka_settings.topic_prefix}.sessions" in admin.list_topics(timeout=10).topics


def test_a_taken_port_is_reported_with_the_component_that_needs_it(own_stack: Stack):
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", own_stack.settings.kafka_port))
    blocker.listen()
    try:
        with pytest.raises(PortInUseError) as taken:
            own_stack.up()
    finally:
        blocker.close()
    assert taken.value.component == "kafka"
    assert f"127.0.0.1:{own_stack.settings.kafka_port} is already in use" in str(taken.value)
    assert own_stack.component("kafka").pid_file.running() is None


def test_cli_reports_a_taken_port_in_one_line_without_a_traceback(tmp_path: Path):
    settings = isolated_stack_settings(tmp_path / "home", PORT_BASE + 100)
    env = {
        **os.environ,
        "ONFINISH_STACK_HOME": str(settings.home),
        "ONFINISH_STACK_POSTGRES_PORT": str(settings.postgres_port),
        "ONFINISH_STACK_REGISTRY_PORT": str(settings.registry_port),
        "ONFINISH_STACK_KAFKA_PORT": str(settings.kafka_port),
        "ONFINISH_STACK_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
    }
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", settings.postgres_port))
        blocker.listen()
        result = subprocess.run(
            [sys.executable, "-m", "onfinish", "stack", "up"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"postgres cannot start: 127.0.0.1:{settings.postgres_port} is already in use" in " ".join(
        result.stderr.split()
    )
    assert _processes_mentioning(settings.home) == []


def test_a_component_that_dies_at_start_is_named_with_its_log(tmp_path: Path):
    settings = isolated_stack_settings(tmp_path / "home", PORT_BASE + 200).model_copy(
        update={"kafka_heap": "not-a-size", "start_timeout_s": 30}
    )
    stack = Stack(settings)
    try:
        with pytest.raises(ComponentStartError) as failed:
            stack.up()
        assert failed.value.component == "kafka"
        # The bad heap stops the JVM either at storage formatting or at start; both are start-up.
        assert "exited during start-up" in str(failed.value) or "formatting KRaft storage failed" in str(
            failed.value
        )
        assert failed.value.log_path == settings.home / "logs" / "kafka.log"
        assert failed.value.log_path.exists()
        assert str(failed.value.log_path) in str(failed.value)
        assert stack.component("kafka").pid_file.running() is None
    finally:
        stack.down()
    assert _processes_mentioning(settings.home) == []
