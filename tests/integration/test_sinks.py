"""A real sink worker between the processors' topics and embedded ClickHouse: every row once.

The records are what the processors make of loadgen traffic (the pipeline run in-process), sent
to topics of the test's own with schemas registered in the real registry; the worker runs as its
own process, owns a chDB directory and answers the test's SQL through its read-only endpoint.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from onfinish.loadgen.traffic import Malformed, TrafficGenerator, TrafficProfile
from onfinish.processors.alerts import RuleBook
from onfinish.processors.decoding import Decoder, TimeBounds
from onfinish.processors.enrichment import Enricher
from onfinish.processors.pipeline import DictStore, Output, Pipeline, RawRecord
from onfinish.processors.pricing import PriceCatalog
from onfinish.processors.quality import QualityWeights
from onfinish.processors.redaction import PatternSet
from onfinish.query.client import QueryClient
from onfinish.query.guard import ReadOnlyRefused
from onfinish.schemas.contract import (
    ALERT,
    ENRICHED_EVENT,
    FEEDBACK,
    ONFINISH_EVENT,
    QUALITY_UPDATE,
    SESSION_SNAPSHOT,
    WINDOW_SNAPSHOT,
    RecordType,
)
from onfinish.schemas.deadletter import DeadLetter
from onfinish.schemas.models import OnFinishEvent, Status
from onfinish.schemas.wire import WriterSchema
from onfinish.settings import KafkaSettings, RegistrySettings
from onfinish.stack.topics import provision_topics
from tests.conftest import REPO
from tests.drills import SINK_EXIT_CODE

WEB_PORT = 16366
QUERY_PORT = 16367


class _Outputs:
    """The processors' outputs for some loadgen traffic, encoded with registered schema ids."""

    def __init__(self, registry: RegistrySettings, prefix: str, count: int, seed: int) -> None:
        client = SchemaRegistryClient({"url": registry.url})
        self.prefix = prefix
        self.ids = {
            record_type.full_name: client.register_schema(
                record_type.subject(record_type.topic(prefix)), Schema(record_type.schema_str, "AVRO")
            )
            for record_type in (ENRICHED_EVENT, QUALITY_UPDATE, WINDOW_SNAPSHOT, SESSION_SNAPSHOT, ALERT)
        }
        now = datetime.now(UTC)
        items = list(
            TrafficGenerator(TrafficProfile(malformed_share=0.02, feedback_share=0.05), seed=seed).items(
                count
            )
        )
        shift = now - max(i.finished_at for i in items if isinstance(i, OnFinishEvent))
        self.events = []
        raw = []
        for item in items:
            if isinstance(item, Malformed):
                raw.append((item.key, item.value))
                continue
            if isinstance(item, OnFinishEvent):
                item = item.model_copy(
                    update={"started_at": item.started_at + shift, "finished_at": item.finished_at + shift}
                )
                self.events.append(item)
            else:
                item = item.model_copy(update={"at": item.at + shift})
            record_type = ONFINISH_EVENT if isinstance(item, OnFinishEvent) else FEEDBACK
            value = b"\x00" + (1 if record_type is ONFINISH_EVENT else 2).to_bytes(4, "big")
            raw.append((item.key.encode(), value + record_type.encode(record_type.to_datum(item))))
        writers = {
            1: WriterSchema(ONFINISH_EVENT, ONFINISH_EVENT.parsed),
            2: WriterSchema(FEEDBACK, FEEDBACK.parsed),
        }
        pipeline = Pipeline(
            Decoder(writers.get, bounds=TimeBounds(max_past=timedelta(days=2)), clock=lambda: now),
            Enricher(PriceCatalog.load(), QualityWeights(), PatternSet.load(), frozenset(), b"k"),
            RuleBook.load(),
            self._encode,
            DictStore(),
            DictStore(),
            allowed_lateness=timedelta(minutes=2),
            clock=lambda: now,
        )
        self.outputs: list[Output] = []
        for start in range(0, len(raw), 250):
            batch = pipeline.batch()
            for offset in range(start, min(start + 250, len(raw))):
                batch.add(RawRecord(raw[offset][0], raw[offset][1], f"{prefix}.raw", offset % 3, offset))
            self.outputs += batch.finish()
        self.outputs += pipeline.dirty_snapshots()

    def _encode(self, record_type: RecordType, datum: dict[str, Any]) -> bytes:
        return b"\x00" + self.ids[record_type.full_name].to_bytes(4, "big") + record_type.encode(datum)

    def of(self, record_type: RecordType | None) -> list[Output]:
        return [o for o in self.outputs if o.record_type is record_type]

    def send(
        self, kafka: KafkaSettings, extra: Sequence[tuple[str, bytes | None, bytes | None]] = ()
    ) -> None:
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 20})
        for output in self.outputs:
            topic = (
                f"{self.prefix}.dlq" if output.record_type is None else output.record_type.topic(self.prefix)
            )
            headers: list[tuple[str, str | bytes | None]] = list(output.headers)
            producer.produce(topic, output.value, output.key, headers=headers or None)
            producer.poll(0)
        for topic, key, value in extra:
            producer.produce(topic, value, key)
        assert producer.flush(60) == 0


SINK = [sys.executable, "-m", "onfinish", "sink"]
EXIT_DRILL_SINK = [sys.executable, "-m", "tests.drills", "sink"]  # the sink, exiting before a commit


def _start_sink(env: dict[str, str], log: Path, command: list[str] = SINK) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        env=env,
        cwd=REPO,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _request_of(value: bytes | None) -> str:
    assert value is not None
    datum = fastavro.schemaless_reader(io.BytesIO(value[5:]), QUALITY_UPDATE.parsed, QUALITY_UPDATE.parsed)
    assert isinstance(datum, dict)
    return str(datum["request_id"])


def _sink_metric(name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{WEB_PORT}/metrics", timeout=5) as response:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in response.read().decode().splitlines()
            if line.startswith(name)
        )


def _wait_for_rows(events: int, timeout_s: float = 120) -> None:
    """Until the worker has inserted `events` event rows (duplicates included)."""
    deadline = time.monotonic() + timeout_s
    while _sink_metric('onfinish_sink_rows_total{table="events"}') < events:
        assert time.monotonic() < deadline, "the sink did not insert the second delivery"
        time.sleep(0.3)
    time.sleep(1.0)  # and the rest of that batch's tables


def _wait_for(query: QueryClient, sql: str, expected: Any, timeout_s: float = 120) -> Any:
    """Until `sql`'s single value equals `expected` (the endpoint may not answer yet)."""
    deadline = time.monotonic() + timeout_s
    value: Any = None
    while time.monotonic() < deadline:
        try:
            value = query.query(sql).rows[0][0]
        except OSError:
            value = None
        except Exception as exc:  # tables not created yet
            value = repr(exc)[:200]
        if value == expected:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{sql} gave {value!r}, expected {expected!r}")


@pytest.fixture
def sink_env(
    kafka_settings: KafkaSettings, registry_settings: RegistrySettings, unique: str, tmp_path: Path
) -> dict[str, str]:
    provision_topics(kafka_settings.model_copy(update={"topic_prefix": unique}))
    return {
        **os.environ,
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "ONFINISH_KAFKA_TOPIC_PREFIX": unique,
        "ONFINISH_REGISTRY_URL": registry_settings.url,
        "ONFINISH_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'clickhouse'}",
        "ONFINISH_SINK_GROUP_PREFIX": f"{unique}-sinks",
        "ONFINISH_SINK_WEB_PORT": str(WEB_PORT),
        "ONFINISH_SINK_QUERY_PORT": str(QUERY_PORT),
        "ONFINISH_SINK_BATCH_SECONDS": "0.3",
        # Every batch's events are inserted as concurrent parts, as large batches are.
        "ONFINISH_SINK_INSERT_PART_MIN_ROWS": "50",
        "ONFINISH_SINK_RETRY_INITIAL_S": "0.2",
        "ONFINISH_SINK_RETRY_MAX_S": "1",
    }


@pytest.fixture
def sink(sink_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = _start_sink(sink_env, tmp_path / "sink.log")
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def _snapshot_of_results(query: QueryClient) -> dict[str, Any]:
    """What analysts would see: per-table totals and a view."""
    return {
        "events": query.query(
            "SELECT count(), uniqExact(event_id), round(sum(cost_usd), 9) FROM events FINAL"
        ).rows,
        "windows": query.query(
            "SELECT toStartOfMinute(window_start) AS m, model_id, sum(events), sum(errors), sum(prompt_tokens)"
            " FROM windows_1m FINAL GROUP BY m, model_id ORDER BY m, model_id"
        ).rows,
        "sessions": query.query("SELECT count(), sum(turns) FROM sessions FINAL").rows,
        "dlq": query.query("SELECT reason, count() FROM dlq FINAL GROUP BY reason ORDER BY reason").rows,
        "model_hourly": query.query("SELECT * FROM model_hourly ORDER BY ALL").rows,
    }


def test_rows_in_equal_rows_out_and_a_second_delivery_changes_nothing(
    sink: subprocess.Popen[bytes],
    sink_env: dict[str, str],
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
):
    outputs = _Outputs(registry_settings, unique, 3000, seed=31)
    poison = [
        (f"{unique}.enriched", b"k", b"not avro at all"),
        (f"{unique}.enriched", b"k", b"\x00\x7f\xff\xff\x00garbage"),  # unknown schema id
        (f"{unique}.enriched", b"k", outputs.of(WINDOW_SNAPSHOT)[0].value),  # a window on the events topic
        # Framed with the events' own schema id, so ClickHouse is the first to find it unreadable.
        (f"{unique}.enriched", b"k", (outputs.of(ENRICHED_EVENT)[7].value or b"")[:-40]),
    ]
    outputs.send(kafka_settings, poison)
    query = QueryClient(f"http://127.0.0.1:{QUERY_PORT}")
    events = outputs.events
    letters = [DeadLetter.from_headers(o.key, o.value, o.headers) for o in outputs.of(None)]
    _wait_for(query, "SELECT count() FROM events FINAL", len(events))
    _wait_for(query, "SELECT count() FROM dlq FINAL", len(letters) + len(poison))

    stored = {row[0] for row in query.query("SELECT toString(event_id) FROM events FINAL").rows}
    assert stored == {str(e.event_id) for e in events}
    reasons = Counter(dict(query.query("SELECT reason, count() FROM dlq FINAL GROUP BY reason").rows))
    expected_reasons = Counter(letter.reason.value for letter in letters)
    expected_reasons.update(["not_confluent_framed", "unknown_schema_id", "unknown_record_type", "truncated"])
    assert reasons == expected_reasons
    # Windows: the latest snapshot of every partition's share, summed, is the independent count.
    per_minute: Counter[tuple[datetime, str]] = Counter()
    for event in events:
        per_minute[(event.finished_at.replace(second=0, microsecond=0), event.model_id)] += 1
    rows = query.query(
        "SELECT window_start, model_id, sum(events) FROM windows_1m FINAL GROUP BY window_start, model_id"
    ).rows
    assert {(datetime.fromisoformat(str(m)).replace(tzinfo=UTC), model): n for m, model, n in rows} == dict(
        per_minute
    )
    errors = query.query("SELECT sum(errors) FROM windows_1m FINAL").rows[0][0]
    assert errors == sum(e.status is not Status.success for e in events)
    sessions = query.query("SELECT sum(turns) FROM sessions FINAL").rows[0][0]
    assert sessions == len(events)
    updated = {o.value for o in outputs.of(QUALITY_UPDATE)}
    assert updated, "the traffic has feedback about calls seen before it"
    requests = {row[0] for row in query.query("SELECT request_id FROM event_quality FINAL").rows}
    assert requests == {_request_of(value) for value in updated}

    before = _snapshot_of_results(query)
    outputs.send(kafka_settings)  # every record once more, at new offsets
    _wait_for_rows(2 * len(events))  # the second copies arrived...
    assert _snapshot_of_results(query) == before  # ...and change no result

    with pytest.raises(ReadOnlyRefused):
        query.query("DROP TABLE events")
    assert query.query("SELECT count() FROM events FINAL").rows[0][0] == len(events)

    sink.send_signal(signal.SIGTERM)
    assert sink.wait(60) == 0


def _exact(query: QueryClient, outputs: _Outputs) -> None:
    events = outputs.events
    _wait_for(query, "SELECT count() FROM events FINAL", len(events))
    stored = {row[0] for row in query.query("SELECT toString(event_id) FROM events FINAL").rows}
    assert stored == {str(e.event_id) for e in events}
    _wait_for(query, "SELECT sum(turns) FROM sessions FINAL", len(events))
    _wait_for(query, "SELECT sum(events) FROM windows_1m FINAL", len(events))
    _wait_for(query, "SELECT count() FROM dlq FINAL", len(outputs.of(None)))


def test_a_sink_killed_between_insert_and_commit_loses_and_doubles_nothing(
    sink_env: dict[str, str],
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    outputs = _Outputs(registry_settings, unique, 2500, seed=32)
    outputs.send(kafka_settings)
    crashing = _start_sink(
        {**sink_env, "ONFINISH_DRILL_SINK_EXIT_AFTER_BATCHES": "2", "ONFINISH_SINK_BATCH_ROWS": "400"},
        tmp_path / "sink.log",
        EXIT_DRILL_SINK,
    )
    assert crashing.wait(120) == SINK_EXIT_CODE, (tmp_path / "sink.log").read_text()[-2000:]
    restarted = _start_sink(sink_env, tmp_path / "sink.log")
    try:
        _exact(QueryClient(f"http://127.0.0.1:{QUERY_PORT}"), outputs)
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(60) == 0


def test_a_sink_waits_for_clickhouse_and_then_catches_up(
    sink_env: dict[str, str],
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    """The embedded engine's directory is held by another process: the sink retries until it is free."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, clickhouse_connect;"
            f"c = clickhouse_connect.get_client(dsn={sink_env['ONFINISH_CLICKHOUSE_DSN']!r});"
            "c.command('SELECT 1'); print('held', flush=True); time.sleep(float(sys.argv[1]))",
            "8",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    sink = _start_sink(sink_env, tmp_path / "sink.log")
    try:
        outputs = _Outputs(registry_settings, unique, 1500, seed=33)
        outputs.send(kafka_settings)
        holder.wait(30)
        _exact(QueryClient(f"http://127.0.0.1:{QUERY_PORT}"), outputs)
        assert "ClickHouse not reachable" in (tmp_path / "sink.log").read_text()
    finally:
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(60) == 0
