"""The read-only SQL endpoint and the dashboard's server, run by the process that owns ClickHouse.

With the embedded ClickHouse (chDB) that owner is the sink worker: `onfinish sink` starts this
server on the sink's clickhouse-connect handle. Every query passes the guard (onfinish/query/guard.py),
runs with `readonly=1`, and goes down the one client path checked to keep that setting.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, Error
from pydantic import SecretStr

from onfinish.errors import ConfigurationError, describe_exception
from onfinish.query import dashboard
from onfinish.query.guard import ReadOnlyRefused, check_read_only
from onfinish.query.results import JsonValue, QueryResult, json_safe, render_csv, render_json

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""Largest SQL text accepted; a query longer than this is a mistake, not an analysis."""

MAX_ERROR_CHARS = 1000
"""ClickHouse echoes the whole query in its messages; an error response keeps this much of it."""

MAX_LOGGED_SQL_CHARS = 200
"""Logs keep this much of the SQL text and nothing else of a request (no URL, no parameters)."""

READONLY_ERROR_NAME = "READONLY"
"""Symbolic name of ClickHouse error 164, raised when readonly mode refuses a statement."""

# --- The server ------------------------------------------------------------------------------------

_RENDERERS = {"json": ("application/json", render_json), "csv": ("text/csv; charset=utf-8", render_csv)}
_DASHBOARD_PATHS = frozenset({"/", "/dashboard/data", "/dashboard/models", "/dashboard/compare"})
# Calls read per group for a readout on the dashboard (a deterministic sample beyond it).
DASHBOARD_COMPARE_MAX_CALLS = 50_000


# The page uses nothing from elsewhere: scripts and styles are inline, data comes from this server.
_PAGE_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


@dataclass(frozen=True, slots=True)
class _Response:
    status: HTTPStatus
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _json_response(status: HTTPStatus, document: dict[str, JsonValue]) -> _Response:
    return _Response(status, "application/json", json.dumps(document, ensure_ascii=False).encode())


def _error_response(status: HTTPStatus, message: str) -> _Response:
    return _json_response(status, {"error": message[:MAX_ERROR_CHARS]})


class QueryServer:
    """Serves read-only queries on the owner's clickhouse-connect client over HTTP, in a background thread.

    Endpoints: `POST /query` (SQL as the body) or `GET /query?sql=...`, each with an optional
    `format=json` (default) or `format=csv`; `GET /health`. A refused query answers 403, a
    ClickHouse error 400, with `{"error": "..."}`.

    The live dashboard: `GET /` is its page; `GET /dashboard/data?panel=<name>&since=<minutes>&model=<id>`
    runs one of its named queries (onfinish/query/dashboard.py) and answers like `/query`; `GET
    /dashboard/models?since=<minutes>` lists the models seen, for its filter. A bad panel, range or
    model answers 400.

    Queries are serialised with a lock: clickhouse-connect's chDB backend already runs one call at
    a time per handle, but its HTTP client refuses concurrent queries within one session, and one
    lock keeps the behaviour the same for both. Each query is bounded (`max_execution_s`,
    `max_result_rows`) because while it runs the owner's own writes on the same handle wait.
    """

    def __init__(
        self,
        client: Client,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_execution_s: int = 60,
        max_result_rows: int = 100_000,
        token: SecretStr | None = None,
    ) -> None:
        require_token_off_loopback(host, token)
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"query server port must be within 0..65535, not {port}")
        if max_execution_s <= 0 or max_result_rows <= 0:
            raise ConfigurationError(
                "query server limits (max_execution_s, max_result_rows) must be positive"
            )
        self._client = client
        # Compared as bytes in constant time (hmac.compare_digest): a comparison that stops at
        # the first differing byte would tell a remote caller, by its timing, how much it got right.
        self._token = (
            None
            if token is None or not token.get_secret_value()
            else f"Bearer {token.get_secret_value()}".encode()
        )
        self._host = host
        self._port = port
        self._settings: dict[str, Any] = {
            "readonly": 1,
            "max_execution_time": max_execution_s,
            "max_result_rows": max_result_rows,
            "result_overflow_mode": "throw",
        }
        self._lock = threading.Lock()
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the endpoint; with port 0, the port actually bound once started."""
        port = self._http.server_address[1] if self._http is not None else self._port
        return f"http://{self._host}:{port}"

    def start(self) -> None:
        """Check that the engine enforces readonly, then serve in a daemon thread."""
        if self._http is not None:
            return
        self._check_engine_read_only()
        self._http = _HttpServer((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="onfinish-query-server", daemon=True
        )
        self._thread.start()
        log.info("query endpoint listening", extra={"url": self.url})

    def stop(self) -> None:
        """Stop serving and release the port; the client stays open, it belongs to the owner."""
        if self._http is None:
            return
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join()
        self._http = None
        self._thread = None

    def __enter__(self) -> QueryServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _check_engine_read_only(self) -> None:
        """Refuse to serve when the engine does not apply readonly=1 the way this module relies on."""
        try:
            rows = self._run("SELECT getSetting('readonly')").rows
        except ClickHouseError as exc:
            raise ConfigurationError(
                f"the ClickHouse engine refused the query endpoint's settings {self._settings}: {exc}"
            ) from exc
        if rows != [(1,)]:
            raise ConfigurationError(f"the ClickHouse engine ignored readonly=1 (it reports {rows})")

    def execute(self, sql: str) -> QueryResult:
        """Run one read-only query; raises ReadOnlyRefused, or clickhouse-connect's ClickHouseError."""
        return self._run(check_read_only(sql))

    def _run(self, statement: str) -> QueryResult:
        context = self._client.create_query_context(query=statement, settings=self._settings)
        if context.is_command or context.is_insert:
            # clickhouse-connect would run it through command(), whose per-call settings on chDB
            # leave the owner's handle stuck in readonly mode (see the module docstring).
            raise ReadOnlyRefused("this statement is not served by the query endpoint")
        with self._lock:
            started = time.perf_counter()
            answer = self._client.query(context=context)
            elapsed_ms = (time.perf_counter() - started) * 1000
        return QueryResult(
            columns=list(answer.column_names),
            types=[column_type.name for column_type in answer.column_types],
            rows=[tuple(json_safe(value) for value in row) for row in answer.result_rows],
            elapsed_ms=round(elapsed_ms, 3),
        )

    def authorised(self, authorization: str | None) -> bool:
        """Whether a request's Authorization header carries the token (always, when none is set)."""
        if self._token is None:
            return True
        return hmac.compare_digest((authorization or "").encode(), self._token)

    def _respond(self, method: str, target: str, body: bytes) -> _Response:
        """The response to one HTTP request: `target` is the path with its query string."""
        parts = urlsplit(target)
        if parts.path == "/health":
            if method != "GET":
                return _error_response(HTTPStatus.METHOD_NOT_ALLOWED, "use GET /health")
            return _json_response(HTTPStatus.OK, {"status": "ok"})
        if parts.path in _DASHBOARD_PATHS:
            if method != "GET":
                return _error_response(HTTPStatus.METHOD_NOT_ALLOWED, f"use GET {parts.path}")
            return self._dashboard(parts.path, parse_qs(parts.query, keep_blank_values=True))
        if parts.path != "/query":
            return _error_response(HTTPStatus.NOT_FOUND, f"no such endpoint: {parts.path}")
        params = parse_qs(parts.query, keep_blank_values=True)
        output = params.get("format", ["json"])[-1].lower()
        if output not in _RENDERERS:
            return _error_response(HTTPStatus.BAD_REQUEST, f"format must be json or csv, not {output!r}")
        if method == "POST" and body:
            try:
                sql = body.decode()
            except UnicodeDecodeError:
                return _error_response(HTTPStatus.BAD_REQUEST, "the query must be UTF-8 text")
        elif method in ("GET", "POST"):
            sql = params.get("sql", [""])[-1]
        else:
            return _error_response(HTTPStatus.METHOD_NOT_ALLOWED, "use GET or POST /query")
        return self._answer(sql, output)

    def _dashboard(self, path: str, params: dict[str, list[str]]) -> _Response:
        """The dashboard's page, one of its panels, or its list of models."""
        if path == "/":
            try:
                page = dashboard.page()
            except OSError as exc:
                log.error("dashboard page missing", extra={"error": str(exc)})
                return _error_response(
                    HTTPStatus.INTERNAL_SERVER_ERROR, "the dashboard page is not installed"
                )
            return _Response(HTTPStatus.OK, "text/html; charset=utf-8", page, _PAGE_HEADERS)
        if path == "/dashboard/compare":
            return self._compare(params)
        try:
            panel_filter = dashboard.parse_filter(
                params.get("since", [None])[-1], params.get("model", [None])[-1]
            )
            if path == "/dashboard/models":
                sql = dashboard.models(panel_filter)
            else:
                sql = dashboard.panel_sql(params.get("panel", [""])[-1], panel_filter)
        except dashboard.InvalidDashboardRequest as exc:
            return _error_response(HTTPStatus.BAD_REQUEST, str(exc))
        return self._answer(sql, "json")

    def query(self, sql: str) -> QueryResult:
        """The Querier protocol (onfinish.analytics): what the insights read through this server."""
        return self.execute(sql)

    def _compare(self, params: dict[str, list[str]]) -> _Response:
        """A variant readout (onfinish.insights), its numbers also formatted as the CLI prints them."""
        from onfinish.errors import ConfigurationError
        from onfinish.insights import compare as readouts
        from onfinish.insights.readouts import readout

        try:
            request = dashboard.parse_compare(params)
            result = readout(
                self,
                by=request.by,
                a=request.a,
                b=request.b,
                seconds=request.panel_filter.since_minutes * 60,
                within=request.within,
                max_calls=DASHBOARD_COMPARE_MAX_CALLS,
            )
        except (dashboard.InvalidDashboardRequest, ConfigurationError) as exc:
            return _error_response(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:
            log.error("readout failed", extra={"error": describe_exception(exc)})
            return _error_response(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"the readout failed ({type(exc).__name__})"
            )
        document = readouts.to_json(result)
        for shown, difference in zip(document["differences"], result.differences, strict=True):
            shown["text"] = {
                "a": readouts.format_value(difference.a_value, difference.unit),
                "b": readouts.format_value(difference.b_value, difference.unit),
                "delta": readouts.format_delta(difference),
                "interval": readouts.format_interval(difference),
            }
        return _json_response(HTTPStatus.OK, document)

    def _answer(self, sql: str, output: str) -> _Response:
        logged_sql = sql[:MAX_LOGGED_SQL_CHARS]
        try:
            result = self.execute(sql)
        except ReadOnlyRefused as exc:
            log.info("query refused", extra={"sql": logged_sql, "reason": exc.reason})
            return _error_response(HTTPStatus.FORBIDDEN, exc.reason)
        except Error as exc:
            message = str(exc)
            log.info("query failed", extra={"sql": logged_sql, "error": message[:MAX_LOGGED_SQL_CHARS]})
            if exc.name == READONLY_ERROR_NAME:
                return _error_response(
                    HTTPStatus.FORBIDDEN, f"refused by the engine's readonly mode: {message}"
                )
            return _error_response(HTTPStatus.BAD_REQUEST, message)
        except ClickHouseError as exc:
            log.info("query failed", extra={"sql": logged_sql, "error": str(exc)[:MAX_LOGGED_SQL_CHARS]})
            return _error_response(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:
            # No traceback: exception messages may quote the query or its data.
            log.error(
                "query endpoint failed",
                extra={
                    "sql": logged_sql,
                    "error": f"{type(exc).__name__}: {str(exc)[:MAX_LOGGED_SQL_CHARS]}",
                },
            )
            return _error_response(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(exc).__name__})")
        log.info(
            "query answered", extra={"sql": logged_sql, "rows": len(result.rows), "ms": result.elapsed_ms}
        )
        content_type, render = _RENDERERS[output]
        return _Response(HTTPStatus.OK, content_type, render(result))


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], query_server: QueryServer) -> None:
        self.query_server = query_server
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """HTTP plumbing only; what to answer is decided by QueryServer._respond."""

    server_version = "onfinish-query"

    def do_GET(self) -> None:
        self._serve("GET", b"")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._send(_error_response(HTTPStatus.BAD_REQUEST, "Content-Length is not a number"))
            return
        if length > MAX_BODY_BYTES:
            self._send(
                _error_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"query over {MAX_BODY_BYTES} bytes")
            )
            return
        self._serve("POST", self.rfile.read(length) if length > 0 else b"")

    def _serve(self, method: str, body: bytes) -> None:
        query_server = cast(_HttpServer, self.server).query_server
        if not query_server.authorised(self.headers.get("Authorization")):
            refused = _error_response(HTTPStatus.UNAUTHORIZED, "this endpoint needs its bearer token")
            self._send(replace(refused, headers=(("WWW-Authenticate", 'Bearer realm="onfinish"'),)))
            return
        self._send(query_server._respond(method, self.path, body))

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the default writes the request line, whose ?sql= would put whole queries in logs."""


def require_token_off_loopback(host: str, token: SecretStr | None) -> None:
    """ConfigurationError when the endpoint would listen beyond this machine with no token: it
    serves every table, so anyone who can reach the port could read them."""
    if token is not None and token.get_secret_value():
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigurationError(
            f"the query endpoint will not listen on {host} without a token: set ONFINISH_QUERY_TOKEN "
            "(or ONFINISH_QUERY_TOKEN_FILE), or keep ONFINISH_SINK_QUERY_HOST on loopback"
        )


def serve_reads(
    host: str, port: int, token: SecretStr | None = None
) -> Callable[[Client], Callable[[], None]] | None:
    """The sink worker's hook for read access (sinks/worker.py `serve_reads`): a `QueryServer` on the
    owner's client at host:port, or None when the port is 0 (no endpoint). Refuses, before the
    worker starts, to serve a non-loopback address without a token."""
    if not port:
        return None
    require_token_off_loopback(host, token)

    def start(owner: Client) -> Callable[[], None]:
        server = QueryServer(owner, host, port, token=token)
        server.start()
        return server.stop

    return start
