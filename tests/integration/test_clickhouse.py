"""ClickHouse through clickhouse-connect: the embedded engine (chDB), and the same path for a server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from onfinish.settings import ClickHouseSettings, StackSettings
from onfinish.sinks import clickhouse
from onfinish.stack.stack import Stack


def test_create_insert_select_on_the_embedded_engine(
    stack: Stack, clickhouse_settings: ClickHouseSettings, unique: str
):
    assert clickhouse_settings.resolved_dsn(stack.settings).startswith("chdb:///")
    client = clickhouse.connect(clickhouse_settings, stack.settings)
    try:
        assert clickhouse.server_version(client).split(".")[0].isdigit()
        client.command(
            f"CREATE TABLE {unique} (id UInt64, model LowCardinality(String), at DateTime64(3, 'UTC'), latency_ms Float64)"
            " ENGINE = MergeTree ORDER BY (model, at)"
        )
        at = datetime(2026, 1, 1, tzinfo=UTC)
        rows = [[i, f"model-{i % 3}", at, float(i)] for i in range(1000)]
        client.insert(unique, rows, column_names=["id", "model", "at", "latency_ms"])
        result = client.query(
            f"SELECT model, count(), sum(latency_ms) FROM {unique} GROUP BY model ORDER BY model"
        )
        assert result.result_rows == [
            ("model-0", 334, float(sum(range(0, 1000, 3)))),
            ("model-1", 333, float(sum(range(1, 1000, 3)))),
            ("model-2", 333, float(sum(range(2, 1000, 3)))),
        ]
        assert client.database == clickhouse_settings.database
    finally:
        client.command(f"DROP TABLE IF EXISTS {unique}")
        client.close()


def test_data_persists_in_the_directory_across_clients(
    stack: Stack, clickhouse_settings: ClickHouseSettings, unique: str
):
    first = clickhouse.connect(clickhouse_settings, stack.settings)
    first.command(f"CREATE TABLE {unique} (x UInt8) ENGINE = MergeTree ORDER BY x")
    first.insert(unique, [[7]], column_names=["x"])
    first.close()
    second = clickhouse.connect(clickhouse_settings, stack.settings)
    try:
        assert second.command(f"SELECT sum(x) FROM {unique}") == 7
    finally:
        second.command(f"DROP TABLE {unique}")
        second.close()


def test_an_http_dsn_takes_the_same_path_to_a_clickhouse_server(tmp_path):
    # No ClickHouse server runs here: the point is that an http DSN reaches clickhouse-connect's HTTP
    # client and fails only on the connection, not on the DSN.
    settings = ClickHouseSettings(dsn="http://default:@127.0.0.1:1/onfinish")
    with pytest.raises(OperationalError, match=r"127\.0\.0\.1"):
        clickhouse.connect(settings, StackSettings(home=tmp_path))
