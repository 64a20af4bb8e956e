"""The pipeline on a secured stack of its own: SASL_SSL with SCRAM users and ACLs per principal, the
registry over TLS with basic auth, the query endpoint behind a token.

One secured stack for the module (ports 29xxx, data in .onfinish-test/secure), one pipeline (a sink
and a processor worker, each as its own principal) on the default topic names the ACLs are written
for. The module ends by scanning every log file of the run, the workers' /health and /metrics pages
and the dead letters for every secret the run used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from pydantic import SecretStr

from onfinish.demo.local_pipeline import Demo
from onfinish.loadgen.traffic import TrafficGenerator, TrafficProfile
from onfinish.processors.settings import ProcessorSettings
from onfinish.producers import Emitter, OnFinishEvent, ProducerSettings
from onfinish.query.client import QueryClient
from onfinish.security import librdkafka_config
from onfinish.settings import KafkaSettings, StackSettings
from onfinish.sinks.settings import SinkSettings
from onfinish.stack.security import PRINCIPALS, StackSecurity
from onfinish.stack.stack import Stack
from tests.conftest import REPO, isolated_stack_settings

pytestmark = pytest.mark.integration

PORTS = {"processor": 16966, "sink_web": 16976, "sink_query": 16977}
QUERY_TOKEN = f"query-token-{uuid.uuid4().hex}"
CONNECT_TIMEOUT_S = 10
LOGS: list[Path] = []  # every log file this module's processes wrote, scanned at the end


@pytest.fixture(scope="module")
def secured() -> Iterator[Stack]:
    base = isolated_stack_settings(REPO / ".onfinish-test" / "secure", port_base=29000)
    stack = Stack(base.model_copy(update={"secure": True}), kafka=KafkaSettings(partitions=3))
    stack.up()
    yield stack
    if not os.environ.get("ONFINISH_TEST_KEEP_STACK"):
        stack.down()


@pytest.fixture(scope="module")
def pipeline(secured: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """A sink (as `sink`) and a processor (as `processor`) on the secured stack, the endpoint with a token."""
    patch = pytest.MonkeyPatch()
    for name, value in {
        "ONFINISH_PROCESSOR_WEB_PORT": str(PORTS["processor"]),
        "ONFINISH_PROCESSOR_SESSION_TIMEOUT_S": "6",
        "ONFINISH_PROCESSOR_HEARTBEAT_INTERVAL_S": "1",
        "ONFINISH_SINK_WEB_PORT": str(PORTS["sink_web"]),
        "ONFINISH_SINK_QUERY_PORT": str(PORTS["sink_query"]),
        "ONFINISH_CLICKHOUSE_DSN": f"chdb:///{tmp_path_factory.mktemp('secure-chdb')}",
        "ONFINISH_QUERY_TOKEN": QUERY_TOKEN,
        "ONFINISH_KAFKA_PARTITIONS": "3",
    }.items():
        patch.setenv(name, value)
    demo = Demo(secured.settings, sink_settings=SinkSettings(), processor_settings=ProcessorSettings())
    try:
        demo.start_sink()
        demo.start_processors()
        yield demo
        assert all(w.process.poll() is None for w in demo.children), "a worker died"
    finally:
        demo.stop()
        LOGS.extend(worker.log for worker in demo.children)
        patch.undo()


def _query(demo: Demo) -> QueryClient:
    return QueryClient(demo.query_url, timeout=20, token=SecretStr(QUERY_TOKEN))


def _stored(demo: Demo, ids: set[str], timeout_s: float = 300) -> list[str]:
    """The event ids among `ids` ClickHouse holds, once all are there (or the time is up)."""
    query = _query(demo)
    listed = ",".join(f"'{event_id}'" for event_id in ids)
    deadline = time.monotonic() + timeout_s
    while True:
        rows = query.query(f"SELECT toString(event_id) FROM events FINAL WHERE event_id IN ({listed})").rows
        if len(rows) >= len(ids) or time.monotonic() > deadline:
            return [row[0] for row in rows]
        time.sleep(1)


def test_loadgen_through_the_sdk_over_sasl_ssl_stores_every_event_once(pipeline: Demo, secured: Stack):
    import json

    # A fresh seed: the stack's data outlive a run, and the processors drop an event id they saw.
    seed = uuid.uuid4().int % 1_000_000
    report = pipeline.send_traffic(rate=200, duration_s=5, seed=seed, profile=TrafficProfile(pii_share=0.02))
    assert report.delivered
    sent = set(json.loads((secured.settings.home / "demo-manifest.json").read_text())["event_ids"])
    stored = _stored(pipeline, sent)
    assert len(stored) == len(set(stored)) == len(sent), f"sent {len(sent)}, stored {len(stored)}"
    assert set(stored) == sent


def test_the_query_endpoint_refuses_a_request_without_its_token(pipeline: Demo):
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": QUERY_TOKEN}):
        request = urllib.request.Request(f"{pipeline.query_url}/query?sql=SELECT%201", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        assert "Bearer" in refused.value.headers["WWW-Authenticate"]
    assert _query(pipeline).query("SELECT 1").rows == [(1,)]


def _denied(error: KafkaError | None) -> bool:
    return error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_each_principal_is_denied_what_it_must_not_do(secured: Stack):
    security = secured.security
    # The SDK may write onfinish.raw and nothing else: it may not even see onfinish.enriched (Read
    # implies Describe, so a topic it may not describe is one it cannot read), while the sink can.
    for principal, allowed in (("sdk", False), ("sink", True)):
        consumer = Consumer(
            {**librdkafka_config(security.kafka_settings(principal)), "group.id": "never-joined"}
        )
        topic = consumer.list_topics(topic="onfinish.enriched", timeout=30).topics["onfinish.enriched"]
        consumer.close()
        assert (topic.error is None) == allowed, (principal, topic.error)
        if not allowed:
            assert _denied(topic.error), topic.error
    # The processors may not write onfinish.raw, nor the sink any topic.
    for principal, topic in (
        ("processor", "onfinish.raw"),
        ("sink", "onfinish.enriched"),
        ("sdk", "onfinish.dlq"),
    ):
        outcome: list[KafkaError | None] = []

        def delivered(error: KafkaError | None, _: object, seen: list[KafkaError | None] = outcome) -> None:
            seen.append(error)

        producer = Producer(
            {**librdkafka_config(security.kafka_settings(principal)), "message.timeout.ms": 20000}
        )
        producer.produce(topic, b"must not land", on_delivery=delivered)
        producer.flush(30)
        assert outcome and _denied(outcome[0]), (principal, topic, outcome)


def _worker(command: list[str], environment: dict[str, str], log: Path) -> tuple[int, list[str], float]:
    """Run a worker until it exits (at most a minute): its exit code, its log lines, its seconds."""
    began = time.monotonic()
    with log.open("w") as handle:
        result = subprocess.run(
            command, env=environment, stdout=handle, stderr=subprocess.STDOUT, timeout=60, check=False
        )
    LOGS.append(log)
    lines = [line for line in log.read_text().splitlines() if "[error" in line or "[warning" in line]
    return result.returncode, lines, time.monotonic() - began


@pytest.fixture(scope="module")
def stranger_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed nothing the stack serves."""
    other = StackSecurity(StackSettings(home=tmp_path_factory.mktemp("stranger"), secure=True))
    other.ensure()
    return other.ca_file


@pytest.mark.parametrize(
    ("worker", "principal", "breakage", "expected"),
    [
        ("processor", "processor", "kafka password", "refused SCRAM-SHA-512 user 'processor'"),
        ("sink", "sink", "kafka password", "refused SCRAM-SHA-512 user 'sink'"),
        ("processor", "processor", "registry password", "schema registry: https://"),
        ("sink", "sink", "unknown CA", "TLS to 127.0.0.1:29092 failed"),
        ("processor", "sdk", "missing ACL", "SCRAM-SHA-512 user 'sdk' is not allowed to use topic onfinish."),
        ("sink", "processor", "missing ACL", "not allowed to use consumer group onfinish-sinks-events"),
    ],
)
def test_a_refusal_stops_a_worker_with_one_clear_line_within_its_timeout(
    secured: Stack,
    tmp_path: Path,
    stranger_ca: Path,
    worker: str,
    principal: str,
    breakage: str,
    expected: str,
):
    security = secured.security
    environment = {
        **os.environ,
        **security.environment(principal),
        "ONFINISH_STACK_HOME": str(secured.settings.home),
        "ONFINISH_KAFKA_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
        "ONFINISH_PROCESSOR_WEB_PORT": "16986",
        "ONFINISH_SINK_WEB_PORT": "16987",
        "ONFINISH_SINK_QUERY_PORT": "0",
        "ONFINISH_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'chdb'}",
        "ONFINISH_LOG_FORMAT": "console",
    }
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-password")
    if breakage == "kafka password":
        environment["ONFINISH_KAFKA_SASL_PASSWORD_FILE"] = str(wrong)
    elif breakage == "registry password":
        wrong.write_text("onfinish:wrong-password")
        environment["ONFINISH_REGISTRY_BASIC_AUTH_USER_INFO_FILE"] = str(wrong)
    elif breakage == "unknown CA":
        environment["ONFINISH_KAFKA_SSL_CA_FILE"] = str(stranger_ca)
    command = (
        [sys.executable, "-m", "onfinish.processors.worker", "worker"]
        if worker == "processor"
        else [sys.executable, "-m", "onfinish", "sink"]
    )
    code, lines, seconds = _worker(command, environment, tmp_path / f"{worker}.log")
    assert code != 0
    assert len(lines) == 1, lines
    assert "cannot start" in lines[0] and expected in lines[0], lines[0]
    assert seconds < CONNECT_TIMEOUT_S + 20  # the timeout, plus the interpreter's start-up


def test_status_names_the_component_that_refuses_us(secured: Stack, tmp_path: Path):
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-password")
    environment = {
        **os.environ,
        **secured.security.environment("sdk"),
        # Another address than the stack's: status asks Kafka itself, with these credentials.
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": f"localhost:{secured.settings.kafka_port}",
        "ONFINISH_KAFKA_SASL_PASSWORD_FILE": str(wrong),
        "ONFINISH_STACK_HOME": str(secured.settings.home),
        "ONFINISH_PROCESSOR_WEB_PORT": "16996",
        "ONFINISH_SINK_WEB_PORT": "16997",
        "COLUMNS": "250",
    }
    result = subprocess.run(
        [sys.executable, "-m", "onfinish", "status"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode != 0
    kafka_row = next(line for line in result.stdout.splitlines() if "kafka" in line)
    assert "refuses us" in kafka_row, result.stdout
    assert "wrong-password" not in result.stdout + result.stderr


SEED = uuid.uuid4().int % 1_000_000  # fresh ids each run: the processors drop an event id they saw


NOW = datetime.now(UTC) - timedelta(minutes=1)  # events the processors' time bounds take


def _events(count: int) -> list[OnFinishEvent]:
    profile = TrafficProfile(malformed_share=0, feedback_share=0, start=NOW)
    items = TrafficGenerator(profile, seed=SEED).items(count * 2)
    return [item for item in items if isinstance(item, OnFinishEvent)][:count]


def test_the_sdk_with_wrong_credentials_keeps_every_event_and_delivers_them_once_fixed(
    pipeline: Demo, secured: Stack, tmp_path: Path
):
    security = secured.security
    registry = security.registry_settings()
    right = security.kafka_settings("sdk")
    wrong = right.model_copy(update={"sasl_password": SecretStr("wrong-password")})
    settings = ProducerSettings(topic="onfinish.raw", spool_dir=tmp_path / "spool")
    events = _events(300)

    emitter = Emitter(settings, wrong, registry)
    for event in events:
        emitter.on_finish(event)  # hands off and returns, whatever Kafka says
    assert not emitter.flush(5)  # nothing can be delivered
    stats = emitter.stats()
    assert stats["spooled"] == len(events) and stats["dropped"] == 0 and stats["rejected"] == 0, stats
    emitter.close(timeout=2)

    # A restart with the right password: the service's next event starts the SDK, which adopts the
    # spool the first process left and replays it.
    fixed = Emitter(settings, right, registry)
    after, *_ = _events(301)[300:]
    try:
        fixed.on_finish(after)
        assert fixed.flush(90), fixed.stats()
        assert fixed.stats()["replayed"] == len(events), fixed.stats()
    finally:
        fixed.close()
    ids = {str(event.event_id) for event in [*events, after]}
    stored = _stored(pipeline, ids)
    assert sorted(stored) == sorted(ids)


def test_zz_no_secret_reaches_a_log_file_a_page_or_a_dead_letter(pipeline: Demo, secured: Stack):
    """Runs last in the module (the name): everything above has written its logs by now."""
    security = secured.security
    secrets = {f"kafka password of {p}": security.password(p) for p in PRINCIPALS}
    secrets["registry password"] = security.registry_password()
    secrets["query token"] = QUERY_TOKEN
    pages = []
    for url in (
        f"http://127.0.0.1:{PORTS['processor']}/health",
        f"http://127.0.0.1:{PORTS['processor']}/metrics",
        f"http://127.0.0.1:{PORTS['sink_web']}/health",
        f"http://127.0.0.1:{PORTS['sink_web']}/metrics",
    ):
        with urllib.request.urlopen(url, timeout=10) as response:
            pages.append((url, response.read().decode(errors="replace")))
    letters = _query(pipeline).query("SELECT * FROM dlq").rows
    pages.append(("dead letters", repr(letters)))
    files = [*LOGS, *sorted((secured.settings.home / "logs").glob("*.log"))]
    files += [worker.log for worker in pipeline.children]
    texts = [(str(path), path.read_text(errors="replace")) for path in files if path.exists()]
    assert len(texts) >= 5, texts  # the stack's components and the workers at least
    leaks = [
        f"{what} in {where}"
        for where, text in [*texts, *pages]
        for what, secret in secrets.items()
        if secret in text
    ]
    assert not leaks, leaks


def test_only_the_schema_admin_registers_and_the_stages_read(secured: Stack):
    """The contract was registered by `stack up` (the admin step); every stage's registry user is
    read-only: it finds the ids with reads and is refused a registration."""
    from onfinish.schemas.contract import ALL_RECORD_TYPES, RECORD_TYPES
    from onfinish.schemas.wire import SchemaRefused, register, registered_id, registry_client

    security = secured.security
    admin = registry_client(security.registry_settings())
    for principal in ("sdk", "processor", "sink"):
        reader = registry_client(security.registry_settings(principal=principal))
        for record_type in ALL_RECORD_TYPES:
            subject = record_type.subject(record_type.topic("onfinish"))
            assert registered_id(reader, record_type, subject) == registered_id(admin, record_type, subject)
        with pytest.raises(SchemaRefused, match="403"):
            register(reader, RECORD_TYPES[0], "onfinish.raw-value")
