"""What the stack writes for its components, checked without starting them."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from onfinish.settings import StackSettings
from onfinish.stack.kafka import KafkaBroker
from onfinish.stack.registry import SchemaRegistryServer
from onfinish.stack.topics import TOPICS


def _settings(tmp_path: Path) -> StackSettings:
    return StackSettings(
        home=tmp_path, kafka_port=19092, kafka_controller_port=19093, registry_port=18081, postgres_port=15433
    )


def test_kafka_runs_kraft_on_loopback_with_data_in_the_stack_home(tmp_path: Path):
    properties = dict(
        line.split("=", 1) for line in KafkaBroker(_settings(tmp_path)).server_properties().splitlines()
    )
    assert properties["process.roles"] == "broker,controller"
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert properties["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert properties["auto.create.topics.enable"] == "false"


def test_registry_stores_schemas_in_the_stacks_postgres(tmp_path: Path):
    config = SchemaRegistryServer(_settings(tmp_path)).config()
    assert config["server"] == {"host": "127.0.0.1", "port": 18081}
    storage = config["storage"]
    assert isinstance(storage, dict)
    assert storage["type"] == "postgresql"
    assert storage["postgresql"]["port"] == 15433
    json.dumps(config)  # written as JSON, which YAML readers accept


def test_topics_follow_the_design():
    suffixes = [t.suffix for t in TOPICS]
    assert suffixes == ["raw", "enriched", "windows", "sessions", "alerts", "dlq"]
    assert next(t for t in TOPICS if t.suffix == "sessions").config["cleanup.policy"] == "compact"


def test_provisioning_without_a_broker_is_a_clear_error():
    import pytest

    from onfinish.errors import StackError
    from onfinish.settings import KafkaSettings
    from onfinish.stack.topics import provision_topics

    with pytest.raises(StackError, match=r"Kafka at 127\.0\.0\.1:1 did not answer"):
        provision_topics(KafkaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_s=1))


def test_kafka_cluster_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch):
    # 0xF8 puts "-" (base64url index 62) first; kafka-storage would read that id as an option.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    cluster_id = KafkaBroker._random_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")
    assert len(cluster_id) == 22


def test_alertmanager_runs_one_node_on_loopback_notifying_the_stacks_webhook(tmp_path: Path):
    from onfinish.alerting.settings import AlertingSettings
    from onfinish.stack.alertmanager import AlertmanagerServer, WebhookReceiverServer

    settings = StackSettings(
        home=tmp_path, alertmanager_port=19094, webhook_port=19095, cache_dir=tmp_path / "c"
    )
    server = AlertmanagerServer(settings, AlertingSettings())
    server.home.mkdir(parents=True)
    server.prepare()
    config = json.loads(server.config_path.read_text())  # JSON is YAML to Alertmanager
    assert config["route"]["receiver"] == "webhook" and config["route"]["group_by"] == ["rule", "subject"]
    (webhook,) = config["receivers"][0]["webhook_configs"]
    assert webhook == {"url": "http://127.0.0.1:19095/alertmanager", "send_resolved": True}
    binary = settings.cache_dir / "bin" / "alertmanager-v0.28.1"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    command = server.command()
    assert command[0] == str(binary)
    assert "--web.listen-address=127.0.0.1:19094" in command and "--cluster.listen-address=" in command
    assert f"--storage.path={tmp_path / 'alertmanager' / 'data'}" in command
    receiver = WebhookReceiverServer(settings).command()
    assert receiver[-2:] == ["--out", str(tmp_path / "webhook" / "notifications.jsonl")]


def test_a_configuration_of_ones_own_is_used_as_it_is(tmp_path: Path):
    from onfinish.alerting.settings import AlertingSettings
    from onfinish.stack.alertmanager import AlertmanagerServer

    own = tmp_path / "mine.yml"
    own.write_text("route:\n  receiver: pager\nreceivers:\n  - name: pager\n")
    server = AlertmanagerServer(StackSettings(home=tmp_path), AlertingSettings(alertmanager_config=own))
    server.home.mkdir(parents=True)
    server.prepare()
    assert server.config_path.read_text() == own.read_text()


def test_the_stack_runs_alertmanager_only_with_alerting_enabled(tmp_path: Path):
    from onfinish.alerting.settings import AlertingSettings
    from onfinish.stack.stack import Stack

    on = Stack(StackSettings(home=tmp_path), alerting=AlertingSettings(enabled=True))
    off = Stack(StackSettings(home=tmp_path), alerting=AlertingSettings(enabled=False))
    assert [c.name for c in on.components][-2:] == ["webhook", "alertmanager"]
    assert "alertmanager" not in [c.name for c in off.components]
    assert any(s.artefact.name == "Alertmanager v0.28.1" for s in on.install_steps())
    assert not any("Alertmanager" in s.artefact.name for s in off.install_steps())
