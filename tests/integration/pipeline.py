"""A pipeline of its own on the session's stack (sink and processor workers, topics, consumer
groups, a chDB directory), loadgen traffic through the SDK, and the reconciliation in ClickHouse
that the fault suite and the insights' end-to-end tests end with."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onfinish.demo.local_pipeline import Demo
from onfinish.loadgen.load import LoadReport
from onfinish.loadgen.traffic import TrafficProfile
from onfinish.query.client import QueryClient
from onfinish.stack.stack import Stack

PORTS = {"processor": 16766, "sink_web": 16866, "sink_query": 16867}


@dataclass
class Reconciliation:
    sent: int
    stored: int
    lost: int
    doubled: int
    dead_lettered: int

    def row(self, scenario: str) -> str:
        return (
            f"{scenario}: sent {self.sent}, stored {self.stored}, lost {self.lost}, "
            f"doubled {self.doubled}, dead-lettered {self.dead_lettered}"
        )

    def report(self, scenario: str) -> None:
        """Keep the scenario's counts for the end of the test run (tests/integration/conftest.py)."""
        RECONCILIATIONS.append(self.row(scenario))


# Every reconciliation of this test run, shown after the tests: the fault suite's evidence.
RECONCILIATIONS: list[str] = []


class Run:
    """A pipeline of its own on the session's stack, and its reconciliation."""

    def __init__(self, stack: Stack, demo: Demo, manifest: Path) -> None:
        self.stack = stack
        self.demo = demo
        self.manifest = manifest
        self.query = QueryClient(demo.query_url, timeout=20)

    def send(self, rate: float, duration_s: float, seed: int, pii_share: float = 0.02) -> LoadReport:
        profile = TrafficProfile(pii_share=pii_share)
        report = self.demo.send_traffic(rate, duration_s, seed, profile=profile)
        (self.stack.settings.home / "demo-manifest.json").replace(self.manifest)
        return report

    def value(self, sql: str) -> Any:
        return self.query.query(sql).rows[0][0]

    def counters(self) -> str:
        """The workers' own counters (in, out, late, dead-lettered, lag), to explain a mismatch."""
        lines = []
        for worker in self.demo.children:
            if worker.process.poll() is None:
                try:
                    with urllib.request.urlopen(
                        worker.health_url.replace("/health", "/metrics"), timeout=5
                    ) as r:
                        text = r.read().decode()
                except OSError as exc:
                    text = f"unreachable: {exc}"
                lines += [
                    f"{worker.name}: {line}"
                    for line in text.splitlines()
                    if line.startswith(("onfinish_processor_", "onfinish_sink_"))
                    and "_bucket" not in line
                    and "_created" not in line
                ]
        return "; ".join(lines)

    def stacks(self) -> str:
        """Every live worker's threads as they are now (SIGUSR1: onfinish/runtime.py) and the end of
        its log without the Kafka client's lines: what a worker that stopped making progress waits on."""
        logs = []
        for worker in self.demo.children:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGUSR1)
        time.sleep(1)
        for worker in self.demo.children:
            lines = [
                line
                for line in worker.log.read_text(errors="replace").splitlines()
                if line.strip() and not line.startswith("%")
            ]
            logs.append(f"--- {worker.name} ({worker.log}), last lines:\n" + "\n".join(lines[-120:]))
        return "\n".join(logs)

    def reconcile(self, report: LoadReport, extra_letters: int = 0, timeout_s: float = 180) -> Reconciliation:
        """Wait until ClickHouse holds everything, then compare it with what was sent."""
        sent_ids = set(json.loads(self.manifest.read_text())["event_ids"])
        letters = sum(report.malformed.values()) + extra_letters
        deadline = time.monotonic() + timeout_s
        while True:
            stored = self.value("SELECT count() FROM events FINAL")
            windowed = self.value("SELECT sum(events) FROM windows_1m FINAL") or 0
            turns = self.value("SELECT sum(turns) FROM sessions FINAL") or 0
            dead = self.value("SELECT count() FROM dlq FINAL")
            done = stored >= len(sent_ids) and windowed >= len(sent_ids) and turns >= len(sent_ids)
            if done and dead >= letters:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"after {timeout_s:.0f}s ClickHouse holds {stored} of {len(sent_ids)} events, "
                    f"windows count {windowed}, sessions {turns} turns, {dead} of {letters} dead "
                    f"letters; {self.counters()}\n{self.stacks()}"
                )
            time.sleep(1)
        time.sleep(2)  # anything still on its way would show up as doubled now
        ids = [row[0] for row in self.query.query("SELECT toString(event_id) FROM events FINAL").rows]
        windowed = self.value("SELECT sum(events) FROM windows_1m FINAL") or 0
        turns = self.value("SELECT sum(turns) FROM sessions FINAL") or 0
        result = Reconciliation(
            sent=len(sent_ids),
            stored=len(ids),
            lost=len(sent_ids - set(ids)),
            doubled=(len(ids) - len(set(ids)))
            + max(windowed - len(sent_ids), 0)
            + max(turns - len(sent_ids), 0),
            dead_lettered=self.value("SELECT count() FROM dlq FINAL"),
        )
        counted = (
            f"{result.row('so far')}; windows count {windowed}, sessions {turns} turns; {self.counters()}"
        )
        assert windowed == len(sent_ids), counted
        assert turns == len(sent_ids), counted
        return result
