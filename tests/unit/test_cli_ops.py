"""The analyst and ops commands: their help, their options, and what they print, without Kafka.

Queries go to a fake Querier (monkeypatched in for `onfinish.analytics.querier`) that answers the
report's SQL with known rows; the Kafka-facing parts (`tail`, `status`) are replaced by fakes at
the command boundary, and their pure pieces (decoding, filters, metrics) are tested directly.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, datetime, timedelta

import fastavro
import pytest
from typer.testing import CliRunner

from onfinish import cli
from onfinish.cli import console as cli_console
from onfinish.errors import ConfigurationError
from onfinish.insights import cli as insights_cli
from onfinish.insights import report as reports
from onfinish.inspection import status as pipeline_status
from onfinish.inspection import topics
from onfinish.query import client as query_client
from onfinish.query import sql as query_sql
from onfinish.query.results import QueryResult
from onfinish.schemas import wire
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.histogram_grid import DEFAULT_GRID
from onfinish.settings import KafkaSettings

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    # Wide enough that no number in a table is folded over two lines.
    monkeypatch.setattr(cli_console.console, "width", 250)


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def _result(columns: list[str], rows: list[tuple[object, ...]]) -> QueryResult:
    return QueryResult(columns=columns, types=["String"] * len(columns), rows=rows)


class FakeQuerier:
    """Answers the report's and the dlq commands' queries with fixed rows, and keeps the SQL."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def query(self, sql: str) -> QueryResult:
        self.sql.append(sql)
        if "FROM windows_1m FINAL" in sql:
            columns = [
                "group_key", "calls_total", "errors_total", "cost_total", "cache_hits_total", "fallbacks_total",
                "quality_total", *(f"{h}_{p}" for h in ("latency", "ttft") for p in ("p50", "p95", "p99")),
            ]  # fmt: skip
            return _result(
                columns,
                [
                    ("gpt-4o", 1234, 56, 12.3456, 100, 20, 987.2, 812.5, 2417.0, 5003.0, 301.0, 702.0, 990.0),
                    ("embed-3", 400, 0, 0.04, 0, 0, 360.0, 40.0, 90.0, 150.0, None, None, None),
                ],
            )
        if "FROM sessions FINAL" in sql:
            return _result(
                ["session_id", "user_id", "service", "environment", "turns", "cost_usd", "errors", "first_at",
                 "last_at", "closed"],
                [("sess-big", "u-1", "chat", "production", 9, 4.5, 1, "2026-11-23T04:00:00", "2026-11-23T04:30:00",
                  False)],
            )  # fmt: skip
        if "FROM alerts FINAL" in sql:
            return _result(
                ["at", "rule", "severity", "subject_kind", "subject", "observed", "threshold", "message"],
                [
                    (
                        "2026-11-23T04:45:00",
                        "error_rate_high",
                        "critical",
                        "model",
                        "gpt-4o",
                        0.3,
                        0.1,
                        "errors up",
                    )
                ],
            )
        if "FROM events FINAL" in sql:
            return _result(["events_total"], [(1634,)])
        if "GROUP BY reason\n" in sql:
            return _result(["reason", "letters"], [("truncated", 7)])
        if "GROUP BY stage, reason, source_topic" in sql:
            return _result(
                [
                    "stage",
                    "reason",
                    "source_topic",
                    "letters",
                    "value_bytes_total",
                    "first_received",
                    "last_received",
                ],
                [
                    (
                        "decode",
                        "truncated",
                        "onfinish.raw",
                        7,
                        700,
                        "2026-11-22T10:00:00",
                        "2026-11-23T01:00:00",
                    )
                ],
            )
        if "length(value) AS base64_chars" in sql:
            return _result(
                ["stage", "reason", "message", "source_topic", "source_partition", "source_offset", "value_bytes",
                 "base64_chars", "received_at", "value_base64"],
                [("decode", "truncated", "body ends early", "onfinish.raw", 3, 42, 9, 12, "2026-11-23T01:00:00",
                  base64.b64encode(b"secret-ab").decode() if "AS value_base64" in sql and "NULL" not in sql else None)],
            )  # fmt: skip
        if "uniqExact" in sql:
            return _result(["letters"], [(5,)])
        raise AssertionError(f"unexpected query: {sql}")


@pytest.fixture
def fake(monkeypatch) -> FakeQuerier:
    querier = FakeQuerier()
    monkeypatch.setattr(query_client, "querier", lambda *_: querier)
    return querier


# --- help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        (["report"], ["--since", "--by", "--format", "FINAL", "onfinish sink", "Example"]),
        (["tail"], ["--follow", "--filter", "--limit", "registry", "Example"]),
        (["dlq"], ["list", "show", "replay"]),
        (["dlq", "list"], ["--since", "dlq table", "Example"]),
        (["dlq", "show"], ["--reason", "--limit", "--bytes", "personal data", "Example"]),
        (["dlq", "replay"], ["--reason", "--dry-run", "--source-topic", "onfinish.replayed=1", "Example"]),
        (["status"], ["lag", "/health", "/metrics", "Example"]),
        (["loadgen"], ["--rate", "--plant", "--predraw", "5 KB"]),
    ],
)
def test_each_command_explains_itself(command, mentions):
    result = runner.invoke(cli.app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in mentions:
        assert text in _flat(result.output), (command, text)


# --- --since ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
        ("90s", timedelta(seconds=90)),
        ("2W", timedelta(weeks=2)),
    ],
)
def test_periods_parse(text, period):
    assert query_sql.parse_period(text) == period
    assert query_sql.parse_period(query_sql.describe_period(period)) == period


@pytest.mark.parametrize("text", ["", "1", "h", "1.5h", "-1h", "0m", "1y", "1h30m"])
def test_bad_periods_are_refused(text):
    with pytest.raises(ValueError, match="period"):
        query_sql.parse_period(text)


def test_since_reaches_the_sql_in_seconds(fake):
    result = runner.invoke(cli.app, ["report", "--since", "30m", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert all("toIntervalSecond(1800)" in sql for sql in fake.sql)
    runner.invoke(cli.app, ["dlq", "list", "--since", "7d"])
    assert "toIntervalSecond(604800)" in fake.sql[-1]


@pytest.mark.parametrize("command", [["report"], ["dlq", "list"]])
def test_a_bad_since_is_a_clear_usage_error(fake, command):
    result = runner.invoke(cli.app, [*command, "--since", "soon"])
    assert result.exit_code == 2
    assert "--since" in result.output and "not a period" in _flat(result.output)
    assert "Traceback" not in result.output
    assert fake.sql == []


# --- report ----------------------------------------------------------------------------------------


def test_report_table_shows_the_numbers(fake):
    result = runner.invoke(cli.app, ["report", "--since", "1h"])
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("gpt-4o", "1,234", "95.5%", "4.5%", "812 / 2,417 / 5,003", "301 / 702 / 990", "12.3456"):
        assert text in out, text
    assert "embed-3" in out and "- / - / -" in out  # no TTFT for embeddings
    assert "sess-big" in out and "error_rate_high" in out
    assert "Events stored in the last 1h: 1,634; dead letters: 7 (truncated 7)" in out
    assert "model_id AS group_key" in fake.sql[0]


def test_report_json_and_csv_carry_the_numbers(fake):
    result = runner.invoke(cli.app, ["report", "--by", "feature", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    first = document["groups"][0]
    assert (first["group"], first["calls"], first["errors"]) == ("gpt-4o", 1234, 56)
    assert first["error_rate"] == pytest.approx(56 / 1234) and first["latency_p95_ms"] == 2417.0
    assert document["groups"][1]["ttft_p95_ms"] is None
    assert document["by"] == "feature" and document["totals"] == {
        "events": 1634,
        "dead_letters": {"truncated": 7},
    }
    assert "feature_id AS group_key" in fake.sql[0]

    result = runner.invoke(cli.app, ["report", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["group"] for r in rows] == ["gpt-4o", "embed-3"]
    assert float(rows[0]["cache_hit_rate"]) == 100 / 1234 and float(rows[0]["cost_usd"]) == 12.3456
    assert rows[1]["ttft_p50_ms"] == ""


def test_report_rejects_an_unknown_grouping_and_format(fake):
    assert runner.invoke(cli.app, ["report", "--by", "tenant"]).exit_code == 2
    assert runner.invoke(cli.app, ["report", "--format", "xml"]).exit_code == 2


def test_report_without_a_running_sink_says_what_to_start(monkeypatch):
    monkeypatch.setattr(
        query_client, "querier", lambda *_: query_client.EndpointQuerier("http://127.0.0.1:9")
    )
    result = runner.invoke(cli.app, ["report"])
    assert result.exit_code == 1
    assert "onfinish sink" in _flat(result.output) and "Traceback" not in result.output


def test_the_embedded_default_queries_the_sinks_endpoint():
    from onfinish.settings import ClickHouseSettings, StackSettings
    from onfinish.sinks.settings import SinkSettings

    chosen = query_client.querier(
        ClickHouseSettings(dsn=None), StackSettings(), SinkSettings(query_port=18124)
    )
    assert isinstance(chosen, query_client.EndpointQuerier) and chosen.url == "http://127.0.0.1:18124"
    chosen = query_client.querier(ClickHouseSettings(dsn="chdb:///tmp/x"), StackSettings(), SinkSettings())
    assert isinstance(chosen, query_client.EndpointQuerier)
    with pytest.raises(ConfigurationError, match="ONFINISH_SINK_QUERY_PORT"):
        query_client.querier(ClickHouseSettings(), StackSettings(), SinkSettings(query_port=0))


# --- dlq -------------------------------------------------------------------------------------------


def test_dlq_list_and_show(fake):
    result = runner.invoke(cli.app, ["dlq", "list"])
    assert result.exit_code == 0, result.output
    assert "truncated" in result.output and "onfinish.raw" in result.output and "700" in result.output

    result = runner.invoke(cli.app, ["dlq", "show", "--reason", "truncated"])
    assert result.exit_code == 0, result.output
    assert "body ends early" in result.output and "9 bytes (12 base64 chars)" in result.output
    assert base64.b64encode(b"secret-ab").decode() not in result.output  # values stay hidden...
    assert "LIMIT 20" in fake.sql[-1]

    result = runner.invoke(cli.app, ["dlq", "show", "--reason", "truncated", "--bytes", "--limit", "3"])
    assert base64.b64encode(b"secret-ab").decode() in result.output  # ...unless asked for
    assert "LIMIT 3" in fake.sql[-1]


def test_dlq_show_of_an_unknown_reason_lists_the_reasons(fake):
    result = runner.invoke(cli.app, ["dlq", "show", "--reason", "bogus"])
    assert result.exit_code == 1
    assert "contract_violation" in result.output and "Traceback" not in result.output


def test_dlq_replay_dry_run_counts_without_sending(fake):
    result = runner.invoke(cli.app, ["dlq", "replay", "--reason", "processing_error", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "Would replay 5 dead letters of reason processing_error" in result.output
    assert "reason = 'processing_error'" in fake.sql[-1]


# --- tail ------------------------------------------------------------------------------------------


def test_tail_prints_json_lines(monkeypatch):
    seen: dict[str, object] = {}

    def fake_tail(kafka, registry, topic, *, follow, filters, limit):
        seen.update(topic=topic, follow=follow, filters=filters, limit=limit)
        yield {"model_id": "gpt-4o", "_kafka": {"partition": 0, "offset": 1}}
        yield {"undecodable": "first byte 0x7b, expected the magic byte 0x00", "bytes": 14}

    monkeypatch.setattr(topics, "tail", fake_tail)
    result = runner.invoke(
        cli.app,
        ["tail", "enriched", "--filter", "model_id=gpt-4o", "--filter", "status=error", "--limit", "2", "-f"],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["model_id"] == "gpt-4o" and lines[1]["bytes"] == 14
    assert seen == {
        "topic": "enriched",
        "follow": True,
        "filters": ["model_id=gpt-4o", "status=error"],
        "limit": 2,
    }


def test_tail_of_an_unknown_topic_is_one_clear_error():
    result = runner.invoke(cli.app, ["tail", "everything"])
    assert result.exit_code == 1
    assert "raw, enriched, windows, sessions, alerts, dlq" in _flat(result.output)
    assert "Traceback" not in result.output


def test_topic_names_and_filters():
    kafka = KafkaSettings(topic_prefix="acme")
    assert topics.topic_name(kafka, "raw") == "acme.raw" == topics.topic_name(kafka, "acme.raw")
    with pytest.raises(ConfigurationError):
        topics.topic_name(kafka, "onfinish.raw")
    assert topics.parse_filters(["a=b", "url=x=y", "empty="]) == [("a", "b"), ("url", "x=y"), ("empty", "")]
    with pytest.raises(ConfigurationError, match="field=value"):
        topics.parse_filters(["model_id"])
    record = {"model_id": "gpt-4o", "streamed": True, "retry_count": 2, "error_code": None}
    assert topics.matches(record, [("model_id", "gpt-4o"), ("streamed", "true"), ("retry_count", "2")])
    assert topics.matches(record, [("error_code", "null")])
    assert not topics.matches(record, [("model_id", "gpt-4o"), ("retry_count", "3")])
    assert not topics.matches(record, [("absent", "")])


def test_values_are_decoded_with_the_writer_schema_fetched_once_by_id():
    writer = {
        "type": "record",
        "name": "Probe",
        "namespace": "io.onfinish.test",
        "fields": [
            {"name": "model_id", "type": "string"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        ],
    }
    body = io.BytesIO()
    moment = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    fastavro.schemaless_writer(body, fastavro.parse_schema(writer), {"model_id": "gpt-4o", "at": moment})
    framed = wire.frame(7, body.getvalue())
    fetched = []

    def fetch(schema_id):
        fetched.append(schema_id)
        return json.dumps(writer) if schema_id == 7 else None

    decoder = topics.ValueDecoder(wire.WriterSchemas(fetch))
    assert decoder.decode(framed) == {"model_id": "gpt-4o", "at": moment.isoformat()}
    assert decoder.decode(framed)["model_id"] == "gpt-4o"
    assert fetched == [7]  # cached by id
    assert decoder.decode(b'{"json": 1}') == {
        "undecodable": "first byte 0x7b, expected the magic byte 0x00",
        "bytes": 11,
    }
    unknown = decoder.decode(b"\x00\x00\x00\x00\x09" + body.getvalue())
    assert "unknown" in str(unknown["undecodable"])
    assert "undecodable" in decoder.decode(framed[:-3])
    assert "bytes left" in str(decoder.decode(framed + b"\x00")["undecodable"])
    assert decoder.decode(None) == {"undecodable": "the record has no value", "bytes": 0}


def test_dead_letters_show_their_headers_and_base64_bytes():
    letter = DeadLetter(
        Stage.decode, Reason.truncated, "ends early", b"sess-1", b"\x00\x01\xff", "onfinish.raw", 2, 9
    )
    record = topics.dead_letter_record(letter.key, letter.value, letter.headers())
    assert record == {
        "stage": "decode",
        "reason": "truncated",
        "message": "ends early",
        "source_topic": "onfinish.raw",
        "source_partition": 2,
        "source_offset": 9,
        "key": base64.b64encode(b"sess-1").decode(),
        "value": base64.b64encode(b"\x00\x01\xff").decode(),
        "value_bytes": 3,
    }
    assert "undecodable" in topics.dead_letter_record(None, b"x", [("onfinish.stage", b"decode")])


# --- status ----------------------------------------------------------------------------------------


def _status(healthy: bool) -> pipeline_status.PipelineStatus:
    return pipeline_status.PipelineStatus(
        components=[
            pipeline_status.Health("kafka", True, "127.0.0.1:9092", "local stack, pid 10"),
            pipeline_status.Health("processor 1", True, "http://127.0.0.1:6066", "partitions 0,1,2"),
            pipeline_status.Health(
                "sink", healthy, "http://127.0.0.1:6166", "" if healthy else "does not answer"
            ),
        ],
        lags=[
            pipeline_status.GroupLag("onfinish-processors", 1520, 12, "onfinish.raw"),
            pipeline_status.GroupLag("onfinish-sinks-dlq", None, 0, "no committed offsets: has it run?"),
        ],
        events_in_per_s=812.25,
        rows_out_per_s=None if not healthy else 790.0,
        processor_us_per_record={
            "decode": 64.2,
            "enrich": 40.0,
            "encode": 37.5,
            "state": 29.0,
            "finish": 37.1,
        },
    )


@pytest.mark.parametrize("healthy", [True, False])
def test_status_shows_components_lag_and_rates(monkeypatch, healthy):
    monkeypatch.setattr(pipeline_status, "status", lambda *args, **kwargs: _status(healthy))
    result = runner.invoke(cli.app, ["status"])
    assert result.exit_code == (0 if healthy else 3), result.output
    out = result.output
    assert "partitions 0,1,2" in out and "1,520" in out and "no committed offsets" in out
    assert "Events in (processors): 812.2/s" in out
    assert "Processor time per record since start: decode 64 µs, enrich 40 µs, encode 38 µs" in out
    assert ("790.0/s" in out) if healthy else ("rows out (sink to ClickHouse): -" in out and "down" in out)


def test_metrics_counters_and_rates():
    text = (
        "# HELP onfinish_sink_rows_total Rows inserted.\n# TYPE onfinish_sink_rows_total counter\n"
        'onfinish_sink_rows_total{table="events"} 100.0\nonfinish_sink_rows_total{table="windows_1m"} 20.0\n'
        'onfinish_sink_rows_created{table="events"} 1.7e9\n'
    )
    assert pipeline_status.counter_total(text, "onfinish_sink_rows_total") == 120.0
    assert pipeline_status.counter_total(text, "onfinish_processor_processed_total") is None
    assert pipeline_status.rate(100, 350, 0.5) == 500
    assert pipeline_status.rate(100, 30, 1.0) == 30  # the worker restarted: its counter began again
    assert pipeline_status.rate(None, 30, 1.0) is None


def _worker_metrics(records: int, decode_s: float, finish_s: float) -> str:
    return (
        f"onfinish_processor_records_in_total {records}.0\n"
        "# TYPE onfinish_processor_stage_seconds histogram\n"
        f'onfinish_processor_stage_seconds_sum{{stage="decode"}} {decode_s}\n'
        f'onfinish_processor_stage_seconds_count{{stage="decode"}} 3.0\n'
        f'onfinish_processor_stage_seconds_sum{{stage="finish"}} {finish_s}\n'
        'onfinish_processor_stage_seconds_sum{stage="deliver"} 99.0\n'
    )


def test_processor_time_per_record_is_pooled_over_the_workers_per_stage():
    costs = pipeline_status.stage_costs(
        [_worker_metrics(1000, 0.05, 0.02), _worker_metrics(3000, 0.19, 0.06)]
    )
    assert costs is not None
    assert costs["decode"] == pytest.approx(60.0)  # (0.05 + 0.19) s over 4,000 records
    assert costs["finish"] == pytest.approx(20.0)
    assert costs["enrich"] == 0.0
    assert "deliver" not in costs, "the wait for Kafka's acks is not time spent per record"
    assert pipeline_status.stage_costs([_worker_metrics(0, 0.0, 0.0)]) is None
    assert pipeline_status.stage_costs([]) is None


def test_consumer_groups_are_the_processors_and_one_per_sink_family():
    from onfinish.processors.settings import ProcessorSettings
    from onfinish.sinks.settings import SinkSettings

    assert pipeline_status.consumer_groups(ProcessorSettings(app_id="p"), SinkSettings(group_prefix="s")) == [
        "p",
        "s-events",
        "s-rollups",
        "s-dlq",
    ]


def test_the_histogram_quantile_sql_is_the_grids():
    # The report must compute percentiles exactly as the views do (from the shared grid).
    assert DEFAULT_GRID.clickhouse_quantile_expression("latency_histogram", 0.95) in reports.groups_sql(
        "model", 60
    )


def test_the_command_line_offers_exactly_the_report_groupings():
    assert [option.value for option in insights_cli.GroupByOption] == list(reports.GROUP_BY)
    assert set(reports.GROUP_BY) == set(reports.DIMENSION_COLUMNS)
