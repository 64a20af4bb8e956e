"""Soak of one processor worker: its resident memory over time at 1,000 events/s (issue 21, item 4).

A worker (its own process, a group of its own, the default engine) takes loadgen traffic sent at
SOAK_RATE through the SDK, as `onfinish loadgen` sends it, for longer than a session lives in it.
The session gap and the allowed lateness are set short for the soak (SOAK_GAP_S, SOAK_LATENESS_S)
so that the run fits in minutes: a session closes once the partition's event time passes its last
call by the gap plus the lateness, and leaves memory one retention later (the longer of the
lateness and a minute), at a minute's boundary (processors/pipeline.py, docs/decisions/0016).
Warm-up is that whole life plus a minute of records processed (the worker may lag behind the load
on a shared machine: its RSS is read where it is); after it, the worker holds as many sessions as
it drops, so its resident memory must stay flat. The end is when it has processed all offered.

Figures: the worker's RSS at the end against its RSS at the end of warm-up (flat: a ratio of
about 1.0); its peak RSS against the 1 GB budget per worker; and the events it processed against
the events offered (a worker that lost or skipped events would hold less, and its memory would
say nothing). The RSS is read from /proc every SOAK_SAMPLE_S and every sample is printed.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.processors import start_worker
from bench.report import Figure, metric
from onfinish.loadgen.load import LoadPlan, LoadReport, run_load
from onfinish.producers import ProducerSettings
from onfinish.settings import RegistrySettings
from onfinish.stack.stack import Stack
from onfinish.stack.topics import provision_topics

SOAK_RATE = float(os.environ.get("ONFINISH_BENCH_SOAK_RATE", "1000"))
SOAK_GAP_S = float(os.environ.get("ONFINISH_BENCH_SOAK_GAP_S", "60"))
SOAK_LATENESS_S = float(os.environ.get("ONFINISH_BENCH_SOAK_LATENESS_S", "30"))
# A session's whole life in the worker: the gap and the lateness until it closes, a retention
# (max(lateness, 60 s)) until it leaves, and up to a minute more (sessions leave by whole minutes).
WARM_UP_S = SOAK_GAP_S + SOAK_LATENESS_S + max(SOAK_LATENESS_S, 60.0) + 60.0
# Steady state measured after warm-up: two more minutes by default.
STEADY_S = float(os.environ.get("ONFINISH_BENCH_SOAK_STEADY_S", "120"))
SOAK_SAMPLE_S = 5.0
CATCH_UP_S = 180.0  # the longest the worker may take to catch up with the load once it ends
WEB_PORT = 16267
BUDGET_MIB = 1024.0  # the budget: under 1 GB for 1,000 events/s per worker
ROOT = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _until_up(port: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(port, "onfinish_processor_processed_total") < 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the soak's worker did not start in time")
        time.sleep(0.5)


def run(stack: Stack) -> list[Figure]:
    prefix = f"soak{uuid.uuid4().hex[:6]}"
    provision_topics(stack.kafka_settings.model_copy(update={"topic_prefix": prefix}))
    env = {
        **os.environ,
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_settings.bootstrap_servers,
        "ONFINISH_KAFKA_PARTITIONS": str(stack.kafka_settings.partitions),
        "ONFINISH_KAFKA_TOPIC_PREFIX": prefix,
        "ONFINISH_REGISTRY_URL": stack.settings.registry_url,
        "ONFINISH_PROCESSOR_APP_ID": f"{prefix}-processors",
        "ONFINISH_PROCESSOR_WEB_PORT": str(WEB_PORT),
        "ONFINISH_PROCESSOR_SESSION_GAP_S": str(SOAK_GAP_S),
        "ONFINISH_PROCESSOR_ALLOWED_LATENESS_S": str(SOAK_LATENESS_S),
    }
    duration = WARM_UP_S + STEADY_S
    gap = f"session gap {SOAK_GAP_S:.0f} s + lateness {SOAK_LATENESS_S:.0f} s"
    log_path = os.environ.get("ONFINISH_BENCH_SOAK_LOG")  # keep the worker's log there, if set
    with (
        Path(log_path).open("wb") if log_path else tempfile.TemporaryFile() as log,
        tempfile.TemporaryDirectory() as spool,
    ):
        worker = start_worker(env, log)
        try:
            _until_up(WEB_PORT)
            reports: list[LoadReport] = []
            load = threading.Thread(
                target=lambda: reports.append(
                    run_load(
                        LoadPlan(rate=SOAK_RATE, duration_s=duration, seed=21),
                        ProducerSettings(topic=f"{prefix}.raw", spool_dir=Path(spool)),
                        stack.kafka_settings,
                        RegistrySettings(url=stack.settings.registry_url),
                    )
                ),
                daemon=True,
            )
            began = time.monotonic()
            load.start()
            # (seconds since the load began, RSS in MiB, events the worker processed so far)
            samples: list[tuple[float, float, float]] = []
            # Until the worker has processed everything offered (it may lag behind the load on a
            # shared machine: its warm-up and its end are where it is, not where the load is).
            deadline = began + duration + CATCH_UP_S
            while time.monotonic() < deadline:
                if worker.poll() is not None:
                    raise RuntimeError(f"the soak's worker exited with {worker.returncode}")
                processed = metric(WEB_PORT, "onfinish_processor_processed_total")
                samples.append((time.monotonic() - began, rss_mib(worker.pid), processed))
                print(
                    f"soak t={samples[-1][0]:5.0f} s worker RSS {samples[-1][1]:7.1f} MiB, "
                    f"{processed:,.0f} events processed",
                    file=sys.stderr,
                )
                # Caught up: every event offered, or no progress in a sample.
                if reports and (
                    processed >= reports[0].events or (len(samples) > 1 and processed == samples[-2][2])
                ):
                    break
                time.sleep(SOAK_SAMPLE_S)
            load.join(120)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    if not reports:
        raise RuntimeError("the soak's load did not finish")
    offered = reports[0].events
    processed = samples[-1][2]
    # The RSS once the worker processed a warm-up's worth of events (the load sends feedback and
    # malformed records too: events are this share of what it sends), and at its last sample.
    warm_events = WARM_UP_S * SOAK_RATE * offered / max(reports[0].sent, 1)
    warm = next((rss for _, rss, done in samples if done >= warm_events), float("nan"))
    end = samples[-1][1]
    peak = max(rss for _, rss, _ in samples)
    minutes = duration / 60
    return [
        Figure(
            f"processor worker RSS after {minutes:.1f} min at {SOAK_RATE:,.0f} events/s ({gap})",
            end,
            "MiB",
            f"its RSS at the end of warm-up ({WARM_UP_S:.0f} s: a session's whole life)",
            warm,
            higher_is_better=False,
        ),
        Figure(
            f"processor worker peak RSS over {minutes:.1f} min at {SOAK_RATE:,.0f} events/s ({gap})",
            peak,
            "MiB",
            "the budget per worker",
            BUDGET_MIB,
            higher_is_better=False,
        ),
        Figure(
            f"processor worker during the soak, events processed ({gap})",
            processed,
            "events",
            "events offered",
            float(offered),
        ),
    ]


if __name__ == "__main__":
    # `python -m bench.soak`: this piece alone, on the benchmarks' own stack.
    from bench import foundation
    from bench.report import markdown_table
    from onfinish.settings import KafkaSettings

    settings = foundation.stack_settings(ROOT / ".onfinish-bench")
    soak_stack = Stack(settings, kafka=KafkaSettings(partitions=12))
    soak_stack.install()
    soak_stack.up()
    try:
        print(markdown_table(run(soak_stack)))
    finally:
        soak_stack.down()
