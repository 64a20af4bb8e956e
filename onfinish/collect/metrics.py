"""Prometheus metrics of onfinish collect, in a registry of their own (served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from onfinish.collect.ingest import Outcome
from onfinish.producers.emitter import Emitter
from onfinish.producers.metrics import register_metrics


class CollectMetrics:
    def __init__(self, emitter: Emitter) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "onfinish_collect_requests",
            "Requests answered, by path and HTTP status (Kafka batches count as path 'kafka').",
            ["path", "code"],
            registry=self.registry,
        )
        self.spans = Counter(
            "onfinish_collect_spans", "Spans and log records received.", ["path"], registry=self.registry
        )
        self.events = Counter(
            "onfinish_collect_events",
            "Records spooled for Kafka, by kind (event or feedback).",
            ["kind"],
            registry=self.registry,
        )
        self.ignored = Counter(
            "onfinish_collect_spans_ignored",
            "Spans that are not model calls, by reason (not_genai, wrapper, agent_step, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "onfinish_collect_spans_rejected",
            "Spans and events refused, by reason (reported to senders as partial success).",
            ["reason"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "onfinish_collect_request_seconds",
            "Time from a request's arrival to its answer.",
            ["path"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.spool_bytes = Gauge(
            "onfinish_collect_spool_bytes", "Bytes in the receiver's spool.", registry=self.registry
        )
        self.spool_bytes.set_function(emitter.spooled_bytes)
        register_metrics(emitter, "collect", self.registry)

    def count(self, path: str, outcome: Outcome) -> None:
        self.spans.labels(path).inc(outcome.spans)
        if outcome.events:
            self.events.labels("event").inc(outcome.events)
        if outcome.feedback:
            self.events.labels("feedback").inc(outcome.feedback)
        for reason, n in outcome.ignored.items():
            self.ignored.labels(reason).inc(n)
        for reason, n in outcome.rejected.items():
            self.rejected.labels(reason).inc(n)
        if outcome.refused:
            self.rejected.labels("spool_full").inc(outcome.refused)
