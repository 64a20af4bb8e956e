"""The report and the dead-letter helpers against a real (embedded) ClickHouse, checked independently.

Rows go in as the sink writes them (older snapshots and re-delivered copies included, with merges
stopped so they are still there), and queries go through the sink's real read-only endpoint, as
the CLI's do. Expected numbers are computed from the events themselves, not from the windows.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import socket
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from onfinish.errors import ConfigurationError
from onfinish.insights import report as reports
from onfinish.inspection import deadletters, topics
from onfinish.processors.alerts import RuleBook, event_alerts
from onfinish.processors.histograms import Histogram
from onfinish.processors.windows import WindowKey, WindowState
from onfinish.query import client as query_client
from onfinish.query import sql as query_sql
from onfinish.query.results import QueryResult
from onfinish.query.server import QueryServer
from onfinish.schemas.contract import ALERT, ENRICHED_EVENT, SESSION_SNAPSHOT, WINDOW_SNAPSHOT
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.histogram_grid import quantile_from_counts
from onfinish.schemas.models import EnrichedEvent, RoutingStrategy, Status
from onfinish.schemas.sealing import Seal, SealError
from onfinish.settings import KafkaSettings
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.tables import DLQ_COLUMNS, TABLES, dlq_row
from tests.sinks.test_tables import NOW, decoded, decoded_record, enriched_events, rows_of, session_datums

EVENTS, WINDOWS, SESSIONS, ALERTS = (
    TABLES[r.full_name] for r in (ENRICHED_EVENT, WINDOW_SNAPSHOT, SESSION_SNAPSHOT, ALERT)
)
HOUR = timedelta(hours=1)


def _at(event: EnrichedEvent, moment: datetime) -> EnrichedEvent:
    return event.model_copy(
        update={"started_at": moment - timedelta(milliseconds=event.latency_ms), "finished_at": moment}
    )


class Data:
    """What was inserted, as the independent computations need it."""

    def __init__(self) -> None:
        # Real time, taken when the rows are made: the SQL compares with ClickHouse's now(). Windows
        # 5 and 20 minutes ago are inside the last hour; those 3 hours ago are not.
        self.minute = datetime.now(UTC).replace(second=0, microsecond=0)
        windows = [self.minute - timedelta(minutes=m) for m in (5, 20, 180)]
        self.events = [
            _at(e, windows[i % 3] + timedelta(seconds=i % 60))
            for i, e in enumerate(enriched_events(1200, seed=21))
        ]
        self.sessions: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.letters: list[tuple[DeadLetter, datetime]] = []

    def recent_events(self) -> list[EnrichedEvent]:
        return [e for e in self.events if e.finished_at >= self.minute - HOUR]


def _windows(events: list[EnrichedEvent], upto: float = 1.0) -> list[dict[str, Any]]:
    """Window snapshots of the events (of the first share `upto` of each window's events)."""
    grouped: dict[tuple[int, WindowKey], list[tuple[int, EnrichedEvent]]] = defaultdict(list)
    for offset, event in enumerate(events):
        key = WindowKey.of(event)
        grouped[(event.raw_partition, key)].append((offset, event))
    datums = []
    for (partition, key), members in grouped.items():
        state = WindowState()
        for offset, event in members[: max(1, int(len(members) * upto))]:
            state.apply(event, offset)
        datums.append(decoded(WINDOW_SNAPSHOT, state.datum(key, partition, NOW)))
    return datums


def _insert_windows(client: Client, data: Data) -> None:
    latest = _windows(data.events)
    older = [d for d in _windows(data.events, upto=0.5) if d["events"] > 0]
    client.insert(WINDOWS.name, rows_of(WINDOWS, latest), column_names=list(WINDOWS.columns))
    # Older snapshots arrive after the latest, each with a lower version: FINAL must drop them.
    client.insert(WINDOWS.name, rows_of(WINDOWS, older), column_names=list(WINDOWS.columns))


def _insert_events(client: Client, data: Data) -> None:
    datums = [decoded_record(ENRICHED_EVENT, e) for e in data.events]
    client.insert(EVENTS.name, rows_of(EVENTS, datums), column_names=list(EVENTS.columns))
    again = [{**d, "processed_at": NOW + timedelta(hours=1)} for d in datums[::4]]  # re-processed copies
    client.insert(EVENTS.name, rows_of(EVENTS, again, partition=8), column_names=list(EVENTS.columns))


def _insert_sessions(client: Client, data: Data) -> None:
    datums = session_datums([e for e in data.events if e.session_id is not None])
    assert len(datums) > 15
    for index, datum in enumerate(datums):
        # Two thirds active within the hour (at various minutes), the rest hours ago.
        ago = timedelta(minutes=index % 50) if index % 3 else timedelta(hours=5, minutes=index)
        datum.update(first_at=data.minute - ago - timedelta(minutes=3), last_at=data.minute - ago)
        datum["version"] += 1
    older = [{**d, "version": d["version"] - 1, "cost_usd": 1000.0 + i} for i, d in enumerate(datums[:5])]
    client.insert(SESSIONS.name, rows_of(SESSIONS, datums), column_names=list(SESSIONS.columns))
    client.insert(SESSIONS.name, rows_of(SESSIONS, older), column_names=list(SESSIONS.columns))
    data.sessions = datums


def _insert_alerts(client: Client, data: Data) -> None:
    book = RuleBook.load()
    alerts = {a.alert_id: a for e in data.events for a in event_alerts(book, e)}
    assert len(alerts) > 3
    datums = []
    for index, alert in enumerate(alerts.values()):
        datum = decoded_record(ALERT, alert)
        ago = timedelta(seconds=index) if index % 4 else timedelta(days=2, minutes=index)
        datum["at"] = data.minute - ago
        datums.append(datum)
    client.insert(ALERTS.name, rows_of(ALERTS, datums), column_names=list(ALERTS.columns))
    client.insert(ALERTS.name, rows_of(ALERTS, datums, partition=9), column_names=list(ALERTS.columns))
    data.alerts = datums


def _insert_dead_letters(client: Client, data: Data) -> None:
    recent, old = data.minute - timedelta(minutes=10), data.minute - timedelta(days=3)
    specs = [
        (Stage.decode, Reason.truncated, "onfinish.raw", 0, 10, recent),
        (Stage.decode, Reason.truncated, "onfinish.raw", 1, 20, recent - timedelta(minutes=1)),
        (Stage.decode, Reason.truncated, "onfinish.raw", 2, 30, recent - timedelta(minutes=2)),
        (Stage.decode, Reason.truncated, "onfinish.raw", 0, 40, old),
        (Stage.decode, Reason.not_confluent_framed, "onfinish.raw", 1, 5, recent),
        (Stage.sink, Reason.undecodable, "onfinish.enriched", 2, 7, recent),
        (Stage.validate, Reason.processing_error, "onfinish.raw", 3, 12, recent),
    ]
    letters = [
        (
            DeadLetter(
                stage,
                reason,
                f"message {offset}",
                f"key-{offset}".encode(),
                bytes([offset]) * size,
                topic,
                partition,
                offset,
            ),
            at,
        )
        for offset, (stage, reason, topic, partition, size, at) in enumerate(specs)
    ]
    client.insert("dlq", [dlq_row(letter, at) for letter, at in letters], column_names=list(DLQ_COLUMNS))
    # The first two re-delivered: the same origin and stage, so they count once.
    again = [dlq_row(letter, at + timedelta(seconds=30)) for letter, at in letters[:2]]
    client.insert("dlq", again, column_names=list(DLQ_COLUMNS))
    data.letters = letters


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[Client]:
    # chDB holds one data directory per process: the client must be closed before another opens.
    client = clickhouse_connect.get_client(dsn=f"chdb:///{tmp_path_factory.mktemp('chdb-analytics')}")
    try:
        client.command("CREATE DATABASE IF NOT EXISTS analytics")
        client.database = "analytics"
        apply_migrations(client)
        for table in ("events", "windows_1m", "sessions", "alerts", "dlq"):
            client.command(f"SYSTEM STOP MERGES {table}")
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def data(client: Client) -> Data:
    data = Data()
    _insert_windows(client, data)
    _insert_events(client, data)
    _insert_sessions(client, data)
    _insert_alerts(client, data)
    _insert_dead_letters(client, data)
    return data


@pytest.fixture(scope="module")
def q(client: Client, data: Data) -> Iterator[query_client.Querier]:
    """Queries through the sink's read-only endpoint, on an ephemeral loopback port."""
    with QueryServer(client) as server:
        yield query_client.EndpointQuerier(server.url)


# --- the report ------------------------------------------------------------------------------------


def _expected_groups(events: list[EnrichedEvent], dimension: str) -> dict[str, dict[str, Any]]:
    grouped: dict[str, list[EnrichedEvent]] = defaultdict(list)
    for event in events:
        grouped[getattr(event, dimension) or ""].append(event)
    expected = {}
    for group, members in grouped.items():
        latency, ttft = Histogram(), Histogram()
        for event in members:
            latency.add(event.latency_ms)
            if event.ttft_ms is not None:
                ttft.add(event.ttft_ms)
        calls = len(members)
        errors = sum(e.status is not Status.success for e in members)
        expected[group] = {
            "calls": calls,
            "errors": errors,
            "error_rate": errors / calls,
            "success_rate": (calls - errors) / calls,
            "cost_usd": sum(e.cost_usd for e in members),
            "cache_hit_rate": sum(e.cache_hit for e in members) / calls,
            "fallback_rate": sum(e.routing_strategy is RoutingStrategy.fallback for e in members) / calls,
            "quality_mean": sum(e.quality_score for e in members) / calls,
            **{
                f"latency_{p}_ms": quantile_from_counts(latency.to_counts(), q)
                for p, q in reports.QUANTILES.items()
            },
            **{
                f"ttft_{p}_ms": quantile_from_counts(ttft.to_counts(), q)
                for p, q in reports.QUANTILES.items()
            },
        }
    return expected


def _assert_groups(report: reports.Report, expected: dict[str, dict[str, Any]]) -> None:
    assert {g.group for g in report.groups} == set(expected)
    for row in report.groups:
        want = expected[row.group]
        for name, value in want.items():
            got = getattr(row, name)
            if name.startswith(("latency_p", "ttft_p")) or isinstance(value, int):
                assert got == value, (row.group, name)  # counts and percentiles are exact
            else:
                assert got == pytest.approx(value, rel=1e-9, abs=1e-8), (row.group, name)


def test_report_by_model_matches_the_events_of_the_period(q, data):
    report = reports.report(q, since=HOUR, by="model")
    recent = data.recent_events()
    assert 0 < len(recent) < len(data.events)
    _assert_groups(report, _expected_groups(recent, "model_id"))
    assert sum(g.calls for g in report.groups) == len(recent)  # older snapshots and old windows left out
    assert [g.calls for g in report.groups] == sorted((g.calls for g in report.groups), reverse=True)
    assert any(g.errors for g in report.groups)
    assert all(g.latency_p50_ms <= g.latency_p95_ms <= g.latency_p99_ms for g in report.groups)  # type: ignore[operator]


def test_report_by_feature_groups_by_feature_with_none_as_empty(q, data):
    report = reports.report(q, since=HOUR, by="feature")
    _assert_groups(report, _expected_groups(data.recent_events(), "feature_id"))
    assert report.by == "feature"


def test_a_longer_period_takes_in_the_older_windows(q, data):
    report = reports.report(q, since=timedelta(hours=4), by="environment")
    _assert_groups(report, _expected_groups(data.events, "environment"))


def test_report_lists_the_costliest_recent_sessions_and_recent_alerts(q, data):
    report = reports.report(q, since=HOUR, by="model")
    recent_sessions = [s for s in data.sessions if s["last_at"] >= data.minute - HOUR]
    top = sorted(recent_sessions, key=lambda s: (-s["cost_usd"], s["session_id"]))[: reports.TOP_SESSIONS]
    assert [s.session_id for s in report.top_sessions] == [s["session_id"] for s in top]
    assert [s.cost_usd for s in report.top_sessions] == [s["cost_usd"] for s in top]  # latest snapshot wins
    assert all(s.cost_usd < 1000 for s in report.top_sessions)
    assert report.top_sessions[0].last_at.tzinfo is not None

    by_id = sorted((a for a in data.alerts if a["at"] >= data.minute - HOUR), key=lambda a: a["alert_id"])
    recent_alerts = sorted(by_id, key=lambda a: a["at"], reverse=True)  # latest first, then by id
    assert [(a.rule, a.subject, a.at) for a in report.alerts] == [
        (a["rule"], a["subject"], a["at"]) for a in recent_alerts[: reports.LATEST_ALERTS]
    ]
    assert len({(a.rule, a.subject) for a in report.alerts}) == len(report.alerts)  # re-emitted ones once


def test_report_totals_count_each_event_and_dead_letter_once(q, data):
    report = reports.report(q, since=HOUR, by="model")
    assert report.totals.events == len(data.recent_events())
    assert report.totals.dead_letters == {
        "truncated": 3,
        "not_confluent_framed": 1,
        "undecodable": 1,
        "processing_error": 1,
    }


def test_json_and_csv_give_back_the_same_numbers(q, data):
    report = reports.report(q, since=HOUR, by="model")
    document = json.loads(reports.to_json(report))
    assert document["since_s"] == 3600 and document["by"] == "model"
    assert document["groups"] == [asdict(g) for g in report.groups]
    assert document["totals"]["events"] == report.totals.events
    assert [s["session_id"] for s in document["top_sessions"]] == [s.session_id for s in report.top_sessions]
    assert datetime.fromisoformat(document["alerts"][0]["at"]) == report.alerts[0].at

    rows = list(csv.DictReader(io.StringIO(reports.to_csv(report))))
    assert [r["group"] for r in rows] == [g.group for g in report.groups]
    for row, group in zip(rows, report.groups, strict=True):
        assert int(row["calls"]) == group.calls and int(row["errors"]) == group.errors
        assert float(row["cost_usd"]) == group.cost_usd
        assert float(row["error_rate"]) == group.error_rate
        assert (float(row["latency_p95_ms"]) if row["latency_p95_ms"] else None) == group.latency_p95_ms


def test_the_server_path_answers_like_the_endpoint(client, q, data):
    through_endpoint = reports.report(q, since=HOUR, by="variant")
    direct = reports.report(query_client.ClientQuerier(client), since=HOUR, by="variant")
    assert direct == through_endpoint


def test_an_endpoint_that_does_not_answer_says_to_start_the_sink():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    querier = query_client.EndpointQuerier(f"http://127.0.0.1:{port}")
    with pytest.raises(query_client.AnalyticsUnavailable, match="onfinish sink"):
        reports.report(querier, since=HOUR, by="model")


def test_values_are_formatted_safely_into_sql():
    assert query_sql.sql_string("it's \\ here") == "'it\\'s \\\\ here'"
    assert "toIntervalSecond(5400)" in reports.groups_sql("model", 5400)
    with pytest.raises(ConfigurationError):
        reports.groups_sql("model_id; DROP TABLE events", 60)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        query_sql.seconds_of(timedelta(milliseconds=200))


# --- dead letters ------------------------------------------------------------------------------------


def test_dlq_list_counts_letters_of_the_period_by_stage_reason_and_topic(q, data):
    groups = {(g.stage, g.reason, g.source_topic): g for g in deadletters.dlq_list(q, timedelta(hours=24))}
    assert {key: g.letters for key, g in groups.items()} == {
        ("decode", "truncated", "onfinish.raw"): 3,
        ("decode", "not_confluent_framed", "onfinish.raw"): 1,
        ("sink", "undecodable", "onfinish.enriched"): 1,
        ("validate", "processing_error", "onfinish.raw"): 1,
    }
    assert groups[("decode", "truncated", "onfinish.raw")].value_bytes == 10 + 20 + 30
    week = {(g.stage, g.reason): g.letters for g in deadletters.dlq_list(q, timedelta(days=7))}
    assert week[("decode", "truncated")] == 4


def test_dlq_show_gives_the_latest_letters_without_their_bytes(q, data):
    letters = deadletters.dlq_show(q, "truncated", limit=3)
    assert [letter.source_offset for letter in letters] == [0, 1, 2]  # latest first (0 re-delivered last)
    assert [letter.value_bytes for letter in letters] == [10, 20, 30]
    assert all(letter.value_base64 is None for letter in letters)
    assert letters[1].base64_chars == len(base64.b64encode(bytes([1]) * 20))
    assert letters[1].message == "message 1" and letters[1].source_partition == 1

    with_bytes = deadletters.dlq_show(q, "truncated", limit=10, include_bytes=True)
    assert len(with_bytes) == 4
    by_offset = {letter.source_offset: letter for letter in with_bytes}
    assert base64.b64decode(by_offset[3].value_base64 or "") == bytes([3]) * 40


def test_dlq_show_refuses_an_unknown_reason(q):
    with pytest.raises(ConfigurationError, match="truncated"):
        deadletters.dlq_show(q, "no_such_reason'; --", limit=5)


class FakeProducer:
    def __init__(self, unsent: int = 0) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self.reports: list[Any] = []
        self.unsent = unsent

    def produce(self, topic, value=None, key=None, *, on_delivery=None, headers=None):
        self.sent.append((topic, key, value, headers))
        self.reports.append(on_delivery)

    def poll(self, timeout=0.0):
        return 0

    def flush(self, timeout=0.0):
        for report in self.reports:
            report(None, None)
        return self.unsent


def test_dlq_replay_sends_the_original_bytes_back_to_their_topic(q, data, monkeypatch):
    monkeypatch.setattr(deadletters, "REPLAY_PAGE", 2)  # several pages, each origin once
    kafka = KafkaSettings()
    assert deadletters.dlq_replay(kafka, q, reason="truncated", source_topic=None, dry_run=True) == 4
    producer = FakeProducer()
    sent = deadletters.dlq_replay(
        kafka, q, reason="truncated", source_topic=None, dry_run=False, producer=producer
    )
    assert sent == 4
    truncated = sorted(
        (
            (letter.source_topic, letter.key, letter.value)
            for letter, _ in data.letters
            if letter.reason is Reason.truncated
        ),
        key=lambda t: t[2] or b"",
    )
    assert sorted(((t, k, v) for t, k, v, _ in producer.sent), key=lambda t: t[2] or b"") == truncated
    assert all(headers == [("onfinish.replayed", b"1")] for *_, headers in producer.sent)

    only_enriched = FakeProducer()
    assert (
        deadletters.dlq_replay(
            kafka,
            q,
            reason="undecodable",
            source_topic="onfinish.enriched",
            dry_run=False,
            producer=only_enriched,
        )
        == 1
    )
    assert only_enriched.sent[0][0] == "onfinish.enriched"
    assert (
        deadletters.dlq_replay(kafka, q, reason="undecodable", source_topic="onfinish.raw", dry_run=True) == 0
    )


class _Letters:
    """A querier over dlq rows, as the replay pages them."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def query(self, sql: str) -> QueryResult:
        columns = ["source_topic", "source_partition", "source_offset", "key", "value"]
        rows = [tuple(row[column] for column in columns) for row in self.rows]
        return QueryResult(columns=columns, types=["String"] * len(columns), rows=rows)


def test_dlq_replay_opens_sealed_letters_and_sends_their_original_bytes():
    seal = Seal("a test secret")
    record = b"\x00\x00\x00\x00\x07user alice@example.com"

    def stored(data: bytes | None) -> str:  # as the dlq table keeps bytes
        return base64.b64encode(data).decode() if data else ""

    rows = [
        {
            "source_topic": "onfinish.raw",
            "source_partition": 0,
            "source_offset": 1,
            "key": stored(seal.seal(b"sess-alice@example.com")),
            "value": stored(seal.seal(record)),
        },
        {  # a letter stored before sealing goes back as it is
            "source_topic": "onfinish.raw",
            "source_partition": 0,
            "source_offset": 2,
            "key": stored(b"legacy-key"),
            "value": stored(b"legacy value"),
        },
    ]
    producer = FakeProducer()
    replay = partial(
        deadletters.dlq_replay, KafkaSettings(), reason="truncated", source_topic=None, dry_run=False
    )
    assert replay(_Letters(rows), producer=producer, seal=seal) == 2
    assert [(topic, key, value) for topic, key, value, _ in producer.sent] == [
        ("onfinish.raw", b"sess-alice@example.com", record),
        ("onfinish.raw", b"legacy-key", b"legacy value"),
    ]
    with pytest.raises(SealError, match="ONFINISH_DLQ_SEAL_KEY"):
        replay(_Letters(rows[:1]), producer=FakeProducer(), seal=Seal("another secret"))


def test_dlq_replay_fails_loudly_when_kafka_does_not_acknowledge(q, data):
    with pytest.raises(topics.InspectError, match="not acknowledged"):
        deadletters.dlq_replay(
            KafkaSettings(),
            q,
            reason="processing_error",
            source_topic=None,
            dry_run=False,
            producer=FakeProducer(unsent=1),
        )
