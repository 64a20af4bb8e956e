"""The whole pipeline on this machine, as a newcomer meets it: what `onfinish demo` runs.

Stack up (Kafka, registry, embedded ClickHouse), then a sink worker (it applies the migrations and,
owning the embedded ClickHouse, serves read-only SQL and the dashboard) and processor workers as
child processes, then realistic traffic through the SDK, then a wait until everything sent is
queryable: events in ClickHouse equal to the events sent, every malformed record in the `dlq`
table. The caller prints the report and the dashboard's address, and either stops the workers
(`--once`) or leaves them running until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onfinish.errors import OnfinishError
from onfinish.loadgen.load import LoadPlan, LoadReport, run_load
from onfinish.loadgen.traffic import TrafficProfile
from onfinish.processors.settings import ProcessorSettings
from onfinish.producers.settings import ProducerSettings
from onfinish.query.client import QueryClient
from onfinish.query.settings import QuerySettings
from onfinish.schemas.governance import register
from onfinish.settings import KafkaSettings, RegistrySettings, StackSettings
from onfinish.sinks.settings import SinkSettings
from onfinish.stack.security import StackSecurity
from onfinish.stack.topics import provision_topics


class DemoFailed(OnfinishError):
    """A step of the demo did not complete; the message says which and where its log is."""


@dataclass
class Worker:
    """A child process of the demo and where it writes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    health_url: str


@dataclass
class Drained:
    """What ClickHouse holds once the traffic went through."""

    events: int
    dead_letters: int
    seconds: float
    windowed: int = 0  # events counted in the 1-minute windows


@dataclass
class Demo:
    stack: StackSettings
    workers: int = 1
    sink_settings: SinkSettings = field(default_factory=SinkSettings)
    processor_settings: ProcessorSettings = field(default_factory=ProcessorSettings)
    # A dashboard that moves: the sink inserts every 0.5 s and the processors send changed windows
    # every 1 s. False leaves the workers' defaults (1 s and 5 s), which cost less CPU per event:
    # at 5,000 events/s on two cores the sink spends about a fifth less.
    fresh: bool = True
    children: list[Worker] = field(default_factory=list)

    @property
    def kafka(self) -> KafkaSettings:
        """How the traffic's SDK reaches Kafka: as the `sdk` principal on a secured stack."""
        return self._kafka_as("sdk")

    def _kafka_as(self, principal: str) -> KafkaSettings:
        plain = KafkaSettings(bootstrap_servers=self.stack.kafka_bootstrap)
        return StackSecurity(self.stack).kafka_settings(principal, plain) if self.stack.secure else plain

    @property
    def registry(self) -> RegistrySettings:
        plain = RegistrySettings(url=self.stack.registry_url)
        return StackSecurity(self.stack).registry_settings(plain) if self.stack.secure else plain

    @property
    def query_url(self) -> str:
        return f"http://{self.sink_settings.query_host}:{self.sink_settings.query_port}"

    def ensure_topics(self) -> None:
        """The pipeline's topics and the contract's subjects (FULL_TRANSITIVE) under the configured
        prefix: the admin step the stack runs for the default prefix."""
        provision_topics(self._kafka_as("admin"))
        register(self.registry, self.kafka.topic_prefix)

    def _env(self, principal: str) -> dict[str, str]:
        """A worker's environment; on a secured stack, `principal`'s credentials (as files)."""
        secured = StackSecurity(self.stack).environment(principal) if self.stack.secure else {}
        return {
            **os.environ,
            "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": self.stack.kafka_bootstrap,
            "ONFINISH_REGISTRY_URL": self.stack.registry_url,
            "ONFINISH_STACK_HOME": str(self.stack.home),
            **secured,
        }

    def _start(self, name: str, command: list[str], env: dict[str, str], health_url: str) -> Worker:
        logs = self.stack.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        handle = log.open("ab")
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
        worker = Worker(name, process, log, health_url)
        self.children.append(worker)
        return worker

    def start_sink(self, timeout_s: float = 90) -> Worker:
        """The sink worker; ready once its read-only endpoint answers (migrations applied)."""
        worker = self._start(
            "demo-sink",
            [sys.executable, "-m", "onfinish", "sink"],
            {**self._env("sink"), **({"ONFINISH_SINK_BATCH_SECONDS": "0.5"} if self.fresh else {})},
            f"http://{self.sink_settings.web_host}:{self.sink_settings.web_port}/health",
        )
        self._wait_healthy(worker, f"{self.query_url}/health", timeout_s)
        return worker

    def start_processors(self, timeout_s: float = 120) -> list[Worker]:
        return self.start_processors_from(0, timeout_s)

    def start_processors_from(self, first: int, timeout_s: float = 120) -> list[Worker]:
        """Processor workers number `first` to `workers - 1` (each on web port base + number)."""
        started = []
        for index in range(first, self.workers):
            port = self.processor_settings.web_port + index
            worker = self._start(
                f"demo-processor-{index + 1}",
                [sys.executable, "-m", "onfinish.processors.worker", "worker"],
                {
                    **self._env("processor"),
                    "ONFINISH_PROCESSOR_WEB_PORT": str(port),
                    **({"ONFINISH_PROCESSOR_SNAPSHOT_INTERVAL_S": "1"} if self.fresh else {}),
                },
                f"http://{self.processor_settings.web_host}:{port}/health",
            )
            started.append(worker)
        for worker in started:
            self._wait_healthy(worker, worker.health_url, timeout_s, assigned=True)
        return started

    def _wait_healthy(self, worker: Worker, url: str, timeout_s: float, *, assigned: bool = False) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                code = worker.process.returncode
                raise DemoFailed(f"{worker.name} exited with code {code}; see {worker.log}")
            request = urllib.request.Request(url)  # noqa: S310 - our own http URL
            token = QuerySettings().token
            if token is not None and url.startswith(self.query_url):  # the endpoint wants its token
                request.add_header("Authorization", f"Bearer {token.get_secret_value()}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 - our own http URL
                    body = json.loads(response.read() or b"{}")
                if not assigned or body.get("partitions"):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise DemoFailed(f"{worker.name} did not become healthy within {timeout_s:.0f}s; see {worker.log}")

    def send_traffic(
        self,
        rate: float,
        duration_s: float,
        seed: int,
        progress: Callable[[int, int], None] | None = None,
        *,
        profile: TrafficProfile | None = None,
        predraw: bool = False,
    ) -> LoadReport:
        plan = LoadPlan(
            rate=rate, duration_s=duration_s, seed=seed, profile=profile or TrafficProfile(), predraw=predraw
        )
        spool = self.stack.home / "demo-spool"
        # On a secured stack the SDK runs as `sdk`: a read-only registry user, so it looks the
        # contract's ids up instead of registering them (the admin step did).
        secure = self.stack.secure
        report = run_load(
            plan,
            ProducerSettings(
                topic=f"{self.kafka.topic_prefix}.raw", spool_dir=spool, auto_register=not secure
            ),
            self.kafka,
            StackSecurity(self.stack).registry_settings(self.registry, "sdk") if secure else self.registry,
            progress=progress,
            manifest=self.stack.home / "demo-manifest.json",
        )
        if not report.delivered:
            raise DemoFailed(f"Kafka did not acknowledge the traffic: {report.sdk}")
        return report

    def wait_drained(self, report: LoadReport, baseline: Drained, timeout_s: float = 180) -> Drained:
        """Until ClickHouse holds every event sent and every malformed record's dead letter."""
        client = QueryClient(self.query_url, timeout=10, token=QuerySettings().token)
        began = time.monotonic()
        want_events = baseline.events + report.events
        want_letters = baseline.dead_letters + sum(report.malformed.values())
        want_windowed = baseline.windowed + report.events
        state = baseline
        while time.monotonic() - began < timeout_s:
            for worker in self.children:
                if worker.process.poll() is not None:
                    raise DemoFailed(f"{worker.name} stopped; see {worker.log}")
            state = self.stored(client)
            if (
                state.events >= want_events
                and state.dead_letters >= want_letters
                and state.windowed >= want_windowed
            ):
                return Drained(state.events, state.dead_letters, time.monotonic() - began, state.windowed)
            time.sleep(0.5)
        raise DemoFailed(
            f"after {timeout_s:.0f}s ClickHouse holds {state.events} of {want_events} events, "
            f"{state.windowed} of {want_windowed} in windows and {state.dead_letters} of {want_letters} "
            f"dead letters; see the logs in {self.stack.home / 'logs'}"
        )

    def stored(self, client: QueryClient | None = None) -> Drained:
        client = client or QueryClient(self.query_url, timeout=10, token=QuerySettings().token)
        events = client.query("SELECT count() FROM events FINAL").rows[0][0]
        letters = client.query("SELECT count() FROM dlq FINAL").rows[0][0]
        windowed = client.query("SELECT sum(events) FROM windows_1m FINAL").rows[0][0]
        return Drained(int(events), int(letters), 0.0, int(windowed or 0))

    def stop(self, timeout_s: float = 60) -> list[tuple[str, int]]:
        """Stop the workers gracefully (SIGTERM: finish, commit), processors first; their exit codes."""
        codes = []
        for worker in sorted(self.children, key=lambda w: w.name.startswith("demo-sink")):
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
            try:
                worker.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(10)
            codes.append((worker.name, worker.process.returncode))
        self.children.clear()
        return codes
