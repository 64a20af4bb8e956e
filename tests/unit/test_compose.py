"""docker-compose.yml cannot run here (no Docker engine); it must still be well-formed and true to the code."""

from __future__ import annotations

import re
from typing import Any

import typer.main
import yaml
from pydantic_settings import BaseSettings

from onfinish.cli import app
from onfinish.settings import ALL_SETTINGS
from tests.conftest import REPO


def _compose() -> dict[str, Any]:
    document = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def _known_variables() -> set[str]:
    from onfinish.alerting.settings import AlertingSettings
    from onfinish.collect.settings import CollectSettings
    from onfinish.processors.settings import ProcessorSettings
    from onfinish.producers.settings import ProducerSettings
    from onfinish.sinks.settings import SinkSettings

    classes: tuple[type[BaseSettings], ...] = (
        *ALL_SETTINGS,
        ProcessorSettings,
        ProducerSettings,
        SinkSettings,
        AlertingSettings,
        CollectSettings,
    )
    return {
        f"{settings.model_config['env_prefix']}{name}".upper()
        for settings in classes
        for name in settings.model_fields
    }


def test_compose_names_the_production_services():
    services = _compose()["services"]
    assert set(services) >= {"kafka", "schema-registry", "clickhouse", "processor", "sink", "grafana"}
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    # Scalable workers must not pin a container name or a host port.
    for worker in ("processor", "sink"):
        assert "container_name" not in services[worker]
        assert "ports" not in services[worker]


def test_every_onfinish_variable_in_compose_is_a_setting_the_code_reads():
    known = _known_variables()
    used = set(re.findall(r"\b(ONFINISH_[A-Z0-9_]+)\b", (REPO / "docker-compose.yml").read_text()))
    assert used, "the workers must be configured through ONFINISH_ settings"
    assert used <= known, f"unknown settings in docker-compose.yml: {sorted(used - known)}"
    for worker in ("processor", "sink", "topics"):
        env = _compose()["services"][worker]["environment"]
        assert env["ONFINISH_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["ONFINISH_CLICKHOUSE_DSN"].startswith("http://")


def test_worker_commands_are_onfinish_commands():
    group = typer.main.get_group(app)
    for name, service in _compose()["services"].items():
        command = service.get("command")
        if not command or command[0] != "onfinish":
            continue
        words = tuple(command[1:3])
        sub = group.commands.get(words[0])
        assert sub is not None, f"{name}: no `onfinish {words[0]}` command"
        if hasattr(sub, "commands") and (len(words) > 1 or not getattr(sub, "invoke_without_command", False)):
            # a group: the next word must be one of its commands
            assert words[1] in sub.commands, f"{name}: no `onfinish {' '.join(words)}` command"


def test_grafana_is_provisioned_with_the_clickhouse_datasource():
    services = _compose()["services"]
    assert any("provisioning" in volume for volume in services["grafana"]["volumes"])
    datasource = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/clickhouse.yaml").read_text()
    )
    assert datasource["datasources"][0]["type"] == "grafana-clickhouse-datasource"
    assert datasource["datasources"][0]["jsonData"]["host"] == "clickhouse"


def test_alertmanager_runs_the_shipped_configuration_and_the_watch_worker_posts_to_it():
    services = _compose()["services"]
    alertmanager = services["alertmanager"]
    assert alertmanager["image"] == "prom/alertmanager:v0.28.1"
    assert (
        "./deploy/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
        in alertmanager["volumes"]
    )
    assert (REPO / "deploy" / "alertmanager" / "alertmanager.yml").exists()
    watch = services["watch"]
    assert watch["command"] == ["onfinish", "watch"]
    assert watch["environment"]["ONFINISH_ALERTING_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    assert "alertmanager" in watch["depends_on"]


def test_the_example_alertmanager_configuration_routes_to_slack_pagerduty_and_a_webhook():
    config = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert set(receivers) == {"slack", "pagerduty", "webhook"}
    assert receivers["slack"]["slack_configs"][0]["send_resolved"] is True
    assert receivers["pagerduty"]["pagerduty_configs"][0]["routing_key_file"].startswith(
        "/etc/alertmanager/secrets/"
    )
    routes = config["route"]["routes"]
    assert routes[0]["matchers"] == ['rule="onfinish_alerts_test"'] and routes[0]["receiver"] == "webhook"
    text = (REPO / "deploy" / "alertmanager" / "templates" / "slack.tmpl").read_text()
    for name in (
        "onfinish.slack.title",
        "onfinish.slack.text",
        "onfinish.slack.link",
        "onfinish.slack.color",
    ):
        assert f'define "{name}"' in text
