"""Migrations: applied once and recorded, refused when edited after the fact, retention set apart."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client

from onfinish.errors import ConfigurationError
from onfinish.schemas.histogram_grid import DEFAULT_GRID
from onfinish.sinks import migrate
from onfinish.sinks.migrate import Migration, apply_events_ttl, apply_migrations, load_migrations, render
from tests.chdb import chdb_engine

TABLES = {"events", "event_quality", "event_costs", "windows_1m", "sessions", "alerts", "dlq"}
VIEWS = {
    "model_hourly",
    "model_daily",
    "cost_by_dimension",
    "session_costs",
    "top_error_codes",
    "quality_by_model_variant",
    "dlq_by_reason",
    "scored_events",
    "current_events",
    "alert_episodes",
    "open_alert_episodes",
}
_databases = itertools.count()


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[Client]:
    with chdb_engine(tmp_path_factory.mktemp("chdb-migrations")) as client:
        yield client


@pytest.fixture
def client(engine: Client) -> Client:
    """The engine, switched to a database of this test's own."""
    name = f"migrations_{next(_databases)}"
    engine.command(f"CREATE DATABASE {name}")
    engine.database = name
    return engine


def _objects(client: Client) -> dict[str, str]:
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
    ).result_rows
    return {str(name): str(engine) for name, engine in rows}


def _events_ddl(client: Client) -> str:
    return str(client.command("SHOW CREATE TABLE events"))


def test_migrations_apply_once_and_are_recorded(client):
    migrations = load_migrations()
    assert [m.name for m in migrations] == [
        "0001_tables",
        "0002_views",
        "0003_event_quality",
        "0004_current_events",
        "0005_alert_baseline",
        "0006_alert_episodes",
    ]
    assert apply_migrations(client) == [m.name for m in migrations]
    assert apply_migrations(client) == []
    recorded = client.query("SELECT version, name, checksum FROM schema_migrations FINAL ORDER BY version")
    assert recorded.result_rows == [(m.version, m.name, m.checksum) for m in migrations]


def test_tables_and_views_exist_with_idempotent_engines(client):
    apply_migrations(client)
    objects = _objects(client)
    assert {name for name, engine in objects.items() if engine == "View"} == VIEWS
    assert {name: objects[name] for name in TABLES} == dict.fromkeys(TABLES, "ReplacingMergeTree")
    for table in TABLES:
        ddl = str(client.command(f"SHOW CREATE TABLE {table}"))
        assert "non_replicated_deduplication_window = 1000" in ddl, table
        assert "Replicated" not in ddl.replace("ReplacingMergeTree", "") and "ON CLUSTER" not in ddl
    for view in VIEWS:  # every view compiles and answers, empty on empty tables
        assert client.query(f"SELECT * FROM {view}").result_rows == []


def test_an_applied_migration_that_changed_is_refused(client, monkeypatch):
    apply_migrations(client)
    original = load_migrations()
    edited = [
        Migration(m.version, m.name, m.sql + "\n-- edited\n") if m.version == 1 else m for m in original
    ]
    monkeypatch.setattr(migrate, "load_migrations", lambda: edited)
    with pytest.raises(ConfigurationError, match="0001_tables"):
        apply_migrations(client)


def test_a_new_migration_is_applied_after_the_recorded_ones(client, monkeypatch):
    apply_migrations(client)
    extra = Migration(
        99, "0099_extra", "CREATE TABLE IF NOT EXISTS extra (x UInt8) ENGINE = MergeTree ORDER BY x;"
    )
    monkeypatch.setattr(migrate, "load_migrations", lambda: [*load_migrations(), extra])
    assert apply_migrations(client) == ["0099_extra"]
    assert "extra" in _objects(client)
    assert apply_migrations(client) == []


def test_a_half_applied_migration_runs_again(client, monkeypatch):
    tables, views, *later = load_migrations()
    monkeypatch.setattr(migrate, "load_migrations", lambda: [tables])
    assert apply_migrations(client) == ["0001_tables"]
    client.command(views.statements()[0])  # a migrator that stopped after the first view
    monkeypatch.undo()
    assert apply_migrations(client) == ["0002_views", *(m.name for m in later)]
    assert {n for n, e in _objects(client).items() if e == "View"} == VIEWS


def test_events_retention_is_set_apart_from_the_checksums(client):
    apply_migrations(client)
    assert "toIntervalDay(90)" in _events_ddl(client)
    assert apply_migrations(client, events_ttl_days=30) == []  # no checksum complaint
    assert "toIntervalDay(30)" in _events_ddl(client) and "toIntervalDay(90)" not in _events_ddl(client)
    assert apply_events_ttl(client, 30) is False  # already so: no ALTER, no rewrite of parts
    assert apply_events_ttl(client, 45) is True
    with pytest.raises(ConfigurationError, match="events_ttl_days"):
        apply_migrations(client, events_ttl_days=0)


def test_the_retention_removes_old_events(client):
    apply_migrations(client, events_ttl_days=30)
    client.command(
        "INSERT INTO events (event_id, provider, model_id, started_at, finished_at) VALUES "
        "(generateUUIDv4(), 'p', 'old', now64(6) - INTERVAL 40 DAY, now64(6) - INTERVAL 40 DAY), "
        "(generateUUIDv4(), 'p', 'new', now64(6) - INTERVAL 10 DAY, now64(6) - INTERVAL 10 DAY)"
    )
    client.command("OPTIMIZE TABLE events FINAL")
    assert client.query("SELECT model_id FROM events").result_rows == [("new",)]


def test_statements_split_at_semicolons_that_end_a_line():
    migration = Migration(
        9,
        "0009_x",
        "-- header;\nCREATE TABLE a (s String DEFAULT 'x;y') ENGINE = Memory;\n"
        "-- a comment line that ends with a semicolon;\nSELECT 1 ;  \n-- trailing comment\n",
    )
    assert migration.statements() == [
        "-- header;\nCREATE TABLE a (s String DEFAULT 'x;y') ENGINE = Memory",
        "-- a comment line that ends with a semicolon;\nSELECT 1",
    ]


def test_placeholders_expand_from_the_histogram_grid():
    assert render("length(a) = {{bucket_count}}") == f"length(a) = {DEFAULT_GRID.bucket_count}"
    assert render("{{ quantile(h, 0.95) }}") == DEFAULT_GRID.clickhouse_quantile_expression("h", 0.95)
    with pytest.raises(ConfigurationError, match="unknown placeholder"):
        render("{{latency_p95}}", "0009_x")
    for migration in load_migrations():
        assert "{{" not in migration.sql
