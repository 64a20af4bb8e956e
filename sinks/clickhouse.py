"""ClickHouse for onfinish, reached only through clickhouse-connect.

The embedded default is the real ClickHouse engine in-process (chDB) on a directory in the stack
home (`chdb:///<dir>`); an `http(s)://` DSN reaches a ClickHouse server through the same code.
clickhouse-connect is imported here, on demand, so nothing light (the producer SDK) pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onfinish.errors import ConfigurationError
from onfinish.settings import ClickHouseSettings, StackSettings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


def connect(settings: ClickHouseSettings, stack: StackSettings, *, create_database: bool = True) -> Client:
    """A clickhouse-connect client for the configured DSN, with onfinish's database selected."""
    try:
        import clickhouse_connect
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigurationError("ClickHouse needs the sinks extra: pip install 'onfinish[sinks]'") from exc
    dsn = settings.resolved_dsn(stack)
    if settings.dsn is None:
        stack.clickhouse_dir.mkdir(parents=True, exist_ok=True)
    client = clickhouse_connect.get_client(dsn=dsn)
    if create_database:
        client.command(f"CREATE DATABASE IF NOT EXISTS `{settings.database}`")
    client.database = settings.database
    return client


def server_version(client: Client) -> str:
    return str(client.command("SELECT version()"))
