"""Embedded ClickHouse for unit tests: one data directory per process at a time, so always closed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import clickhouse_connect
from clickhouse_connect.driver.client import Client


@contextmanager
def chdb_engine(directory: Path) -> Iterator[Client]:
    """A client on chDB in `directory`, closed on exit so that another test can open its own."""
    client = clickhouse_connect.get_client(dsn=f"chdb:///{directory}")
    try:
        yield client
    finally:
        client.close()
