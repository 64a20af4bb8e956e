"""Read-only SQL over HTTP, served by the process that owns the embedded ClickHouse (chDB) directory.

In embedded mode ClickHouse is chDB, inside the sink worker's process, and chDB lets one process own
a data directory (and a process open one directory at a time). Everyone else (the CLI, a
dashboard, analysts' scripts) therefore queries through this endpoint, served by the owner from its
own clickhouse-connect client: `QueryServer` in the owner, `QueryClient` anywhere.

Only reads are served, and three independent checks make sure of it:

1. `check_read_only` tokenises the SQL the way ClickHouse's lexer does (strings, quoted
   identifiers, heredocs, nested comments) and accepts one SELECT / WITH / SHOW / DESCRIBE /
   EXPLAIN / EXISTS statement without `INTO OUTFILE`, table functions that reach outside the
   database, or a `SETTINGS` clause that touches `readonly`.
2. Every accepted query runs with `readonly=1` in its own SETTINGS clause, so the engine refuses
   writes, DDL and setting changes even if the parser missed something.
3. The statement must be one clickhouse-connect sends down its query path (see below).

What chDB 4.4 with clickhouse-connect 1.12 does with `readonly=1` (tests/sinks/test_query.py keeps
these facts checked):

- Through `Client.query(..., settings={"readonly": 1})` it is enforced: INSERT, DDL, `file()` /
  `url()` / `executable()` table functions and any SETTINGS change are refused (READONLY, code 164).
- It does not stop `SELECT ... INTO OUTFILE` (chDB writes the file itself, in process) nor the
  scalar `file('/any/path')` function, which reads local files: only check 1 stops those.
- `Client.command()` and `Client.raw_query()`, and the statements `Client.query()` hands to
  `command()` (its `is_command` and `is_insert` cases, such as `SHOW ROW POLICIES`), apply per-call
  settings on chDB with `SET` and restore them with `SET` afterwards; under `readonly=1` the
  restoring `SET` is itself refused (and only logged at debug level), so the owner's handle stays
  read-only and the sink worker can no longer write. Hence check 3, and no other client method.

The same server serves the live dashboard (sinks/dashboard.py and its page): `GET /` is the page,
and the page's panels are named queries that run down the same read-only path, so the dashboard
can read nothing that `/query` would refuse.

The endpoint has no authentication: bind it to loopback (the default) and let the owner's host
decide who may reach it.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address
from types import TracebackType
from typing import Any, TypeAlias, cast
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, Error

from onfinish.errors import ConfigurationError, OnfinishError
from onfinish.sinks import dashboard

log = logging.getLogger(__name__)

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None

MAX_BODY_BYTES = 1024 * 1024
"""Largest SQL text accepted; a query longer than this is a mistake, not an analysis."""

MAX_ERROR_CHARS = 1000
"""ClickHouse echoes the whole query in its messages; an error response keeps this much of it."""

MAX_LOGGED_SQL_CHARS = 200
"""Logs keep this much of the SQL text and nothing else of a request (no URL, no parameters)."""

READONLY_ERROR_NAME = "READONLY"
"""Symbolic name of ClickHouse error 164, raised when readonly mode refuses a statement."""


class ReadOnlyRefused(OnfinishError):
    """A query was refused because it is not a single read-only statement."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class QueryFailed(OnfinishError):
    """The query endpoint could not answer: a ClickHouse error, a transport failure or a bad reply."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


# --- The read-only check ---------------------------------------------------------------------------
#
# A regular expression over the raw text cannot tell `SELECT ';'` from `SELECT 1; DROP TABLE t`, nor
# `file(` in code from `file(` in a string, so the check tokenises first. The tokeniser follows
# ClickHouse's own (src/Parsers/Lexer.cpp) wherever a difference could hide code inside what we
# take for a string or a comment: quotes with backslash and doubled-quote escapes, `--`, `//`,
# `# ` and nested `/* */` comments, `$tag$...$tag$` heredocs, and numbers whose exponent swallows
# a sign (`1e--1` is `1e-` then `-1`, not a comment). Anything it cannot close is refused.

_WORD = "word"
_QUOTED_IDENTIFIER = "quoted identifier"
_STRING = "string"
_NUMBER = "number"
_PUNCTUATION = "punctuation"

_DIGITS = frozenset("0123456789")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_ASCII_WHITESPACE = frozenset(" \t\n\r\f\v")
# Single-character tokens; operators such as `!=` or `->` are two of them, which loses nothing here.
_PUNCTUATION_CHARS = frozenset("()[]{},;.+-*/%=!<>?:|@^&~")

_ALLOWED_FIRST_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})
_EXPLAIN_KINDS = frozenset({"AST", "SYNTAX", "PLAN", "PIPELINE", "ESTIMATE"})
_EXPLAINABLE_FIRST_KEYWORDS = frozenset({"SELECT", "WITH"})

# Functions (table or scalar) that read or write outside the database, run programs, or reach other
# servers, compared in lower case whether spelled bare or as a quoted identifier: by name, and by
# prefix for the families that keep growing (icebergS3Cluster, deltaLakeLocal, paimonS3, ...); no
# function that stays inside the database starts with one of those prefixes.
_OUTSIDE_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        "file", "fileCluster", "input", "url", "urlCluster", "gcs", "oss", "cosn", "cluster",
        "clusterAllReplicas", "mysql", "postgresql", "mongodb", "redis", "sqlite", "odbc", "jdbc",
        "executable", "executablePool", "python", "arrowFlight", "ytsaurus", "catboostEvaluate",
    )
)  # fmt: skip
_OUTSIDE_FUNCTION_PREFIXES = ("iceberg", "deltalake", "hudi", "paimon", "s3", "hdfs", "azureblob", "remote")

# Keyword pairs no read needs: `INTO OUTFILE` writes a file (and chDB's readonly mode lets it), and
# `INSERT INTO` would make clickhouse-connect route the statement down its SET-settings path.
_FORBIDDEN_PAIRS = (("INTO", "OUTFILE"), ("INSERT", "INTO"))


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int

    @property
    def name(self) -> str:
        """The identifier a word or a quoted identifier stands for (quotes and escapes removed)."""
        if self.kind == _QUOTED_IDENTIFIER:
            quote_char = self.text[0]
            inner = self.text[1:-1].replace(quote_char * 2, quote_char)
            return inner.replace("\\" + quote_char, quote_char).replace("\\\\", "\\")
        return self.text

    def is_keyword(self, keyword: str) -> bool:
        return self.kind == _WORD and self.text.upper() == keyword

    def is_punctuation(self, char: str) -> bool:
        return self.kind == _PUNCTUATION and self.text == char


def _scan_quoted(sql: str, pos: int) -> int:
    """End of the quoted string or identifier opening at `pos`, as ClickHouse's quotedString finds it."""
    quote_char = sql[pos]
    start = pos
    end = len(sql)
    pos += 1
    while pos < end:
        char = sql[pos]
        if char == "\\":
            pos += 2
        elif char == quote_char:
            if pos + 1 < end and sql[pos + 1] == quote_char:
                pos += 2
            else:
                return pos + 1
        else:
            pos += 1
    raise ReadOnlyRefused(f"unterminated {quote_char} quote starting at position {start}")


def _is_number_separator(sql: str, pos: int, start_of_block: bool, hexadecimal: bool) -> bool:
    """ClickHouse's isNumberSeparator: `_` between digits, as in 1_000_000."""
    if sql[pos] != "_" or start_of_block or pos + 1 >= len(sql):
        return False
    return sql[pos + 1] in (_HEX_DIGITS if hexadecimal else _DIGITS)


def _scan_digits(sql: str, pos: int, start_of_block: bool, hexadecimal: bool) -> int:
    digits = _HEX_DIGITS if hexadecimal else _DIGITS
    while pos < len(sql) and (
        sql[pos] in digits or _is_number_separator(sql, pos, start_of_block, hexadecimal)
    ):
        pos += 1
        start_of_block = False
    return pos


def _scan_exponent(sql: str, pos: int, hexadecimal: bool) -> int:
    """Exponent of a number; like ClickHouse, it takes a sign even when no digit follows."""
    end = len(sql)
    if pos + 1 < end and sql[pos] in ("pP" if hexadecimal else "eE"):
        pos += 1
        if pos + 1 < end and sql[pos] in "+-":
            pos += 1
        pos = _scan_digits(sql, pos, True, False)
    return pos


def _scan_number(sql: str, pos: int) -> int:
    """End of the number starting with a digit at `pos` (a word if letters follow, as in 1st)."""
    end = len(sql)
    hexadecimal = False
    start_of_block = False
    if pos + 2 < end and sql[pos] == "0" and sql[pos + 1] in "xXbB":
        if sql[pos + 1] in "xX":
            hexadecimal = sql[pos + 2] in _HEX_DIGITS
            valid = hexadecimal
        else:
            valid = sql[pos + 2] in "01"
        pos += 2 if valid else 1
        start_of_block = valid
    else:
        pos += 1
    pos = _scan_digits(sql, pos, start_of_block, hexadecimal)
    if pos < end and sql[pos] == ".":
        pos = _scan_digits(sql, pos + 1, True, hexadecimal)
    return _scan_exponent(sql, pos, hexadecimal)


def _scan_fraction(sql: str, pos: int) -> int:
    """End of a number that starts with its decimal point, as in .5e-3."""
    return _scan_exponent(sql, _scan_digits(sql, pos + 1, True, False), False)


def _scan_word_tail(sql: str, pos: int) -> int:
    while pos < len(sql) and sql[pos] in _WORD_CHARS:
        pos += 1
    return pos


def _scan_comment(sql: str, pos: int) -> int | None:
    """End of the comment starting at `pos`, or None when no comment starts there."""
    pair = sql[pos : pos + 2]
    if pair in ("--", "//") or pair in ("# ", "#!"):
        newline = sql.find("\n", pos)
        return len(sql) if newline < 0 else newline
    if pair != "/*":
        return None
    depth = 1
    pos += 2
    while pos + 2 <= len(sql):
        pair = sql[pos : pos + 2]
        if pair == "/*":
            depth += 1
            pos += 2
        elif pair == "*/":
            depth -= 1
            pos += 2
            if depth == 0:
                return pos
        else:
            pos += 1
    raise ReadOnlyRefused("unterminated /* comment")


def _scan_heredoc(sql: str, pos: int) -> int | None:
    """End of the `$tag$ ... $tag$` string starting at `pos`, or None when none starts there."""
    tag_end = sql.find("$", pos + 1)
    if tag_end < 0:
        return None
    tag = sql[pos : tag_end + 1]
    closing = sql.find(tag, tag_end + 1)
    return None if closing < 0 else closing + len(tag)


def _tokenize(sql: str) -> list[_Token]:
    """The significant tokens of `sql`: whitespace and comments dropped, strings kept whole."""
    tokens: list[_Token] = []
    pos = 0
    end = len(sql)
    while pos < end:
        char = sql[pos]
        start = pos
        kind = _PUNCTUATION
        if char in _ASCII_WHITESPACE or (not char.isascii() and char.isspace()):
            pos += 1
            continue
        comment_end = _scan_comment(sql, pos)
        if comment_end is not None:
            pos = comment_end
            continue
        if char in _DIGITS and tokens and tokens[-1].is_punctuation("."):
            # After a dot only an integer, so that tuple access x.1.2 stays three steps.
            pos, kind = _scan_digits(sql, pos + 1, False, False), _NUMBER
        elif char in _DIGITS:
            pos, kind = _scan_number(sql, pos), _NUMBER
        elif char == "." and pos + 1 < end and sql[pos + 1] in _DIGITS and not _ends_operand(tokens):
            pos, kind = _scan_fraction(sql, pos), _NUMBER
        elif char in "'\"`":
            pos, kind = _scan_quoted(sql, pos), (_STRING if char == "'" else _QUOTED_IDENTIFIER)
        elif char in "xXbB" and pos + 2 < end and sql[pos + 1] == "'":
            pos, kind = _scan_quoted(sql, pos + 1), _STRING
        elif char == "$" and (heredoc_end := _scan_heredoc(sql, pos)) is not None:
            pos, kind = heredoc_end, _STRING
        elif char == "$" and (pos + 1 == end or sql[pos + 1] not in _WORD_CHARS):
            pos += 1
        elif char in _WORD_CHARS or char == "$":
            pos += 1
            while pos < end and (sql[pos] in _WORD_CHARS or sql[pos] == "$"):
                pos += 1
            kind = _WORD
        elif char in _PUNCTUATION_CHARS:
            pos += 1
        else:
            raise ReadOnlyRefused(f"unexpected character {char!r} at position {pos}")
        if kind == _NUMBER and pos < end and sql[pos] in _WORD_CHARS:
            pos, kind = _scan_word_tail(sql, pos), _WORD
        tokens.append(_Token(kind, sql[start:pos], start, pos))
    return tokens


def _ends_operand(tokens: list[_Token]) -> bool:
    """Whether a `.` after these tokens is member access (t.1, x.1.2) rather than the start of .5."""
    if not tokens:
        return False
    last = tokens[-1]
    return last.kind in (_WORD, _QUOTED_IDENTIFIER, _NUMBER) or last.text in (")", "]")


def _single_statement(tokens: list[_Token]) -> list[_Token]:
    """The tokens of the only statement, without its optional closing `;`."""
    for index, token in enumerate(tokens):
        if token.is_punctuation(";"):
            if index + 1 < len(tokens):
                raise ReadOnlyRefused("only one statement is allowed; found more after a ';'")
            return tokens[:index]
    return tokens


def _first_keyword(tokens: list[_Token], index: int) -> tuple[str, int]:
    """The statement keyword at `index`, after any opening brackets, as in (SELECT 1)."""
    while index < len(tokens) and tokens[index].is_punctuation("("):
        index += 1
    if index == len(tokens):
        return "", index
    token = tokens[index]
    return (token.text.upper() if token.kind == _WORD else token.text), index


def _check_statement_kind(tokens: list[_Token]) -> None:
    keyword, index = _first_keyword(tokens, 0)
    if keyword not in _ALLOWED_FIRST_KEYWORDS:
        allowed = ", ".join(sorted(_ALLOWED_FIRST_KEYWORDS))
        raise ReadOnlyRefused(f"only read statements ({allowed}) are allowed, not {keyword or 'this'}")
    if keyword != "EXPLAIN":
        return
    # EXPLAIN [kind] [setting = value, ...] <statement>: only reads may be explained, because
    # some kinds (PIPELINE, ESTIMATE) build the explained statement's plan against real tables.
    index += 1
    if index < len(tokens) and tokens[index].kind == _WORD and tokens[index].text.upper() in _EXPLAIN_KINDS:
        index += 1
    elif (
        index + 1 < len(tokens) and tokens[index].is_keyword("QUERY") and tokens[index + 1].is_keyword("TREE")
    ):
        index += 2
    while index + 2 < len(tokens) and tokens[index].kind == _WORD and tokens[index + 1].is_punctuation("="):
        index += 3
        if index < len(tokens) and tokens[index].is_punctuation(","):
            index += 1
    explained, _ = _first_keyword(tokens, index)
    if explained not in _EXPLAINABLE_FIRST_KEYWORDS:
        raise ReadOnlyRefused(
            f"EXPLAIN is allowed for SELECT and WITH queries only, not {explained or 'this'}"
        )


def _reaches_outside(function: str) -> bool:
    name = function.lower()
    return name in _OUTSIDE_FUNCTIONS or name.startswith(_OUTSIDE_FUNCTION_PREFIXES)


def _check_contents(tokens: list[_Token]) -> None:
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.kind in (_WORD, _QUOTED_IDENTIFIER) and following is not None:
            if following.is_punctuation("(") and _reaches_outside(token.name):
                raise ReadOnlyRefused(
                    f"function {token.name}() reaches outside the database and is not allowed"
                )
            for first, second in _FORBIDDEN_PAIRS:
                if token.is_keyword(first) and following.is_keyword(second):
                    raise ReadOnlyRefused(f"{first} {second} is not allowed in a read-only query")
    settings_at = next((i for i, token in enumerate(tokens) if token.is_keyword("SETTINGS")), None)
    if settings_at is not None and any(
        token.kind in (_WORD, _QUOTED_IDENTIFIER) and token.name.lower() == "readonly"
        for token in tokens[settings_at + 1 :]
    ):
        raise ReadOnlyRefused("a SETTINGS clause may not change readonly")


def check_read_only(sql: str) -> str:
    """The single read-only statement in `sql`, trimmed of comments and `;` around it.

    Raises ReadOnlyRefused, with the reason, for anything else. This is the first of the endpoint's
    defences, and the only one against what chDB's readonly mode lets through (INTO OUTFILE and
    the scalar file() function), so it refuses whatever it cannot read with certainty.
    """
    tokens = _single_statement(_tokenize(sql))
    if not tokens:
        raise ReadOnlyRefused("the query is empty")
    _check_statement_kind(tokens)
    _check_contents(tokens)
    return sql[tokens[0].start : tokens[-1].end]


# --- Results as JSON and CSV -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A query's answer as the endpoint sends it.

    Rows are tuples, as in clickhouse-connect's `result_rows`, of JSON-safe values (`JsonValue`, see
    `json_safe`); typed `Any` because a caller knows each column's type from `types` and the query,
    which a union over every JSON value would make it re-prove at each use.
    """

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    elapsed_ms: float = 0.0


def json_safe(value: object) -> JsonValue:
    """`value`, as clickhouse-connect returns it, in a form JSON can carry without loss of meaning.

    Datetimes and dates become ISO 8601, Decimals, UUIDs and IP addresses strings (a float would
    round a Decimal), bytes base64, tuples lists, map keys strings, and NaN or infinities the
    strings "nan", "inf" and "-inf" (JSON has no literal for them).
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | UUID | IPv4Address | IPv6Address):
        return str(value)
    if isinstance(value, Enum):
        return json_safe(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {_json_key(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    return str(value)


def _json_key(key: object) -> str:
    safe = json_safe(key)
    return safe if isinstance(safe, str) else json.dumps(safe)


def render_json(result: QueryResult) -> bytes:
    document = {
        "columns": result.columns,
        "types": result.types,
        "rows": result.rows,
        "elapsed_ms": result.elapsed_ms,
    }
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _csv_cell(value: JsonValue) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def render_csv(result: QueryResult) -> bytes:
    """The result as CSV with a header row; arrays, tuples and maps are cells holding JSON."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows([_csv_cell(value) for value in row] for row in result.rows)
    return buffer.getvalue().encode()


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
    runs one of its named queries (sinks/dashboard.py) and answers like `/query`; `GET
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
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"query server port must be within 0..65535, not {port}")
        if max_execution_s <= 0 or max_result_rows <= 0:
            raise ConfigurationError(
                "query server limits (max_execution_s, max_result_rows) must be positive"
            )
        self._client = client
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
            log.error("readout failed", extra={"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
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
        self._send(cast(_HttpServer, self.server).query_server._respond(method, self.path, body))

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
