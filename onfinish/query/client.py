"""Where analysts' and the CLI's queries go: the sink's read-only endpoint, or a ClickHouse server.

`QueryClient` talks to a `QueryServer` from any process with the standard library alone;
`querier` picks the endpoint (embedded ClickHouse) or a clickhouse-connect client (a server), both
answering as a `Querier`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from clickhouse_connect.driver.client import Client

from onfinish.errors import ConfigurationError, OnfinishError
from onfinish.query.guard import ReadOnlyRefused, check_read_only
from onfinish.query.results import QueryFailed, QueryResult, json_safe
from onfinish.settings import ClickHouseSettings, StackSettings
from onfinish.sinks.settings import SinkSettings

# --- The client ------------------------------------------------------------------------------------


class QueryClient:
    """Queries a QueryServer from any process, with the standard library alone.

    Values come back JSON-safe (datetimes as ISO 8601 strings, Decimals as strings, bytes base64);
    `types` says which ClickHouse type each column has, for callers that want them parsed back.
    """

    def __init__(self, url: str, timeout: float = 30) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"query endpoint URL must be http(s)://host:port, not {url!r}")
        if timeout <= 0:
            raise ConfigurationError(f"query timeout must be positive, not {timeout}")
        self._url = url.rstrip("/")
        self._timeout = timeout

    def query(self, sql: str) -> QueryResult:
        """Run `sql` on the endpoint; raises ReadOnlyRefused (403) or QueryFailed (anything else)."""
        # The scheme was checked to be http(s) at construction.
        request = urllib.request.Request(  # noqa: S310
            f"{self._url}/query?format=json",
            data=sql.encode(),
            method="POST",
            headers={"Content-Type": "text/plain; charset=utf-8", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                document = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            message = _error_message(exc)
            if exc.code == HTTPStatus.FORBIDDEN:
                raise ReadOnlyRefused(message) from None
            raise QueryFailed(message, status=exc.code) from None
        except OSError as exc:
            raise QueryFailed(f"query endpoint {self._url} unreachable: {exc}") from exc
        except ValueError as exc:
            raise QueryFailed(f"query endpoint {self._url} answered something other than JSON") from exc
        try:
            return QueryResult(
                columns=list(document["columns"]),
                types=list(document["types"]),
                rows=[tuple(row) for row in document["rows"]],
                elapsed_ms=float(document["elapsed_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise QueryFailed(f"query endpoint {self._url} answered an unexpected document") from exc


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's `error` field, or the HTTP reason when the body is not the endpoint's JSON."""
    try:
        document = json.loads(error.read())
        return str(document["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {error.code} {error.reason}"


if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


class AnalyticsUnavailable(OnfinishError):
    """Nothing answers where the report's data is: the sink's query endpoint or the ClickHouse server."""


class Querier(Protocol):
    """Runs one read-only SQL statement and returns its rows, JSON-safe as the endpoint sends them."""

    def query(self, sql: str) -> QueryResult: ...


# --- Where queries go ------------------------------------------------------------------------------


class EndpointQuerier:
    """Queries through the sink worker's read-only endpoint (embedded ClickHouse)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = QueryClient(url)

    def query(self, sql: str) -> QueryResult:
        try:
            return self._client.query(sql)
        except QueryFailed as exc:
            # An OSError underneath means no answer at all (refused, timed out), not a query error.
            if exc.status is None and isinstance(exc.__cause__, OSError):
                raise AnalyticsUnavailable(
                    f"the sink's query endpoint {self.url} does not answer: start `onfinish sink` "
                    "(or `make demo`), which owns the embedded ClickHouse and serves its data"
                ) from None
            raise


class ClientQuerier:
    """Queries a ClickHouse server through a clickhouse-connect client, answering like the endpoint."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def query(self, sql: str) -> QueryResult:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        statement = check_read_only(sql)
        try:
            answer = self._client.query(statement)
        except ClickHouseError as exc:
            raise QueryFailed(str(exc)) from exc
        return QueryResult(
            columns=list(answer.column_names),
            types=[column_type.name for column_type in answer.column_types],
            rows=[tuple(json_safe(value) for value in row) for row in answer.result_rows],
        )


def querier(clickhouse: ClickHouseSettings, stack: StackSettings, sink: SinkSettings) -> Querier:
    """Where this process's queries go: the sink's endpoint when ClickHouse is embedded, else the server."""
    if clickhouse.dsn is None or clickhouse.dsn.startswith("chdb:"):
        if sink.query_port == 0:
            raise ConfigurationError(
                "ONFINISH_SINK_QUERY_PORT is 0, so the sink serves no query endpoint and the embedded "
                "ClickHouse cannot be read from another process: give it a port (default 8124)"
            )
        return EndpointQuerier(f"http://{sink.query_host}:{sink.query_port}")
    from clickhouse_connect.driver.exceptions import Error

    from onfinish.sinks.clickhouse import connect

    try:
        return ClientQuerier(connect(clickhouse, stack, create_database=False))
    except Error as exc:
        raise AnalyticsUnavailable(
            f"ClickHouse at {clickhouse.display_dsn(stack)} did not answer: {str(exc)[:300]}"
        ) from exc


def records(result: QueryResult) -> list[dict[str, Any]]:
    """The result's rows as dicts by column name."""
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def timestamp(value: Any) -> datetime:
    """A datetime the endpoint sent as ISO 8601 (naive means UTC, as ClickHouse stores them)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
