"""onfinish collect on the real stack: real OpenTelemetry clients in, ClickHouse rows out.

Each test runs the pipeline of the `run` fixture (processor and sink workers, chDB) and a receiver
process (`onfinish collect`) of its own; the clients are real: the openai client instrumented by
OpenTelemetry's and by Traceloop's instrumentation (each in its own process: both patch openai and
set the process's tracer provider), and the Vercel AI SDK under the machine's Node.js.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from onfinish.collect import assembly
from onfinish.collect.mapping import SPAN_NAMESPACE
from onfinish.collect.metrics import CollectMetrics
from onfinish.collect.samples import genai_request, kv
from onfinish.collect.settings import CollectSettings
from onfinish.collect.topic import TopicWorker
from onfinish.processors.pricing import PriceCatalog, compute_cost
from onfinish.producers.settings import ProducerSettings
from onfinish.settings import KafkaSettings, RegistrySettings
from onfinish.stack.topics import TopicSpec, provision_topics
from tests.collect.openai_stub import FIRST_CHUNK_DELAY_S, StubServer
from tests.conftest import REPO
from tests.integration.pipeline import Run

pytestmark = pytest.mark.integration
RECEIVER_PORT = 14318
NODE_DIR = REPO / "tests" / "collect" / "node"


class ReceiverProcess:
    """`onfinish collect` as a process of its own, on the run's topics, with a spool that outlives it."""

    def __init__(self, spool: Path, log: Path, port: int = RECEIVER_PORT) -> None:
        self.spool, self.log, self.port = spool, log, port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def traces_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def start(self) -> None:
        env = {
            **os.environ,
            "ONFINISH_PRODUCER_SPOOL_DIR": str(self.spool),
            "ONFINISH_COLLECT_PORT": str(self.port),
        }
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "onfinish", "collect"],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the receiver did not start: {self.log.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            return str(response.read().decode())


@pytest.fixture
def receiver(run: Run, tmp_path: Path) -> Iterator[ReceiverProcess]:
    process = ReceiverProcess(tmp_path / "collect-spool", tmp_path / "collect.log")
    process.start()
    yield process
    assert process.stop() == 0, process.log.read_text()


def rows(run: Run, sql: str) -> list[dict[str, Any]]:
    result = run.query.query(sql)
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def wait_rows(run: Run, sql: str, count: int, timeout_s: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = rows(run, sql)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(1)


EVENT_COLUMNS = (
    "request_id, model_id, model_version, provider, prompt_tokens, completion_tokens, cached_tokens, "
    "reasoning_tokens, ttft_ms, latency_ms, status, error_type, streamed, stream_chunks, cost_usd, cost_source, "
    "finish_reason, environment, sdk_name, prompt_chars"
)


def _expected_cost(row: dict[str, Any]) -> float:
    class Billed:
        provider = row["provider"]
        model_id = row["model_id"]
        model_version = row["model_version"]
        finished_at = datetime.now(UTC)
        prompt_tokens = row["prompt_tokens"]
        completion_tokens = row["completion_tokens"]
        cached_tokens = row["cached_tokens"]
        reasoning_tokens = row["reasoning_tokens"]
        reported_cost_usd = None

    return float(compute_cost(PriceCatalog.load(), Billed()).total_usd)


def _run_client(which: str, receiver: ReceiverProcess, stub: StubServer, run_id: str) -> dict[str, str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.collect.openai_client",
            which,
            receiver.traces_url,
            stub.base_url,
            run_id,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_opentelemetry_openai_v2_instrumentation_reaches_clickhouse(
    run: Run, receiver: ReceiverProcess, unique: str
):
    with StubServer() as stub:
        ids = _run_client("v2", receiver, stub, unique)
    found = wait_rows(run, f"SELECT {EVENT_COLUMNS} FROM events FINAL WHERE service = 'v2-{unique}'", 3)
    by_request = {row["request_id"]: row for row in found}
    assert len(found) == 3, found
    plain, streamed = by_request[ids["plain"]], by_request[ids["streamed"]]
    for row in (plain, streamed):
        assert (row["provider"], row["model_id"], row["model_version"]) == (
            "openai",
            "gpt-4o",
            "gpt-4o-2024-08-06",
        )
        # openai-v2 2.4b0 reports input and output tokens of chat completions, not their cached or
        # reasoning details, nor a time to first chunk (its Responses API path does the details).
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (1200, 300, 0)
        assert (row["status"], row["environment"], row["sdk_name"]) == ("success", "test", "onfinish-collect")
        assert row["cost_source"].startswith("catalog:")
        assert row["cost_usd"] == pytest.approx(_expected_cost(row)) and row["cost_usd"] > 0
        assert row["ttft_ms"] is None
    assert plain["finish_reason"] == "stop"
    error = next(row for row in found if row["model_id"] == "gpt-4o-error")
    assert (error["status"], error["error_type"], error["cost_source"]) == (
        "error",
        "BadRequestError",
        "unpriced",
    )


def test_traceloop_openllmetry_instrumentation_reaches_clickhouse(
    run: Run, receiver: ReceiverProcess, unique: str
):
    with StubServer() as stub:
        ids = _run_client("traceloop", receiver, stub, unique)
    found = wait_rows(
        run, f"SELECT {EVENT_COLUMNS} FROM events FINAL WHERE service = 'traceloop-{unique}'", 3
    )
    by_request = {row["request_id"]: row for row in found}
    assert len(found) == 3, found
    plain, streamed = by_request[ids["plain"]], by_request[ids["streamed"]]
    assert (
        plain["prompt_tokens"],
        plain["cached_tokens"],
        plain["completion_tokens"],
        plain["reasoning_tokens"],
    ) == (
        1200,
        1024,
        300,
        128,
    )
    assert (plain["streamed"], plain["ttft_ms"], plain["status"]) == (False, None, "success")
    # Streamed: the usage chunk's cache details are reported, its reasoning ones are not; the time to
    # first token comes from the first chunk event (at least the stub's delay before it).
    assert (streamed["prompt_tokens"], streamed["cached_tokens"], streamed["completion_tokens"]) == (
        1200,
        1024,
        300,
    )
    assert streamed["streamed"] is True and streamed["stream_chunks"] >= 5
    assert FIRST_CHUNK_DELAY_S * 1000 <= streamed["ttft_ms"] <= streamed["latency_ms"]
    for row in (plain, streamed):
        assert row["model_version"] == "gpt-4o-2024-08-06"
        assert row["cost_usd"] == pytest.approx(_expected_cost(row)) and row["cost_usd"] > 0
        assert row["prompt_chars"] > 0  # content was fingerprinted (and not sent)
    error = next(row for row in found if row["model_id"] == "gpt-4o-error")
    assert (error["status"], error["error_type"]) == ("error", "BadRequestError")
    content = rows(
        run,
        f"SELECT count() AS n FROM events WHERE service = 'traceloop-{unique}' AND mapContains(attributes, 'gen_ai.input.messages')",
    )
    assert content[0]["n"] == 0


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_vercel_ai_sdk_telemetry_reaches_clickhouse(
    run: Run, receiver: ReceiverProcess, unique: str, encoding: str
):
    assert (NODE_DIR / "node_modules" / "ai").is_dir(), "run `make install` (npm ci in tests/collect/node)"
    run_id = f"{unique}-{encoding}"
    result = subprocess.run(
        ["node", "vercel-ai.mjs", receiver.traces_url, encoding, run_id],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])["answers"]
    assert answers["generate"] == answers["stream"] == "Paris."
    found = wait_rows(
        run,
        f"SELECT {EVENT_COLUMNS}, session_id, feature_id FROM events FINAL WHERE service = 'vercel-{run_id}'",
        3,
    )
    assert len(found) == 3, found  # the wrapper spans (ai.generateText, ai.streamText) are not calls
    by_request = {row["request_id"]: row for row in found}
    generated, streamed = by_request[f"resp-generate-{run_id}"], by_request[f"resp-stream-{run_id}"]
    for row in (generated, streamed):
        assert (row["provider"], row["model_id"], row["model_version"]) == (
            "openai",
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
        )
        assert (
            row["prompt_tokens"],
            row["cached_tokens"],
            row["completion_tokens"],
            row["reasoning_tokens"],
        ) == (
            2000,
            1500,
            400,
            250,
        )
        assert row["session_id"] is not None  # pseudonymised? no: sessions pass as they are
        assert row["cost_usd"] == pytest.approx(_expected_cost(row)) and row["cost_usd"] > 0
    assert (generated["streamed"], generated["ttft_ms"], generated["feature_id"]) == (False, None, "generate")
    assert streamed["streamed"] is True and 100 <= streamed["ttft_ms"] <= streamed["latency_ms"]
    failed = next(row for row in found if row not in (generated, streamed))
    assert failed["status"] == "error"
    ignored = receiver.metrics()
    assert 'onfinish_collect_spans_ignored_total{reason="wrapper"}' in ignored


def test_a_killed_receiver_loses_no_span_it_answered_200_for(run: Run, tmp_path: Path, unique: str):
    """SIGKILL mid-stream, a sender that retries: every span that got a 200 is in ClickHouse, once."""
    receiver = ReceiverProcess(tmp_path / "collect-spool", tmp_path / "collect.log")
    receiver.start()
    service = f"kill-{unique}"
    requests = [genai_request(64, service=service, seed=i) for i in range(40)]
    acknowledged: set[uuid.UUID] = set()
    statuses: list[str] = []

    def send() -> None:
        for request in requests:
            body = request.SerializeToString()
            for _ in range(200):  # the exporter's retries, bounded
                try:
                    post = urllib.request.Request(
                        receiver.traces_url, body, {"Content-Type": "application/x-protobuf"}, method="POST"
                    )
                    with urllib.request.urlopen(post, timeout=10) as response:
                        answer = ExportTraceServiceResponse.FromString(response.read())
                    assert not answer.partial_success.rejected_spans
                    statuses.append("200")
                    for span in request.resource_spans[0].scope_spans[0].spans:
                        acknowledged.add(uuid.uuid5(SPAN_NAMESPACE, span.trace_id.hex() + span.span_id.hex()))
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                    statuses.append(type(exc).__name__)
                    time.sleep(0.1)
            time.sleep(0.05)

    try:
        sender = threading.Thread(target=send)
        sender.start()
        while len(statuses) < 15:
            time.sleep(0.02)
        receiver.kill()
        time.sleep(1)
        receiver.start()  # the same spool: the new process adopts what the dead one had not delivered
        sender.join(300)
        assert not sender.is_alive()
        assert len(acknowledged) == 40 * 64
        assert any(status != "200" for status in statuses), "the kill should have cost the sender some tries"
        found = wait_rows(
            run,
            f"SELECT toString(event_id) AS id FROM events FINAL WHERE service = '{service}'",
            len(acknowledged),
            180,
        )
        stored = [uuid.UUID(row["id"]) for row in found]
        assert len(stored) == len(set(stored)), "an event was stored twice"
        assert set(stored) == acknowledged
        # Counted once in the aggregates too (window snapshots come every few seconds: wait for them).
        deadline = time.monotonic() + 120
        while (windowed := rows(run, "SELECT sum(events) AS n FROM windows_1m FINAL")[0]["n"]) < len(
            acknowledged
        ) and time.monotonic() < deadline:
            time.sleep(1)
        assert windowed == len(acknowledged)
    finally:
        code = receiver.stop()
    assert code == 0, receiver.log.read_text()


def test_the_collector_topic_path_maps_records_and_dead_letters_the_malformed(
    run: Run, kafka_settings: KafkaSettings, registry_settings: RegistrySettings, tmp_path: Path, unique: str
):
    prefix = os.environ["ONFINISH_KAFKA_TOPIC_PREFIX"]
    kafka = KafkaSettings(bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=prefix)
    spec = TopicSpec("otlp_spans", "the Collector's Kafka exporter's topic")
    provision_topics(kafka, (spec,))
    topic = spec.name(kafka)
    service = f"collector-{unique}"
    # As the Collector's Kafka exporter writes them (encoding otlp_proto): one ExportTraceServiceRequest
    # per record, no key unless partitioning by trace id; a batch of spans of several traces per record.
    good = [genai_request(25, service=service, seed=100 + i) for i in range(4)]
    feedback = genai_request(1, service=service, seed=7)
    span = feedback.resource_spans[0].scope_spans[0].spans[0]
    event = span.events.add()
    event.name, event.time_unix_nano = "onfinish.feedback", span.end_time_unix_nano
    event.attributes.extend(
        [kv("gen_ai.response.id", f"chatcmpl-{span.span_id.hex()}"), kv("onfinish.feedback.rating", -1)]
    )
    malformed = good[0].SerializeToString()[:-7]
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    records = [good[0], good[1], None, None, feedback, good[2], good[3]]
    for index, request in enumerate(records):
        producer.produce(
            topic, {2: malformed, 3: b""}.get(index) or (request and request.SerializeToString())
        )
    producer.produce(topic, good[0].SerializeToString())  # a record delivered twice
    assert producer.flush(30) == 0

    settings = CollectSettings(topic=topic, group_id=f"{unique}-collect", batch_records=3)
    sdk = assembly.emitter(kafka, registry_settings, ProducerSettings(spool_dir=tmp_path / "topic-spool"))
    worker = TopicWorker(settings, kafka, sdk, assembly.ingest(settings, sdk), CollectMetrics(sdk))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        found = wait_rows(
            run, f"SELECT toString(event_id) AS id FROM events FINAL WHERE service = '{service}'", 101
        )
        letters = wait_rows(
            run, f"SELECT reason, stage, source_offset FROM dlq FINAL WHERE source_topic = '{topic}'", 2
        )
        quality = wait_rows(run, "SELECT request_id, rating FROM event_quality FINAL WHERE rating = -1", 1)
    finally:
        stop.set()
        thread.join(60)
    assert len(found) == 101 and len({row["id"] for row in found}) == 101
    assert sorted((row["stage"], row["reason"]) for row in letters) == [
        ("collect", "empty"),
        ("collect", "undecodable"),
    ]
    assert [row["request_id"] for row in quality] == [f"chatcmpl-{span.span_id.hex()}"]
    committed = worker.consumer  # closed: the group's committed offsets say everything was read
    assert worker.batches >= 3 and committed is not None
