"""Table specs: decoded records become rows that ClickHouse stores as they were, once."""

from __future__ import annotations

import base64
import io
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from clickhouse_connect.driver.client import Client

from onfinish.loadgen.traffic import TrafficGenerator, TrafficProfile
from onfinish.processors.alerts import RuleBook, event_alerts
from onfinish.processors.enrichment import Enricher
from onfinish.processors.pricing import PriceCatalog
from onfinish.processors.quality import QualityWeights
from onfinish.processors.redaction import PatternSet
from onfinish.processors.sessions import SessionState
from onfinish.processors.windows import WindowKey, WindowState
from onfinish.schemas.contract import ALERT, ENRICHED_EVENT, SESSION_SNAPSHOT, WINDOW_SNAPSHOT, RecordType
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.models import EnrichedEvent, OnFinishEvent, _Record
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.tables import DLQ_COLUMNS, TABLES, TableSpec, dlq_row
from tests.chdb import chdb_engine

ENRICHER = Enricher(
    PriceCatalog.load(),
    QualityWeights(),
    PatternSet.load(),
    frozenset({"app.version", "tenant_id", "fallback_from"}),
    b"test-key",
)
NOW = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
BUCKETS = 393
EVENTS, WINDOWS, SESSIONS, ALERTS = (
    TABLES[r.full_name] for r in (ENRICHED_EVENT, WINDOW_SNAPSHOT, SESSION_SNAPSHOT, ALERT)
)
_databases = itertools.count()


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[Client]:
    with chdb_engine(tmp_path_factory.mktemp("chdb-tables")) as client:
        yield client


@pytest.fixture
def client(engine: Client) -> Client:
    """A migrated database of this test's own (deduplication logs outlive TRUNCATE)."""
    name = f"tables_{next(_databases)}"
    engine.command(f"CREATE DATABASE {name}")
    engine.database = name
    apply_migrations(engine)
    return engine


# --- records as the sink sees them ---------------------------------------------------------------


def enriched_events(count: int, seed: int = 5, partitions: int = 3) -> list[EnrichedEvent]:
    generator = TrafficGenerator(
        TrafficProfile(malformed_share=0, feedback_share=0, error_share=0.2), seed=seed
    )
    events = [item for item in generator.items(count) if isinstance(item, OnFinishEvent)]
    return [ENRICHER.enrich(event, offset % partitions, offset, NOW) for offset, event in enumerate(events)]


def decoded(record_type: RecordType, datum: dict[str, Any]) -> dict[str, Any]:
    """A datum through Avro and back: exactly what the sink's fastavro reader gives it."""
    result = fastavro.schemaless_reader(
        io.BytesIO(record_type.encode(datum)), record_type.parsed, record_type.parsed
    )
    assert isinstance(result, dict)
    return result


def decoded_record(record_type: RecordType, record: _Record) -> dict[str, Any]:
    return decoded(record_type, record_type.to_datum(record))


def rows_of(
    spec: TableSpec, datums: list[dict[str, Any]], partition: int = 7, first_offset: int = 100
) -> list[list[Any]]:
    return [spec.to_row(datum, partition, first_offset + i) for i, datum in enumerate(datums)]


def insert(client: Client, spec: TableSpec, rows: list[list[Any]], **settings: Any) -> None:
    client.insert(spec.name, rows, column_names=list(spec.columns), settings=settings or None)


def read(client: Client, sql: str) -> list[dict[str, Any]]:
    """Rows as dicts, ClickHouse's naive UTC datetimes made aware again."""
    result = client.query(sql)
    return [
        {name: _aware(value) for name, value in zip(result.column_names, row, strict=True)}
        for row in result.result_rows
    ]


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def scalar(client: Client, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


def count(client: Client, table: str, final: bool = False) -> int:
    return int(scalar(client, f"SELECT count() FROM {table}{' FINAL' if final else ''}"))


# --- the specs -----------------------------------------------------------------------------------


def test_specs_cover_the_processed_records_and_match_the_tables(client):
    assert {spec.name for spec in TABLES.values()} == {
        "events",
        "event_quality",
        "event_costs",
        "windows_1m",
        "sessions",
        "alerts",
    }
    assert all(name == spec.record_type.full_name for name, spec in TABLES.items())
    for spec in [*TABLES.values(), None]:
        table, columns = ("dlq", DLQ_COLUMNS) if spec is None else (spec.name, spec.columns)
        stored = client.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
            "ORDER BY position",
            parameters={"t": table},
        ).result_rows
        assert [name for (name,) in stored if name != "inserted_at"] == list(columns), table


def test_events_are_stored_as_decoded(client):
    events = enriched_events(600)
    datums = [decoded_record(ENRICHED_EVENT, event) for event in events]
    assert any(d["attributes"] for d in datums) and any(d["safety_flags"] for d in datums)
    assert any(d["ttft_ms"] is None for d in datums) or any(d["error_code"] for d in datums)
    insert(client, EVENTS, rows_of(EVENTS, datums))
    stored = {row["event_id"]: row for row in read(client, "SELECT * FROM events")}
    assert len(stored) == len(datums)
    for offset, datum in enumerate(datums, start=100):
        row = stored[datum["event_id"]]
        assert row.pop("kafka_partition") == 7 and row.pop("kafka_offset") == offset
        assert isinstance(row.pop("inserted_at"), datetime)
        assert row == datum


def test_a_reprocessed_event_collapses_into_one_row(client):
    datums = [decoded_record(ENRICHED_EVENT, event) for event in enriched_events(300)]
    insert(client, EVENTS, rows_of(EVENTS, datums))
    # The same events processed again after a crash: later processed_at, other enriched offsets.
    again = [{**d, "processed_at": NOW + timedelta(minutes=5)} for d in datums]
    insert(client, EVENTS, rows_of(EVENTS, again, partition=8, first_offset=5000))
    assert count(client, "events") == 2 * len(datums)
    assert count(client, "events", final=True) == len(datums)
    client.command("OPTIMIZE TABLE events FINAL")
    assert count(client, "events") == len(datums)


def test_a_retried_insert_with_the_same_token_is_stored_once(client):
    events = enriched_events(300)
    # Two days, so the block is split into two partitions (the token is kept per partition).
    shifted = [
        e.model_copy(
            update={
                "started_at": e.started_at + timedelta(days=1),
                "finished_at": e.finished_at + timedelta(days=1),
            }
        )
        for e in events[::2]
    ]
    rows = rows_of(EVENTS, [decoded_record(ENRICHED_EVENT, e) for e in [*events[1::2], *shifted]])
    assert scalar(client, "SELECT uniqExact(toDate(finished_at)) FROM events") == 0
    insert(client, EVENTS, rows, insert_deduplication_token="batch-1")
    insert(client, EVENTS, rows, insert_deduplication_token="batch-1")
    assert count(client, "events") == len(rows)
    assert scalar(client, "SELECT uniqExact(toDate(finished_at)) FROM events") == 2
    insert(client, EVENTS, rows, insert_deduplication_token="batch-2")  # another batch: kept...
    assert count(client, "events") == 2 * len(rows)
    assert count(client, "events", final=True) == len(rows)  # ...but the events still count once


def test_avro_read_by_clickhouse_lands_like_rows_built_here(client):
    # The sink may hand events to ClickHouse as Avro (AvroConfluent) instead of rows: both paths
    # must store the same values.
    events = enriched_events(200)
    insert(client, EVENTS, rows_of(EVENTS, [decoded_record(ENRICHED_EVENT, e) for e in events]))
    container = io.BytesIO()
    fastavro.writer(container, ENRICHED_EVENT.parsed, [ENRICHED_EVENT.to_datum(e) for e in events])
    client.raw_insert(
        "events",
        insert_block=container.getvalue(),
        fmt="Avro",
        settings={"input_format_avro_allow_missing_fields": 1},
    )
    rows = read(client, "SELECT * EXCEPT (kafka_partition, kafka_offset, inserted_at) FROM events")
    by_path: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_path[row["event_id"]].append(row)
    assert len(by_path) == len(events)
    assert all(len(pair) == 2 and pair[0] == pair[1] for pair in by_path.values())


def _window_states(events: list[EnrichedEvent]) -> dict[tuple[int, WindowKey], WindowState]:
    states: dict[tuple[int, WindowKey], WindowState] = defaultdict(WindowState)
    for event in events:
        states[(event.raw_partition, WindowKey.of(event))].apply(event, event.raw_offset)
    return states


def test_window_snapshots_are_stored_with_dense_histograms(client):
    states = _window_states(enriched_events(1500))
    assert len(states) > 20
    datums = {
        key.window_id(partition): decoded(WINDOW_SNAPSHOT, state.datum(key, partition, NOW))
        for (partition, key), state in states.items()
    }
    insert(client, WINDOWS, rows_of(WINDOWS, list(datums.values())))
    stored = read(client, "SELECT * FROM windows_1m")
    assert len(stored) == len(states)
    expected_counts = {
        key.window_id(partition): (state.latency.to_counts(), state.ttft.to_counts())
        for (partition, key), state in states.items()
    }
    for row in stored:
        datum = datums[row["window_id"]]
        latency, ttft = expected_counts[row["window_id"]]
        assert len(row["latency_counts"]) == len(row["ttft_counts"]) == BUCKETS
        assert row["latency_counts"] == latency and sum(latency) == row["latency_count"] == datum["events"]
        assert row["ttft_counts"] == ttft and sum(ttft) == row["ttft_count"]
        for name, value in datum.items():
            if not name.endswith(("_buckets", "_counts")):
                assert row[name] == value, name


def test_a_later_window_snapshot_replaces_an_earlier_one(client):
    events = [e for e in enriched_events(1500) if e.raw_partition == 0]
    key = Counter(WindowKey.of(e) for e in events).most_common(1)[0][0]
    same_window = [e for e in events if WindowKey.of(e) == key]
    assert len(same_window) >= 4
    state = WindowState()
    for event in same_window[:2]:
        state.apply(event, event.raw_offset)
    earlier = decoded(WINDOW_SNAPSHOT, state.datum(key, 0, NOW))
    for event in same_window[2:]:
        state.apply(event, event.raw_offset)
    later = decoded(WINDOW_SNAPSHOT, state.datum(key, 0, NOW + timedelta(seconds=1)))
    assert later["version"] > earlier["version"] and later["events"] > earlier["events"]
    insert(client, WINDOWS, rows_of(WINDOWS, [later]))
    insert(client, WINDOWS, rows_of(WINDOWS, [earlier]))  # the older snapshot arrives last
    final = read(client, "SELECT version, events, latency_counts FROM windows_1m FINAL")
    assert final == [
        {"version": later["version"], "events": len(same_window), "latency_counts": state.latency.to_counts()}
    ]
    client.command("OPTIMIZE TABLE windows_1m FINAL")
    assert count(client, "windows_1m") == 1


def test_window_rows_refuse_buckets_off_the_grid():
    events = enriched_events(50)
    key = WindowKey.of(events[0])
    state = WindowState()
    state.apply(events[0], 0)
    datum = decoded(WINDOW_SNAPSHOT, state.datum(key, 0, NOW))
    assert len(WINDOWS.to_row(datum, 0, 0)[WINDOWS.columns.index("latency_counts")]) == BUCKETS
    for bad in ([BUCKETS], [-1]):
        with pytest.raises(ValueError, match="bucket indexes"):
            WINDOWS.to_row({**datum, "latency_buckets": bad, "latency_counts": [1]}, 0, 0)


def session_datums(events: list[EnrichedEvent]) -> list[dict[str, Any]]:
    states: dict[str, SessionState] = defaultdict(SessionState)
    for event in events:
        if event.session_id is not None:
            states[event.session_id].apply_event(event, event.raw_offset)
    return [
        decoded(SESSION_SNAPSHOT, state.datum(session_id, 0, NOW)) for session_id, state in states.items()
    ]


def test_sessions_are_stored_and_the_latest_snapshot_wins(client):
    events = [e for e in enriched_events(1200) if e.session_id is not None]
    latest = session_datums(events)
    versions = {d["session_id"]: d["version"] for d in latest}
    halfway = [
        d for d in session_datums(events[: len(events) // 2]) if d["version"] < versions[d["session_id"]]
    ]
    assert len(latest) > 10 and halfway and any(len(d["models"]) > 1 for d in latest)
    insert(client, SESSIONS, rows_of(SESSIONS, latest))
    insert(client, SESSIONS, rows_of(SESSIONS, halfway, first_offset=9000))  # older versions, later
    stored = {row["session_id"]: row for row in read(client, "SELECT * FROM sessions FINAL")}
    assert len(stored) == len(latest)
    for offset, datum in enumerate(latest, start=100):
        row = stored[datum["session_id"]]
        assert (row.pop("kafka_partition"), row.pop("kafka_offset")) == (7, offset)
        row.pop("inserted_at")
        assert row == datum
    assert count(client, "sessions") == len(latest) + len(halfway)


def test_alerts_are_stored_and_a_reemitted_alert_replaces_itself(client):
    book = RuleBook.load()
    alerts = [alert for event in enriched_events(1500) for alert in event_alerts(book, event)]
    assert alerts
    datums = [decoded_record(ALERT, alert) for alert in alerts]
    insert(client, ALERTS, rows_of(ALERTS, datums))
    insert(client, ALERTS, rows_of(ALERTS, datums, partition=9))  # re-emitted after a replay
    stored = {row["alert_id"]: row for row in read(client, "SELECT * FROM alerts FINAL")}
    assert len(stored) == len(datums)
    for datum in datums:
        row = stored[datum["alert_id"]]
        assert row.pop("kafka_partition") == 9
        assert {name: row[name] for name in datum} == datum


def test_dead_letters_keep_their_bytes_and_a_redelivered_one_collapses(client):
    letters = [
        DeadLetter(
            Stage.decode,
            Reason.not_confluent_framed,
            "first byte 0x7b",
            b"sess-1",
            b'{"json": true}',
            "onfinish.raw",
            3,
            41,
        ),
        DeadLetter(
            Stage.decode,
            Reason.truncated,
            "body ends early",
            None,
            b"\x00\x00\x00\x00\x07\xff\xfe",
            "onfinish.raw",
            3,
            42,
        ),
        DeadLetter(Stage.sink, Reason.empty, "no value", b"\xff\x00key", None, "onfinish.enriched", 0, 7),
    ]
    received = datetime(2026, 11, 23, 12, 0, 0, 123000, tzinfo=UTC)
    client.insert("dlq", [dlq_row(letter, received) for letter in letters], column_names=list(DLQ_COLUMNS))
    redelivered = dlq_row(letters[0], received + timedelta(minutes=1))
    client.insert("dlq", [redelivered], column_names=list(DLQ_COLUMNS))
    assert count(client, "dlq") == 4
    stored = read(client, "SELECT * FROM dlq FINAL ORDER BY source_topic, source_offset")
    assert len(stored) == 3
    for row, letter in zip(
        stored, sorted(letters, key=lambda x: (x.source_topic, x.source_offset)), strict=True
    ):
        assert (row["stage"], row["reason"], row["message"]) == (
            letter.stage.value,
            letter.reason.value,
            letter.message,
        )
        assert (row["source_topic"], row["source_partition"], row["source_offset"]) == (
            letter.source_topic,
            letter.source_partition,
            letter.source_offset,
        )
        assert base64.b64decode(row["key"]) == (letter.key or b"")
        assert base64.b64decode(row["value"]) == (letter.value or b"")
        assert row["value_bytes"] == len(letter.value or b"")
    decoded_in_sql = client.command("SELECT base64Decode(value) FROM dlq FINAL WHERE source_offset = 41")
    assert decoded_in_sql == '{"json": true}'
