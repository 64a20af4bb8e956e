"""The README's example query of every table and view runs against the migrated tables."""

from __future__ import annotations

import re
from collections.abc import Iterator

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from onfinish.sinks.migrate import apply_migrations
from tests.conftest import REPO


def _examples() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|[^\n]*\| `(SELECT [^`]+)` \|$", text, flags=re.MULTILINE)
    return [(name, sql) for name, sql in rows]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    engine = clickhouse_connect.get_client(dsn=f"chdb:///{tmp_path_factory.mktemp('chdb-readme')}")
    try:
        engine.command("CREATE DATABASE IF NOT EXISTS readme")
        engine.database = "readme"
        apply_migrations(engine)
        yield engine
    finally:
        engine.close()


def test_the_readme_has_an_example_for_every_table_and_view(client: Client):
    objects = {row[0] for row in client.query("SHOW TABLES").result_rows} - {"schema_migrations"}
    assert {name for name, _ in _examples()} == objects


@pytest.mark.parametrize(("name", "sql"), _examples(), ids=[name for name, _ in _examples()])
def test_each_example_query_runs(client: Client, name: str, sql: str):
    assert name in sql
    client.query(sql)  # raises on a wrong column or table
