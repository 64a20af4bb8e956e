"""A real processor worker between loadgen and the output topics: nothing lost, no PII out."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient

from onfinish.inspection.status import stage_costs
from onfinish.loadgen.load import LoadPlan, LoadReport, run_load
from onfinish.loadgen.traffic import TrafficProfile
from onfinish.processors.pipeline import STAGES
from onfinish.producers.settings import ProducerSettings
from onfinish.schemas.contract import ENRICHED_EVENT, SESSION_SNAPSHOT, WINDOW_SNAPSHOT
from onfinish.schemas.deadletter import DeadLetter
from onfinish.settings import KafkaSettings, RegistrySettings
from onfinish.stack.topics import provision_topics
from tests.conftest import REPO
from tests.integration.records import consume, consume_all, from_the_start

WEB_PORT = 16166


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _metrics(port: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in _metrics_text(port).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _wait_ready(port: int, timeout_s: float = 60) -> None:
    """Until the worker answers on its web port (its start-up takes a few seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _metrics(port)
            return
        except OSError:
            time.sleep(0.5)


class _Load:
    """Seeded loadgen traffic on `<unique>.raw`, sent from a thread while a test does its fault."""

    def __init__(
        self,
        plan: LoadPlan,
        unique: str,
        kafka_settings: KafkaSettings,
        registry_settings: RegistrySettings,
        tmp_path: Path,
    ) -> None:
        self.manifest = tmp_path / "manifest.json"
        self._sent: dict[str, LoadReport] = {}
        settings = ProducerSettings(topic=f"{unique}.raw", spool_dir=tmp_path / "spool")
        self._thread = threading.Thread(
            target=lambda: self._sent.update(
                report=run_load(plan, settings, kafka_settings, registry_settings, manifest=self.manifest)
            )
        )
        self._thread.start()

    def report(self) -> LoadReport:
        """Once every event was sent."""
        self._thread.join(120)
        return self._sent["report"]

    def event_ids(self) -> list[str]:
        return list(json.loads(self.manifest.read_text())["event_ids"])


@contextmanager
def _workers() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts workers (env, log path, command) for a test; any a failed test left running is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], log_path: Path, command: list[str] = WORKER) -> subprocess.Popen[bytes]:
        started.append(_start_worker(env, log_path, command))
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def pipeline_env(
    kafka_settings: KafkaSettings, registry_settings: RegistrySettings, unique: str
) -> dict[str, str]:
    provision_topics(kafka_settings.model_copy(update={"topic_prefix": unique}))
    return {
        **os.environ,
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "ONFINISH_KAFKA_PARTITIONS": str(kafka_settings.partitions),
        "ONFINISH_KAFKA_TOPIC_PREFIX": unique,
        "ONFINISH_REGISTRY_URL": registry_settings.url,
        "ONFINISH_PROCESSOR_APP_ID": f"{unique}-processors",
        "ONFINISH_PROCESSOR_WEB_PORT": str(WEB_PORT),
        "ONFINISH_PROCESSOR_SNAPSHOT_INTERVAL_S": "1",
    }


@pytest.fixture
def worker(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = _start_worker(pipeline_env, tmp_path / "worker.log")
    _wait_ready(WEB_PORT)
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def _latest(kafka: KafkaSettings, prefix: str, record_type: Any, identity: str) -> dict[str, dict[str, Any]]:
    """The latest snapshot (highest version) of every identity on the record type's topic: what
    ClickHouse will keep."""
    latest: dict[str, dict[str, Any]] = {}
    topic = record_type.topic(prefix)
    for message in consume_all(kafka, topic, f"{topic}-latest"):
        snapshot = _decode(record_type, message.value())
        if snapshot[identity] not in latest or snapshot["version"] >= latest[snapshot[identity]]["version"]:
            latest[snapshot[identity]] = snapshot
    return latest


def _latest_windows(kafka: KafkaSettings, prefix: str) -> dict[str, dict[str, Any]]:
    return _latest(kafka, prefix, WINDOW_SNAPSHOT, "window_id")


def _enriched(
    kafka: KafkaSettings,
    registry: RegistrySettings,
    prefix: str,
    expected: list[str],
    timeout_s: float = 120,
    settle_s: float = 4,
) -> list[dict[str, Any]]:
    """The enriched events on the topic, each as often as it is there: read until every expected
    event id has come (or `timeout_s`), then `settle_s` more for late duplicates. Counting messages
    is not enough: quality updates share the topic, so a count is reached before the last events."""
    client = SchemaRegistryClient({"url": registry.url})
    subject = ENRICHED_EVENT.subject(ENRICHED_EVENT.topic(prefix))
    consumer = from_the_start(kafka, ENRICHED_EVENT.topic(prefix), f"{prefix}-enriched-{time.monotonic_ns()}")
    events: list[dict[str, Any]] = []
    missing = set(expected)
    header = b""
    deadline = time.monotonic() + timeout_s
    settle_until = float("inf")
    while time.monotonic() < min(deadline, settle_until):
        message = consumer.poll(0.2)
        value = message.value() if message is not None and message.error() is None else None
        if value is None:
            continue
        if not header:  # registered by the worker's first batch, so known once a message is here
            schema_id = client.get_latest_version(subject).schema_id
            assert schema_id is not None
            header = b"\x00" + schema_id.to_bytes(4, "big")
        if value[:5] == header:
            events.append(_decode(ENRICHED_EVENT, value))
            missing.discard(str(events[-1]["event_id"]))
            if not missing and settle_until == float("inf"):
                settle_until = time.monotonic() + settle_s
    consumer.close()
    return events


def _once(events: list[dict[str, Any]], sent: list[str]) -> dict[str, int]:
    """How far the enriched events are from each sent event once: all three are 0 when they are."""
    ids = [str(e["event_id"]) for e in events]
    return {
        "lost": len(set(sent) - set(ids)),
        "doubled": len(ids) - len(set(ids)),
        "never sent": len(set(ids) - set(sent)),
    }


EACH_ONCE = {"lost": 0, "doubled": 0, "never sent": 0}


def _decode(record_type: Any, value: bytes) -> dict[str, Any]:
    datum = fastavro.schemaless_reader(io.BytesIO(value[5:]), record_type.parsed, record_type.parsed)
    assert isinstance(datum, dict)
    return datum


def _assert_metrics_account_for(metrics: dict[str, float], report: LoadReport) -> None:
    """/metrics after the worker processed a load: what came in, what went out, how long each stage
    took, and no lag left."""
    assert metrics["onfinish_processor_records_in_total"] >= report.sent
    assert metrics['onfinish_processor_outputs_total{type="EnrichedEvent"}'] >= report.events
    assert metrics['onfinish_processor_outputs_total{type="dead_letter"}'] >= sum(report.malformed.values())
    for stage in (*STAGES, "deliver"):
        assert metrics[f'onfinish_processor_stage_seconds_count{{stage="{stage}"}}'] > 0, stage
    assert metrics["onfinish_processor_batch_seconds_count"] > 0
    lags = {name: value for name, value in metrics.items() if name.startswith("onfinish_processor_lag{")}
    assert lags, "a lag per assigned raw partition"
    assert sum(lags.values()) == 0, lags


def test_loadgen_through_a_worker_every_event_once_no_pii_bad_records_dead_lettered(
    worker: subprocess.Popen[bytes],
    pipeline_env: dict[str, str],
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    plan = LoadPlan(
        rate=1500, duration_s=2, seed=31, profile=TrafficProfile(pii_share=0.2, malformed_share=0.02)
    )
    report = run_load(
        plan,
        ProducerSettings(topic=f"{unique}.raw", spool_dir=tmp_path / "spool"),
        kafka_settings,
        registry_settings,
        manifest=tmp_path / "manifest.json",
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        metrics = _metrics(WEB_PORT)
        if metrics.get("onfinish_processor_processed_total", 0) >= report.events:
            break
        time.sleep(1)
    time.sleep(3)  # a snapshot interval or two
    _assert_metrics_account_for(_metrics(WEB_PORT), report)
    costs = stage_costs([_metrics_text(WEB_PORT)])  # what `onfinish status` shows of them
    assert costs is not None and all(us > 0 for us in costs.values()), costs
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, "graceful shutdown"

    records = _enriched(kafka_settings, registry_settings, unique, manifest["event_ids"], settle_s=2)
    assert _once(records, manifest["event_ids"]) == EACH_ONCE
    raw_bytes = b"\n".join(
        m.value() for m in consume_all(kafka_settings, f"{unique}.enriched", f"{unique}-all")
    )
    assert not [pii for pii in manifest["planted_pii"] if pii.encode() in raw_bytes], (
        "PII left the processors"
    )

    letters = [
        DeadLetter.from_headers(m.key(), m.value(), m.headers() or [])
        for m in consume(kafka_settings, f"{unique}.dlq", sum(report.malformed.values()), f"{unique}-dlq")
    ]
    assert len(letters) == sum(report.malformed.values())
    assert all(letter.source_topic == f"{unique}.raw" and letter.reason for letter in letters)

    latest = _latest_windows(kafka_settings, unique)
    by_window: dict[tuple[Any, str], int] = defaultdict(int)
    for snapshot in latest.values():
        by_window[(snapshot["window_start"], snapshot["model_id"])] += snapshot["events"]
    expected: dict[tuple[Any, str], int] = defaultdict(int)
    for record in records:
        expected[(record["finished_at"].replace(second=0, microsecond=0), record["model_id"])] += 1
    assert dict(by_window) == dict(expected)


WORKER = [sys.executable, "-m", "onfinish.processors.worker", "worker"]
DRILL_WORKER = [sys.executable, "-m", "tests.drills", "processor", "worker"]  # the worker, with drills


def _start_worker(
    env: dict[str, str], log_path: Path, command: list[str] = WORKER
) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen(
        command,
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_a_worker_killed_mid_stream_loses_nothing_and_counts_nothing_twice(
    pipeline_env: dict[str, str],
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    env = {
        **pipeline_env,
        "ONFINISH_PROCESSOR_SESSION_TIMEOUT_S": "6",
        "ONFINISH_PROCESSOR_HEARTBEAT_INTERVAL_S": "1",
    }
    with _workers() as start:
        first = start(env, tmp_path / "first.log")
        _wait_ready(WEB_PORT)
        plan = LoadPlan(
            rate=800, duration_s=6, seed=32, profile=TrafficProfile(malformed_share=0, feedback_share=0.05)
        )
        load = _Load(plan, unique, kafka_settings, registry_settings, tmp_path)
        time.sleep(3)
        first.send_signal(signal.SIGKILL)  # mid-stream, with state and offsets not yet committed
        first.wait(10)
        second = start(env, tmp_path / "second.log")
        report = load.report()
        assert report.delivered, report.sdk
        sent = load.event_ids()
        # At least once on the topic: events replayed after the kill may be there twice.
        enriched = _enriched(kafka_settings, registry_settings, unique, sent, settle_s=0)
        assert _once(enriched, sent)["lost"] == 0
        time.sleep(4)  # the last window snapshots
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0

    latest = _latest_windows(kafka_settings, unique)
    assert sum(s["events"] for s in latest.values()) == report.events, (
        "each event counted once in the windows"
    )


def test_a_batch_that_cannot_be_processed_ends_the_worker_and_loses_nothing(
    pipeline_env: dict[str, str],
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    """The registry refuses the enriched events' schema (an incompatible one holds the subject):
    the worker cannot finish its first batch, so it ends with an error rather than carry on with a
    batch it can never commit; once the subject is fixed, a new worker stores every event once."""
    from confluent_kafka.schema_registry import Schema

    client = SchemaRegistryClient({"url": registry_settings.url})
    subject = ENRICHED_EVENT.subject(ENRICHED_EVENT.topic(unique))
    poison = {
        "type": "record",
        "name": "EnrichedEvent",
        "namespace": "io.onfinish",
        "fields": [{"name": "event_id", "type": "long"}],
    }
    client.register_schema(subject, Schema(json.dumps(poison), "AVRO"))
    client.set_compatibility(subject, "FULL")
    report = run_load(
        LoadPlan(rate=500, duration_s=1, seed=34, profile=TrafficProfile(malformed_share=0)),
        ProducerSettings(topic=f"{unique}.raw", spool_dir=tmp_path / "spool"),
        kafka_settings,
        registry_settings,
        manifest=tmp_path / "manifest.json",
    )
    with _workers() as start:
        first = start(pipeline_env, tmp_path / "first.log")
        assert first.wait(90) == 1, "the worker ends with an error"
        assert "a batch could not be processed" in (tmp_path / "first.log").read_text(errors="replace")
        client.set_compatibility(subject, "NONE")
        second = start(pipeline_env, tmp_path / "second.log")
        sent = json.loads((tmp_path / "manifest.json").read_text())["event_ids"]
        assert len(sent) == report.events
        assert _once(_enriched(kafka_settings, registry_settings, unique, sent), sent) == EACH_ONCE
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0


def test_sigterm_mid_stream_is_a_graceful_stop_that_leaves_nothing_to_redo(
    pipeline_env: dict[str, str],
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    """A worker stopped while records flow delivers and commits every batch it processed, then
    leaves: its successor processes only the rest, so each event is on the enriched topic once
    (a replayed record would be enriched again, a record dropped at its start never).

    The successor starts with a backlog, under the slow-start drill: its fetcher is still delivering
    its first fetch when its recovery seeks to the committed offsets and resumes the flow, the moment
    at which records delivered were once dropped and never read again (1,088 events lost in CI)."""
    env = {**pipeline_env, "ONFINISH_LOG_LEVEL": "INFO"}  # the offsets committed at stop, if it fails
    with _workers() as start:
        first = start(env, tmp_path / "first.log")
        _wait_ready(WEB_PORT)
        plan = LoadPlan(rate=1000, duration_s=6, seed=33, profile=TrafficProfile(malformed_share=0))
        load = _Load(plan, unique, kafka_settings, registry_settings, tmp_path)
        deadline = time.monotonic() + 60
        while _metrics(WEB_PORT).get("onfinish_processor_processed_total", 0) < 1500:
            assert time.monotonic() < deadline, "the worker processed nothing"
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)  # mid-stream: batches buffered, in progress and in flight
        assert first.wait(60) == 0
        log = (tmp_path / "first.log").read_text(errors="replace")
        assert "leaving without a graceful stop" not in log, log[-3000:]
        assert "offsets committed at stop" in log, log[-3000:]
        slow_start = {"ONFINISH_DRILL_SLOW_START_RECORDS": "800", "ONFINISH_DRILL_SLOW_START_MS": "2"}
        second = start({**env, **slow_start}, tmp_path / "second.log", DRILL_WORKER)
        report = load.report()
        _wait_ready(WEB_PORT)
        sent = load.event_ids()
        assert len(sent) == report.events
        once = _once(_enriched(kafka_settings, registry_settings, unique, sent, settle_s=6), sent)
        commits = [line for line in log.splitlines() if "commit" in line.lower()]
        successor = (tmp_path / "second.log").read_text(errors="replace").splitlines()
        successor = [line for line in successor if not line.startswith("%")]  # librdkafka's own
        assert once == EACH_ONCE, "\n".join(["first:", *commits[-20:], "second:", *successor[-40:]])
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    log = (tmp_path / "second.log").read_text(errors="replace")
    # Records it skipped as read twice are never acked; its stop must not wait for them.
    assert "Waiting for tasks" not in log and "leaving without a graceful stop" not in log, log[-3000:]


def test_records_that_never_reached_the_stream_are_read_again_before_anything_after_them(
    pipeline_env: dict[str, str],
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    """A worker whose stream jumps over 150 records of a partition (the drill makes the hole Faust
    was seen to make) finds the hole, reads the partition again from it, and processes each record
    once; the records it skipped were never acknowledged, so its stop leaves nothing behind."""
    env = {
        **pipeline_env,
        "ONFINISH_DRILL_HOLE_AFTER_RECORDS": "400",
        "ONFINISH_DRILL_HOLE_RECORDS": "150",
    }
    with _workers() as start:
        worker = start(env, tmp_path / "worker.log", DRILL_WORKER)
        _wait_ready(WEB_PORT)
        plan = LoadPlan(rate=1000, duration_s=4, seed=35, profile=TrafficProfile(malformed_share=0))
        report = _Load(plan, unique, kafka_settings, registry_settings, tmp_path).report()
        sent = json.loads((tmp_path / "manifest.json").read_text())["event_ids"]
        assert len(sent) == report.events
        assert (
            _once(_enriched(kafka_settings, registry_settings, unique, sent, settle_s=6), sent) == EACH_ONCE
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "records missing from the stream" in log, "the drill made a hole and the guard found it"
    assert "leaving without a graceful stop" not in log and "Traceback" not in log, log[-3000:]


def test_every_event_delivered_twice_changes_no_aggregate(
    worker: subprocess.Popen[bytes],
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    """A duplicating producer: every raw record sent again (same key, so the same partition)."""
    plan = LoadPlan(rate=1000, duration_s=2, seed=33, profile=TrafficProfile(malformed_share=0))
    report = run_load(
        plan,
        ProducerSettings(topic=f"{unique}.raw", spool_dir=tmp_path / "spool"),
        kafka_settings,
        registry_settings,
        manifest=tmp_path / "manifest.json",
    )
    raw = consume_all(kafka_settings, f"{unique}.raw", f"{unique}-raw")
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
    for message in raw:
        producer.produce(f"{unique}.raw", message.value(), message.key(), headers=message.headers())
    assert producer.flush(60) == 0

    deadline = time.monotonic() + 90
    while _metrics(WEB_PORT).get("onfinish_processor_duplicates_total", 0) < report.events:
        assert time.monotonic() < deadline, _metrics(WEB_PORT)
        time.sleep(1)
    time.sleep(3)  # a snapshot interval or two
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    enriched = _enriched(kafka_settings, registry_settings, unique, manifest["event_ids"])
    assert _once(enriched, manifest["event_ids"]) == EACH_ONCE, "each event once on the enriched topic"
    latest = _latest_windows(kafka_settings, unique)
    assert sum(s["events"] for s in latest.values()) == report.events, "each event counted once"
    sessions = _latest(kafka_settings, unique, SESSION_SNAPSHOT, "session_id")
    assert sum(s["turns"] for s in sessions.values()) == report.events
