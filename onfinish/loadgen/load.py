"""The load generator: realistic onFinish traffic, sent through the SDK at a steady rate.

Valid events and feedback go through an `Emitter`, exactly as a service's hook sends them.
Malformed records (the traffic model's share of garbage) cannot pass the SDK, which refuses them,
so they are written as raw bytes straight to the topic, the way a broken producer would. Event
times are re-stamped to the wall clock as items are sent, so windows and dashboards see "now".
A manifest can record every event id sent and every planted PII string, for reconciliation and
PII audits downstream.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Producer

from onfinish.errors import OnfinishError
from onfinish.loadgen.traffic import Item, Malformed, TrafficGenerator, TrafficProfile
from onfinish.producers.emitter import Emitter, client_logger
from onfinish.producers.settings import ProducerSettings
from onfinish.schemas.models import Feedback, OnFinishEvent
from onfinish.settings import KafkaSettings, RegistrySettings

# Called with (items sent so far, items planned) as the run goes.
Progress = Callable[[int, int], None]


PREDRAW_MAX_ITEMS = 500_000  # about 5 KB each once drawn: 2.5 GB


@dataclass(frozen=True)
class LoadPlan:
    rate: float  # items per second
    duration_s: float
    seed: int = 1
    profile: TrafficProfile = field(default_factory=TrafficProfile)
    # Draw every item before the clock starts: drawing one costs about 40 µs of CPU, which at
    # thousands a second takes cores from the pipeline being measured on the same machine. The
    # SDK's work (encoding, spooling, producing) stays where it is, at the send.
    predraw: bool = False

    @property
    def items(self) -> int:
        return max(1, round(self.rate * self.duration_s))


@dataclass
class LoadReport:
    events: int = 0
    feedback: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    pii_planted: int = 0
    draw_cpu_seconds: float = 0.0  # this process's CPU spent drawing the traffic before the send
    send_seconds: float = 0.0  # handing everything off
    seconds: float = 0.0  # until Kafka acknowledged it (or the wait ended)
    delivered: bool = False
    sdk: dict[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return self.events + self.feedback + sum(self.malformed.values())


PACE_SLACK_S = 0.002  # how far ahead of its schedule loadgen may run before it sleeps


def _restamp(item: OnFinishEvent | Feedback, now: datetime) -> OnFinishEvent | Feedback:
    if isinstance(item, Feedback):
        return item.model_copy(update={"at": now})
    shift = now - item.finished_at
    return item.model_copy(update={"started_at": item.started_at + shift, "finished_at": now})


def draw(plan: LoadPlan, progress: Progress | None = None) -> tuple[TrafficGenerator, Iterable[Item]]:
    """The plan's generator and its items, in order: drawn as they are sent, or all at once now
    with `plan.predraw` (`progress` is told how far the drawing is)."""
    if plan.predraw and plan.items > PREDRAW_MAX_ITEMS:
        raise OnfinishError(
            f"{plan.items:,} items are too many to draw beforehand (at most {PREDRAW_MAX_ITEMS:,}, "
            "about 5 KB each): send a shorter run, or draw them as they are sent"
        )
    generator = TrafficGenerator(plan.profile, plan.seed)
    items = generator.items(plan.items)
    if not plan.predraw:
        return generator, items
    # The list itself, not an iterator over it: an exhausted iterator drops the list, and freeing
    # 100,000 items took 0.3 s, counted in the send's time.
    drawn: list[Item] = []
    for item in items:
        drawn.append(item)
        if progress is not None and (len(drawn) % 1000 == 0 or len(drawn) == plan.items):
            progress(len(drawn), plan.items)
    return generator, drawn


def run_load(
    plan: LoadPlan,
    producer_settings: ProducerSettings,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    *,
    progress: Progress | None = None,
    manifest: Path | None = None,
    draw_progress: Progress | None = None,
) -> LoadReport:
    """Send `plan.items` items at `plan.rate` per second, then wait for Kafka to acknowledge them
    (`draw_progress` follows the drawing beforehand, with `plan.predraw`)."""
    drawing = time.process_time()
    generator, items = draw(plan, draw_progress)
    draw_cpu_seconds = time.process_time() - drawing
    emitter = Emitter(producer_settings, kafka, registry)
    raw = Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "linger.ms": 20,
            "logger": client_logger(producer_settings.drop_log_interval_s),
        }
    )
    report = LoadReport(draw_cpu_seconds=draw_cpu_seconds)
    event_ids: list[str] = []
    total = plan.items
    began = time.monotonic()
    for index, item in enumerate(items):
        # Pace by schedule rather than by sleeping a fixed gap, so slow moments are caught up; and
        # sleep only once ahead by PACE_SLACK_S: a sleep per item cost about 24 µs of CPU (a quarter
        # of loadgen's main thread at 5,000/s), and an item sent up to 2 ms early is stamped then.
        delay = began + index / plan.rate - time.monotonic()
        if delay > PACE_SLACK_S:
            time.sleep(delay)
        if isinstance(item, Malformed):
            raw.produce(producer_settings.topic, item.value, item.key)
            raw.poll(0)
            report.malformed[item.defect] += 1
        else:
            item = _restamp(item, datetime.now(UTC))
            emitter.on_finish(item)
            if isinstance(item, Feedback):
                report.feedback += 1
            else:
                report.events += 1
                report.by_status[item.status.value] += 1
                report.by_model[f"{item.provider}/{item.model_id}"] += 1
                event_ids.append(str(item.event_id))
        if progress is not None and (index % 100 == 0 or index == total - 1):
            progress(index + 1, total)
    report.send_seconds = time.monotonic() - began
    raw.flush(30)
    report.delivered = emitter.flush(max(30.0, plan.duration_s))
    report.seconds = time.monotonic() - began
    report.sdk = emitter.stats()
    emitter.close()
    report.pii_planted = len(generator.planted_pii)
    if manifest is not None:
        manifest.write_text(
            json.dumps(
                {
                    "seed": plan.seed,
                    "topic": producer_settings.topic,
                    "event_ids": event_ids,
                    "malformed": dict(report.malformed),
                    "feedback": report.feedback,
                    "planted_pii": generator.planted_pii,
                }
            )
        )
    return report
