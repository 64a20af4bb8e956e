"""Settings: ONFINISH_ prefixes, an embedded default and a description for every field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from onfinish.settings import ALL_SETTINGS, ClickHouseSettings, KafkaSettings, StackSettings
from onfinish.sinks.settings import SinkSettings


@pytest.mark.parametrize("settings_class", ALL_SETTINGS, ids=lambda c: c.__name__)
def test_every_field_has_a_default_and_a_description(settings_class, monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("ONFINISH_"):
            monkeypatch.delenv(name)
    settings_class()  # builds from embedded defaults alone
    assert str(settings_class.model_config["env_prefix"]).startswith("ONFINISH_")
    for name, field in settings_class.model_fields.items():
        assert not field.is_required(), f"{settings_class.__name__}.{name} has no default"
        assert field.description, f"{settings_class.__name__}.{name} has no description"


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("ONFINISH_KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("ONFINISH_KAFKA_PARTITIONS", "24")
    settings = KafkaSettings()
    assert (settings.bootstrap_servers, settings.partitions) == ("broker-1:9092,broker-2:9092", 24)


def test_invalid_values_are_refused(monkeypatch):
    monkeypatch.setenv("ONFINISH_KAFKA_PARTITIONS", "0")
    with pytest.raises(ValidationError):
        KafkaSettings()
    with pytest.raises(ValidationError, match="chdb:, http:// or https://"):
        ClickHouseSettings(dsn="mysql://localhost")


def test_embedded_clickhouse_is_the_default_and_lives_in_the_stack_home(tmp_path: Path):
    stack = StackSettings(home=tmp_path / "home")
    assert ClickHouseSettings().resolved_dsn(stack) == f"chdb://{tmp_path / 'home' / 'clickhouse'}"
    server = ClickHouseSettings(dsn="https://analyst:secret@ch.example:8443/onfinish")
    assert server.resolved_dsn(stack) == "https://analyst:secret@ch.example:8443/onfinish"


def test_stack_paths_are_made_absolute(monkeypatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    settings = StackSettings(home=Path("relative-home"))
    assert settings.home == tmp_path / "relative-home"
    assert settings.clickhouse_dir.is_absolute()


def test_passwords_never_appear_in_the_displayed_dsn(tmp_path: Path):
    stack = StackSettings(home=tmp_path)
    shown = ClickHouseSettings(dsn="https://analyst:s3cr3t@ch.example:8443/onfinish").display_dsn(stack)
    assert "s3cr3t" not in shown
    assert shown == "https://analyst:***@ch.example:8443/onfinish"
    assert ClickHouseSettings().display_dsn(stack) == f"chdb://{tmp_path / 'clickhouse'}"


def test_sink_workers_take_gc_thresholds_from_the_environment_as_json(monkeypatch):
    """(The processors' setting, the same field, is tested in tests/processors/test_app.py.)"""
    monkeypatch.setenv("ONFINISH_SINK_GC_THRESHOLDS", "[30000, 7, 9]")
    assert SinkSettings().gc_thresholds == (30_000, 7, 9)
