"""Benchmarks of onfinish collect, each next to a baseline measured in the same run.

- throughput: GenAI spans per second one receiver process accepts (answered 200, so spooled) in
  requests of 512 spans, the OpenTelemetry batch span processor's default, sent back to back over
  keep-alive connections by a sender in another process; against the SDK's own `on_finish`
  throughput to the broker in the same run (bench/sdk.py's measure). Targets: at least 10,000
  spans/s, and at least half the SDK's rate.
- latency: the p99 of the time to the 200 for a 512-span request while 2,000 spans/s are offered
  (one request every 256 ms); against the p50 of the same requests. Target: under 50 ms.
The receiver runs as `onfinish collect` in its own process, with its SDK producing to the bench's
broker meanwhile, as in production; the sender's requests are built before the clock starts.
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.report import Figure
from bench.sdk import EVENTS, _events, _topic
from onfinish.collect.samples import genai_request
from onfinish.producers import Emitter, ProducerSettings
from onfinish.settings import RegistrySettings
from onfinish.stack.stack import Stack

SPANS_PER_REQUEST = 512
THROUGHPUT_REQUESTS = 120  # 61,440 spans
SENDERS = 2  # connections sending at once, as a few exporters would
LATENCY_RATE = 2_000  # spans/s offered while the time to the 200 is sampled
LATENCY_REQUESTS = 80  # about 20 s at that rate
PORT = 24318


def _bodies(count: int) -> list[bytes]:
    return [genai_request(SPANS_PER_REQUEST, seed=index).SerializeToString() for index in range(count)]


def _send(port: int, bodies: list[bytes], pace_s: float, results: Any) -> None:
    """One sender: its bodies in order on one keep-alive connection, each request's time to the 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    began = time.perf_counter()
    for index, body in enumerate(bodies):
        if pace_s:
            delay = began + index * pace_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        start = time.perf_counter()
        connection.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"the receiver answered {response.status}")
        results.put(time.perf_counter() - start)
    connection.close()


def _run_senders(port: int, shards: list[list[bytes]], pace_s: float) -> tuple[float, list[float]]:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    senders = [context.Process(target=_send, args=(port, shard, pace_s, results)) for shard in shards]
    began = time.perf_counter()
    for sender in senders:
        sender.start()
    times = [results.get(timeout=600) for _ in range(sum(len(shard) for shard in shards))]
    elapsed = time.perf_counter() - began
    for sender in senders:
        sender.join(60)
        if sender.exitcode:
            raise RuntimeError("a sender failed")
    return elapsed, times


class _Receiver:
    def __init__(self, stack: Stack, spool: Path, prefix: str) -> None:
        env = {
            **os.environ,
            "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_settings.bootstrap_servers,
            "ONFINISH_KAFKA_TOPIC_PREFIX": prefix,
            "ONFINISH_REGISTRY_URL": stack.settings.registry_url,
            "ONFINISH_PRODUCER_SPOOL_DIR": str(spool),
            "ONFINISH_COLLECT_PORT": str(PORT),
        }
        self.log = spool.parent / "collect.log"
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "onfinish", "collect"],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the receiver did not start: {self.log.read_text()}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000  # s -> ms


def sdk_rate(stack: Stack, spool_root: Path) -> float:
    """bench/sdk.py's throughput figure, measured again here for the ratio in the same run."""
    events = _events(EVENTS)
    emitter = Emitter(
        ProducerSettings(topic=_topic(stack), spool_dir=spool_root / "sdk"),
        stack.kafka_settings,
        RegistrySettings(url=stack.settings.registry_url),
    )
    emitter.on_finish(events[0])
    emitter.flush(60)
    began = time.perf_counter()
    for event in events:
        emitter.on_finish(event)
    if not emitter.flush(300):
        raise RuntimeError(f"the SDK did not deliver: {emitter.stats()}")
    rate = len(events) / (time.perf_counter() - began)
    emitter.close()
    return rate


def run(stack: Stack) -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="onfinish-bench-collect-"))
    prefix = f"bench-collect-{uuid.uuid4().hex[:6]}"
    try:
        from onfinish.stack.topics import provision_topics

        kafka = stack.kafka_settings.model_copy(update={"topic_prefix": prefix})
        provision_topics(kafka)
        sdk = sdk_rate(stack, root)
        bodies = _bodies(THROUGHPUT_REQUESTS)
        paced = _bodies(LATENCY_REQUESTS)
        receiver = _Receiver(stack, root / "spool", prefix)
        try:
            _run_senders(PORT, [bodies[:4]], 0)  # warm-up: connections, the registry's schema ids
            elapsed, _ = _run_senders(PORT, [bodies[i::SENDERS] for i in range(SENDERS)], 0)
            receiver_rate = THROUGHPUT_REQUESTS * SPANS_PER_REQUEST / elapsed
            time.sleep(5)  # let the producer catch up before the latency run
            _, times = _run_senders(PORT, [paced], SPANS_PER_REQUEST / LATENCY_RATE)
        finally:
            receiver.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [
        Figure(
            "collect: GenAI spans accepted by one receiver, 512-span requests (target 10,000/s)",
            receiver_rate,
            "spans/s",
            "SDK on_finish throughput, one process, acknowledged, events/s (target ratio 0.5)",
            sdk,
        ),
        Figure(
            "collect: time to the 200 p99, 512-span requests at 2,000 spans/s (target 50 ms)",
            _percentile(times, 0.99),
            "ms",
            "the same requests' p50",
            _percentile(times, 0.50),
            higher_is_better=False,
        ),
    ]


if __name__ == "__main__":
    # `python -m bench.collect`: this piece alone, on the benchmarks' own stack.
    from bench import foundation
    from bench.report import markdown_table

    root = Path(__file__).resolve().parents[1]
    bench_stack, _ = foundation.stack_start(foundation.stack_settings(root / ".onfinish-bench"))
    try:
        print(markdown_table(run(bench_stack)))
    finally:
        bench_stack.down()
