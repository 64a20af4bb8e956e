"""Prometheus metrics of the SDK, read from the emitter's counters when scraped (no hot-path cost)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

if TYPE_CHECKING:
    from onfinish.producers.emitter import Emitter

_HELP = {
    "handed_off": "Events handed off by the caller.",
    "spooled": "Events written to the durable spool.",
    "produced": "Events acknowledged by Kafka.",
    "replayed": "Events from an earlier process's spool acknowledged by Kafka.",
    "rejected": "Invalid events written to the reject log.",
    "dropped": "Events dropped because the queue or the spool was full.",
    "delivery_failures": "Deliveries Kafka did not acknowledge in time (the events stay spooled).",
}


class EmitterCollector(Collector):
    def __init__(self, emitter: Emitter, name: str) -> None:
        self.emitter = emitter
        self.name = name

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.emitter.stats()
        for counter, help_text in _HELP.items():
            family = CounterMetricFamily(f"onfinish_sdk_{counter}", help_text, labels=["emitter"])
            family.add_metric([self.name], stats[counter])
            yield family
        queued = GaugeMetricFamily(
            "onfinish_sdk_queued", "Events waiting in memory for the worker.", labels=["emitter"]
        )
        queued.add_metric([self.name], stats["queued"])
        yield queued


def register_metrics(
    emitter: Emitter, name: str = "default", registry: CollectorRegistry = REGISTRY
) -> Collector:
    collector = EmitterCollector(emitter, name)
    registry.register(collector)
    return collector
