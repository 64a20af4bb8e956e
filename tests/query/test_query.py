"""The read-only query endpoint: the SQL check alone, what chDB's readonly mode does and does not
stop, and a real QueryServer answering a QueryClient over HTTP."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from onfinish.errors import ConfigurationError, OnfinishError
from onfinish.query.client import QueryClient
from onfinish.query.guard import ReadOnlyRefused, check_read_only
from onfinish.query.results import QueryFailed, QueryResult, json_safe, render_csv
from onfinish.query.server import QueryServer

UUID_1 = UUID("6f1c1f3e-8d2a-4f5b-9c1e-0a1b2c3d4e5f")
UUID_2 = UUID("0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a")


class Engine:
    """The module's one chDB client, with where its data lives."""

    def __init__(self, client: Any, directory: Path) -> None:
        self.client = client
        self.directory = directory

    def count(self) -> int:
        return int(self.client.query("SELECT count() FROM q.events").result_rows[0][0])


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    # chDB holds one data directory per process: the client must be closed before another opens.
    directory = tmp_path_factory.mktemp("q")
    client = clickhouse_connect.get_client(dsn=f"chdb:///{directory}")
    try:
        client.command("CREATE DATABASE q")
        client.command(
            "CREATE TABLE q.events (id UInt32, name String, created DateTime64(3), amount Decimal(10, 2), "
            "uid UUID, tags Array(String)) ENGINE = MergeTree ORDER BY id"
        )
        client.command("CREATE TABLE q.scratch (id UInt32) ENGINE = MergeTree ORDER BY id")
        client.command(
            "INSERT INTO q.events VALUES "
            f"(1, 'alpha', '2024-05-01 12:30:00.250', 1.50, '{UUID_1}', ['a', 'b']), "
            f"(2, 'beta', '2024-05-02 08:00:00.000', 20.25, '{UUID_2}', [])"
        )
        yield Engine(client, directory)
    finally:
        client.close()


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[QueryServer]:
    with QueryServer(engine.client) as running:
        yield running


@pytest.fixture(scope="module")
def query_client(server: QueryServer) -> QueryClient:
    return QueryClient(server.url, timeout=30)


def http(url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """Status, content type and body of one request, whatever the status."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def assert_owner_can_write(engine: Engine) -> None:
    """The owner's handle is not left in readonly mode by anything the endpoint did."""
    assert engine.client.query("SELECT getSetting('readonly')").result_rows == [(0,)]
    engine.client.command("INSERT INTO q.scratch VALUES (1)")


# --- check_read_only ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "normalised"),
    [
        ("SELECT 1", "SELECT 1"),
        ("  select * from q.events  ;  ", "select * from q.events"),
        ("WITH 2 AS x SELECT x", "WITH 2 AS x SELECT x"),
        ("SHOW TABLES FROM q", "SHOW TABLES FROM q"),
        ("DESCRIBE TABLE q.events", "DESCRIBE TABLE q.events"),
        ("DESC q.events", "DESC q.events"),
        ("EXPLAIN SELECT 1", "EXPLAIN SELECT 1"),
        ("EXPLAIN PLAN header = 1 SELECT 1", "EXPLAIN PLAN header = 1 SELECT 1"),
        ("EXPLAIN QUERY TREE SELECT 1", "EXPLAIN QUERY TREE SELECT 1"),
        ("EXISTS TABLE q.events", "EXISTS TABLE q.events"),
        ("(SELECT 1) UNION ALL (SELECT 2)", "(SELECT 1) UNION ALL (SELECT 2)"),
        ("SELECT ';'", "SELECT ';'"),
        ("SELECT 'it''s; DROP TABLE t'", "SELECT 'it''s; DROP TABLE t'"),
        ("SELECT 'a\\'; DROP TABLE t'", "SELECT 'a\\'; DROP TABLE t'"),
        ('SELECT 1 AS ";"', 'SELECT 1 AS ";"'),
        ("SELECT $$; DROP TABLE t$$", "SELECT $$; DROP TABLE t$$"),
        ("SELECT $tag$ ' $tag$", "SELECT $tag$ ' $tag$"),
        ("-- why\nSELECT 1 -- a trailing comment; DROP TABLE t", "SELECT 1"),
        ("/* lead */ SELECT /* inner; */ 1 /* trail */;", "SELECT /* inner; */ 1"),
        ("SELECT /* /* nested */ still a comment; */ 1", "SELECT /* /* nested */ still a comment; */ 1"),
        ("# hash comment\nSELECT 1", "SELECT 1"),
        ("SELECT 'file(x)', 'INTO OUTFILE', 'SETTINGS readonly = 0'", None),
        ("SELECT file, url FROM q.events", None),
        ("SELECT domain(url) FROM logs", None),
        ("SELECT 1_000, 0x1F, 1e-3, .5, t.1 FROM (SELECT tuple(1) AS t)", None),
        ("SELECT readonly FROM settings_table", None),
        ("SELECT 1 SETTINGS max_threads = 1", None),
        ("SELECT `file` FROM q.events", None),
    ],
)
def test_read_statements_are_accepted(sql: str, normalised: str | None) -> None:
    assert check_read_only(sql) == (sql.strip() if normalised is None else normalised)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("", "empty"),
        ("  ;  ", "empty"),
        ("-- only a comment", "empty"),
        ("INSERT INTO q.events VALUES (3, 'c', now(), 1, generateUUIDv4(), [])", "not INSERT"),
        ("DROP TABLE q.events", "not DROP"),
        ("ALTER TABLE q.events DELETE WHERE 1", "not ALTER"),
        ("CREATE TABLE t (x UInt8) ENGINE = Memory", "not CREATE"),
        ("TRUNCATE TABLE q.events", "not TRUNCATE"),
        ("OPTIMIZE TABLE q.events FINAL", "not OPTIMIZE"),
        ("SYSTEM DROP MARK CACHE", "not SYSTEM"),
        ("KILL QUERY WHERE 1", "not KILL"),
        ("SET readonly = 0", "not SET"),
        ("GRANT SELECT ON *.* TO x", "not GRANT"),
        ("DETACH TABLE q.events", "not DETACH"),
        ("ATTACH TABLE q.events", "not ATTACH"),
        ("RENAME TABLE q.events TO q.gone", "not RENAME"),
        ("USE q", "not USE"),
        ("'SELECT' 1", "not 'SELECT'"),
        ("SELECT 1; DROP TABLE t", "one statement"),
        ("SELECT 1;;", "one statement"),
        ("SELECT ';'; DROP TABLE t", "one statement"),
        ("SELECT 1 /* ; */ ; SELECT 2", "one statement"),
        ("SELECT * FROM file('x')", "file()"),
        ("SELECT * FROM FILE ('x')", "FILE()"),
        ("SELECT * FROM `file`('x')", "file()"),
        ("SELECT * FROM \"file\" /* c */ ('x')", "file()"),
        ("SELECT file('/etc/hostname')", "file()"),
        ("SELECT * FROM url('http://example.com/x', CSV, 'a String')", "url()"),
        ("SELECT * FROM s3('https://bucket/x')", "s3()"),
        ("SELECT * FROM s3Cluster('c', 'https://bucket/x')", "s3Cluster()"),
        ("SELECT * FROM remote('h:9000', db.t)", "remote()"),
        ("SELECT * FROM mysql('h:3306', 'db', 't', 'u', 'p')", "mysql()"),
        ("SELECT * FROM postgresql('h:5432', 'db', 't', 'u', 'p')", "postgresql()"),
        ("SELECT * FROM hdfs('hdfs://h/x')", "hdfs()"),
        ("SELECT * FROM executable('x.sh', CSV, 'a String')", "executable()"),
        ("SELECT * FROM input('a String')", "input()"),
        ("SELECT * FROM Python(df)", "Python()"),
        ("SELECT * FROM icebergS3Cluster('c', 'x')", "icebergS3Cluster()"),
        ("SELECT * FROM (SELECT * FROM url('http://x'))", "url()"),
        ("SELECT 1 INTO OUTFILE '/tmp/x.csv'", "INTO OUTFILE"),
        ("SELECT 1 into /* c */ outfile '/tmp/x.csv'", "INTO OUTFILE"),
        ("WITH 1 AS x INSERT INTO t SELECT x", "INSERT INTO"),
        ("SELECT 1 SETTINGS readonly = 0", "readonly"),
        ("SELECT 1 SETTINGS max_threads = 1, READONLY = 0", "readonly"),
        ("SELECT 1 SETTINGS `readonly` = 0", "readonly"),
        ("EXPLAIN AST DROP TABLE q.events", "EXPLAIN"),
        ("EXPLAIN PIPELINE INSERT INTO t SELECT 1", "EXPLAIN"),
        ("SELECT 'unterminated", "unterminated"),
        ('SELECT "unterminated', "unterminated"),
        ("SELECT 1 /* unterminated", "unterminated"),
        ("SELECT 1 \\G", "unexpected character"),
        ("SELECT 1 \uff33\uff25\uff2c", "unexpected character"),  # fullwidth letters
        # ClickHouse reads `1e--1` as the number 1e- then -1: what follows is code, not a comment.
        ("SELECT 1e--1, * FROM file('x')", "file()"),
        # ... and a heredoc hides a quote that would otherwise open a string over file().
        ("SELECT $$'$$, * FROM file('x') -- '", "file()"),
    ],
)
def test_anything_else_is_refused_with_its_reason(sql: str, reason: str) -> None:
    with pytest.raises(ReadOnlyRefused) as refused:
        check_read_only(sql)
    assert reason.lower() in refused.value.reason.lower()
    assert isinstance(refused.value, OnfinishError)


# --- What chDB's readonly mode does, through clickhouse-connect -----------------------------------


def test_readonly_setting_is_enforced_on_the_query_path(engine: Engine) -> None:
    for sql in ("SELECT * FROM file('x.csv')", "SELECT count() FROM q.events SETTINGS max_threads = 1"):
        with pytest.raises(DatabaseError) as refused:
            engine.client.query(sql, settings={"readonly": 1})
        assert refused.value.name == "READONLY"
    assert engine.client.query("SELECT getSetting('readonly')", settings={"readonly": 1}).result_rows == [
        (1,)
    ]
    assert_owner_can_write(engine)


def test_readonly_setting_does_not_stop_into_outfile_nor_scalar_file(engine: Engine, tmp_path: Path) -> None:
    """Why check_read_only refuses INTO OUTFILE and file(): the engine's readonly mode lets both through."""
    written = tmp_path / "out.csv"
    engine.client.query(f"SELECT 42 INTO OUTFILE '{written}'", settings={"readonly": 1})
    assert written.stat().st_size > 0  # in Native format: clickhouse-connect appends FORMAT Native
    secret = tmp_path / "secret.txt"
    secret.write_text("not for analysts")
    read = engine.client.query(f"SELECT file('{secret}')", settings={"readonly": 1}).result_rows
    assert read == [("not for analysts",)]


def test_readonly_through_raw_query_leaves_the_handle_read_only(engine: Engine) -> None:
    """Why the server only ever calls Client.query: raw_query and command apply settings with SET, and
    the SET that should restore them is refused in readonly mode. A second handle on the same
    directory (chDB allows several) shows it without spoiling the module's client."""
    other = clickhouse_connect.get_client(dsn=f"chdb:///{engine.directory}")
    try:
        other.raw_query("SELECT 1", settings={"readonly": 1})
        assert other.query("SELECT getSetting('readonly')").result_rows == [(1,)]
        with pytest.raises(DatabaseError, match="readonly"):
            other.command("INSERT INTO q.scratch VALUES (2)")
    finally:
        other.close()
    assert_owner_can_write(engine)


# --- Values as JSON and CSV -----------------------------------------------------------------------


def test_values_become_json_safe() -> None:
    values = [
        dt.datetime(2024, 5, 1, 12, 30, 0, 250000),
        dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
        dt.date(2024, 5, 1),
        Decimal("20.25"),
        UUID_1,
        b"\xff\x00",
        (1, "a"),
        {"k": [1.5, None]},
        {1: "one"},
        float("nan"),
        float("-inf"),
        2**64 - 1,
        True,
    ]
    assert [json_safe(value) for value in values] == [
        "2024-05-01T12:30:00.250000",
        "2024-05-01T00:00:00+00:00",
        "2024-05-01",
        "20.25",
        str(UUID_1),
        "/wA=",
        [1, "a"],
        {"k": [1.5, None]},
        {"1": "one"},
        "nan",
        "-inf",
        2**64 - 1,
        True,
    ]


def test_csv_has_a_header_and_json_in_nested_cells() -> None:
    result = QueryResult(
        columns=["id", "tags", "note", "ok"],
        types=["UInt8", "Array(String)", "Nullable(String)", "Bool"],
        rows=[(1, ["a", "b"], None, True), (2, [], 'say "hi", then go', False)],
    )
    assert render_csv(result).decode() == (
        'id,tags,note,ok\n1,"[""a"",""b""]",,true\n2,[],"say ""hi"", then go",false\n'
    )


# --- The server and its client --------------------------------------------------------------------


def test_select_returns_rows_and_types(query_client: QueryClient) -> None:
    result = query_client.query("SELECT id, name, created, amount, uid, tags FROM q.events ORDER BY id")
    assert result.columns == ["id", "name", "created", "amount", "uid", "tags"]
    assert result.types == ["UInt32", "String", "DateTime64(3)", "Decimal(10, 2)", "UUID", "Array(String)"]
    assert result.rows == [
        (1, "alpha", "2024-05-01T12:30:00.250000", "1.50", str(UUID_1), ["a", "b"]),
        (2, "beta", "2024-05-02T08:00:00", "20.25", str(UUID_2), []),
    ]
    assert result.elapsed_ms >= 0
    assert dt.datetime.fromisoformat(str(result.rows[0][2])) == dt.datetime(2024, 5, 1, 12, 30, 0, 250000)


def test_json_document_is_the_documented_shape(server: QueryServer) -> None:
    status, content_type, body = http(f"{server.url}/query?sql={quote('SELECT count() AS n FROM q.events')}")
    assert (status, content_type) == (200, "application/json")
    document = json.loads(body)
    assert set(document) == {"columns", "types", "rows", "elapsed_ms"}
    assert (document["columns"], document["types"], document["rows"]) == (["n"], ["UInt64"], [[2]])


def test_csv_format(server: QueryServer) -> None:
    status, content_type, body = http(
        f"{server.url}/query?format=csv", b"SELECT id, name, created, tags FROM q.events ORDER BY id"
    )
    assert (status, content_type) == (200, "text/csv; charset=utf-8")
    assert list(csv.reader(io.StringIO(body.decode()))) == [
        ["id", "name", "created", "tags"],
        ["1", "alpha", "2024-05-01T12:30:00.250000", '["a","b"]'],
        ["2", "beta", "2024-05-02T08:00:00", "[]"],
    ]


def test_unknown_format_is_a_bad_request(server: QueryServer) -> None:
    status, _, body = http(f"{server.url}/query?format=xml&sql=SELECT%201")
    assert status == 400
    assert "json or csv" in json.loads(body)["error"]


def test_the_endpoint_runs_queries_read_only(query_client: QueryClient) -> None:
    assert query_client.query("SELECT getSetting('readonly')").rows == [(1,)]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO q.events VALUES (3, 'gamma', now(), 1, generateUUIDv4(), [])",
        "DROP TABLE q.events",
        "TRUNCATE TABLE q.events",
        "ALTER TABLE q.events DELETE WHERE 1",
        "SELECT 1; DROP TABLE q.events",
    ],
)
def test_writes_are_refused_and_change_nothing(
    engine: Engine, server: QueryServer, query_client: QueryClient, sql: str
) -> None:
    before = engine.count()
    with pytest.raises(ReadOnlyRefused):
        query_client.query(sql)
    status, content_type, body = http(f"{server.url}/query", sql.encode())
    assert (status, content_type) == (403, "application/json")
    assert json.loads(body)["error"]
    assert engine.count() == before == 2
    assert_owner_can_write(engine)


def test_what_the_engine_refuses_in_readonly_mode_is_a_403(engine: Engine, query_client: QueryClient) -> None:
    with pytest.raises(ReadOnlyRefused, match="readonly mode"):
        query_client.query("SELECT count() FROM q.events SETTINGS max_threads = 1")
    assert_owner_can_write(engine)


def test_statements_clickhouse_connect_would_run_as_commands_are_refused(
    engine: Engine, query_client: QueryClient
) -> None:
    """SHOW ROW POLICIES passes the SQL check, but clickhouse-connect sends it down command(), whose
    settings would leave the owner's handle read-only."""
    assert check_read_only("SHOW ROW POLICIES") == "SHOW ROW POLICIES"
    with pytest.raises(ReadOnlyRefused, match="not served"):
        query_client.query("SHOW ROW POLICIES")
    assert_owner_can_write(engine)


def test_clickhouse_error_is_query_failed_with_the_message(query_client: QueryClient) -> None:
    with pytest.raises(QueryFailed) as failed:
        query_client.query("SELECT * FROM q.no_such_table")
    assert failed.value.status == 400
    assert "UNKNOWN_TABLE" in str(failed.value)
    assert "no_such_table" in str(failed.value)
    assert isinstance(failed.value, OnfinishError)


def test_error_messages_are_truncated(server: QueryServer) -> None:
    status, _, body = http(f"{server.url}/query", f"SELECT * FROM q.missing_{'x' * 3000}".encode())
    assert status == 400
    assert len(json.loads(body)["error"]) == 1000


def test_result_rows_are_bounded(engine: Engine) -> None:
    with QueryServer(engine.client, max_result_rows=5) as bounded:
        client = QueryClient(bounded.url)
        assert len(client.query("SELECT number FROM numbers(5)").rows) == 5
        with pytest.raises(QueryFailed, match="TOO_MANY_ROWS"):
            client.query("SELECT number FROM numbers(100)")


def test_health_and_unknown_paths(server: QueryServer) -> None:
    assert http(f"{server.url}/health")[0::2] == (200, b'{"status": "ok"}')
    status, content_type, body = http(f"{server.url}/nowhere")
    assert (status, content_type) == (404, "application/json")
    assert "nowhere" in json.loads(body)["error"]
    assert http(f"{server.url}/health", b"x")[0] == 405


def test_concurrent_queries_all_get_their_own_answers(query_client: QueryClient) -> None:
    def ask(worker: int) -> list[list[Any]]:
        answers = []
        for round_ in range(5):
            offset = worker * 1000 + round_ * 10
            result = query_client.query(f"SELECT {offset} + number AS n FROM numbers(3) ORDER BY n")
            answers.append([row[0] for row in result.rows])
        return answers

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, range(8)))
    for worker, answers in enumerate(results):
        expected = [[worker * 1000 + round_ * 10 + k for k in range(3)] for round_ in range(5)]
        assert answers == expected


def test_logs_keep_only_the_start_of_the_sql(
    server: QueryServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    sql = f"SELECT '{'x' * 300}MARKER' AS long_literal"
    with caplog.at_level(logging.DEBUG, logger="onfinish.query.server"):
        assert http(f"{server.url}/query?sql={quote(sql)}")[0] == 200
    logged = [record for record in caplog.records if record.name == "onfinish.query.server"]
    assert logged
    assert all(len(getattr(record, "sql", "")) <= 200 for record in logged)
    assert "MARKER" not in caplog.text
    assert "MARKER" not in capfd.readouterr().err


def test_client_reports_an_unreachable_endpoint() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(QueryFailed, match="unreachable"):
        QueryClient(f"http://127.0.0.1:{port}", timeout=5).query("SELECT 1")


@pytest.mark.parametrize("url", ["ftp://host/x", "file:///etc/passwd", "localhost:8123"])
def test_client_accepts_only_http_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        QueryClient(url)


def test_server_validates_its_configuration(engine: Engine) -> None:
    with pytest.raises(ConfigurationError):
        QueryServer(engine.client, port=70000)
    with pytest.raises(ConfigurationError):
        QueryServer(engine.client, max_result_rows=0)


def test_stop_releases_the_port_and_start_stop_are_idempotent(engine: Engine) -> None:
    server = QueryServer(engine.client)
    server.start()
    server.start()
    url = server.url
    assert http(f"{url}/health")[0] == 200
    server.stop()
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/health", timeout=5)
