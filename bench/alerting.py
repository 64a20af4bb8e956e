"""Benchmark of alerting's cost to the processors: a worker's events/s with alerting on and off.

Alerting adds nothing to the processors' per-event path: the conditions are judged per minute by
the insights worker from the stored windows, and the notifier is a thread of that worker. This
measures the claim on one machine, in one run. A processor worker (its own process, a consumer
group of its own each time) reads a topic filled with loadgen traffic beforehand, with a sink
storing what it produces and `onfinish watch` beside them (a round every 5 s: anomalies and one
budget either way); with alerting **on** the worker also judges the alert conditions and posts to
the stack's Alertmanager, with alerting **off** (ONFINISH_ALERTING_ENABLED=false) it does not.
Off and on alternate, three times each (the machine's speed drifts within a run, and other
processes share its two cores), and each figure is the median of its three; every run's rate is
printed to stderr.

`python -m bench.alerting` runs this benchmark alone on the benchmarks' stack and prints its row.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.processors import _fill, start_worker
from bench.report import Figure, markdown_table, rate_until
from onfinish.demo.local_pipeline import Demo
from onfinish.processors.settings import ProcessorSettings
from onfinish.sinks.settings import SinkSettings
from onfinish.stack.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
PORTS = {"processor": 16366, "sink_web": 16466, "sink_query": 16467}
ROUNDS = 3


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _processor_rate(prefix: str, app_id: str, count: int) -> float:
    """Events/s of one worker of a new consumer group over the filled topic (start-up left out)."""
    env = {
        **os.environ,
        "ONFINISH_PROCESSOR_APP_ID": app_id,
        "ONFINISH_PROCESSOR_WEB_PORT": str(PORTS["processor"]),
    }
    with tempfile.TemporaryFile() as log:
        worker = start_worker(env, log)
        try:
            rate = rate_until(PORTS["processor"], "onfinish_processor_processed_total", count)
            if rate is None:
                raise RuntimeError(f"the {app_id} worker did not process the benchmark's events in time")
            return rate
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)


@contextmanager
def _watching(stack: Stack, log: Path, *, alerting: bool) -> Iterator[None]:
    """`onfinish watch`, a round every 5 s, with alerting on (against the stack's Alertmanager) or off."""
    budgets = log.parent / "budgets.toml"
    budgets.write_text(
        'version = 1\n\n[[budget]]\nname = "bench"\nscope = "environment"\nsubject = "*"\n'
        'period = "day"\nlimit_usd = 1000000.0\n'
    )
    env = {
        **os.environ,
        "ONFINISH_INSIGHTS_INTERVAL_S": "5",
        "ONFINISH_INSIGHTS_BUDGETS": str(budgets),
        "ONFINISH_ALERTING_ENABLED": "true" if alerting else "false",
        "ONFINISH_ALERTING_SETTLE_S": "0",
        "ONFINISH_ALERTING_RESEND_S": "5",
        "ONFINISH_ALERTING_ALERTMANAGER_URL": stack.settings.alertmanager_url,
    }
    with log.open("ab") as handle:
        watch = subprocess.Popen(
            [sys.executable, "-m", "onfinish", "watch"],
            env=env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        try:
            yield
        finally:
            watch.send_signal(signal.SIGTERM)
            watch.wait(60)
    if watch.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(f"onfinish watch exited with {watch.returncode}; see {log}")


def run(stack: Stack) -> list[Figure]:
    prefix = f"bencha{uuid.uuid4().hex[:6]}"
    home = Path(tempfile.mkdtemp(prefix="onfinish-bench-alerting-"))
    environment = {
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_settings.bootstrap_servers,
        "ONFINISH_KAFKA_PARTITIONS": str(stack.kafka_settings.partitions),
        "ONFINISH_KAFKA_TOPIC_PREFIX": prefix,
        "ONFINISH_REGISTRY_URL": stack.settings.registry_url,
        "ONFINISH_SINK_GROUP_PREFIX": f"{prefix}-sinks",
        "ONFINISH_SINK_WEB_PORT": str(PORTS["sink_web"]),
        "ONFINISH_SINK_QUERY_PORT": str(PORTS["sink_query"]),
        "ONFINISH_CLICKHOUSE_DSN": f"chdb:///{home / 'clickhouse'}",
        "ONFINISH_STACK_HOME": str(stack.settings.home),
    }
    count = _fill(stack, prefix)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    with _environment(environment):
        demo = Demo(stack.settings, sink_settings=SinkSettings(), processor_settings=ProcessorSettings())
        try:
            demo.start_sink()
            for round_ in range(ROUNDS):
                for state in ("off", "on"):
                    with _watching(stack, home / f"watch-{state}.log", alerting=state == "on"):
                        rate = _processor_rate(prefix, f"{prefix}-{state}-{round_}", count)
                        rates[state].append(rate)
                        print(f"alerting {state}, run {round_ + 1}: {rate:,.0f} events/s", file=sys.stderr)
        finally:
            demo.stop()
    return [
        Figure(
            "processor worker, full path, alerting on (conditions judged and posted beside it)",
            statistics.median(rates["on"]),
            "events/s",
            "the same worker, alerting off (same run)",
            statistics.median(rates["off"]),
        )
    ]


def main() -> None:
    from bench import foundation

    stack, _ = foundation.stack_start(foundation.stack_settings(ROOT / ".onfinish-bench"))
    try:
        figures = run(stack)
    finally:
        stack.down()
    print(markdown_table(figures))


if __name__ == "__main__":
    main()
