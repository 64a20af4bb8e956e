"""`onfinish status`: whether the pipeline runs and keeps up.

Each component's health (the local stack's processes, or Kafka and the registry asked directly;
the workers' /health), consumer lag per group, events/s in and rows/s out from the workers'
/metrics, and the processors' time per record in each stage.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from onfinish.inspection.topics import QUIET_LOG_LEVEL
from onfinish.processors.settings import ProcessorSettings
from onfinish.settings import KafkaSettings, RegistrySettings, StackSettings
from onfinish.sinks.settings import FAMILIES, SinkSettings
from onfinish.stack.component import ComponentStatus

MAX_PROCESSOR_WORKERS = 8
"""`status` probes the processors' web ports from ONFINISH_PROCESSOR_WEB_PORT up to this many."""
PROBE_TIMEOUT_S = 2.0
"""How long `status` waits for a worker's /health or /metrics."""
STATUS_TIMEOUT_S = 3.0
"""How long `status` waits for each Kafka request (metadata, group offsets, watermarks)."""


# --- The pipeline's health ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    name: str
    healthy: bool
    address: str
    detail: str = ""


@dataclass(frozen=True)
class GroupLag:
    group: str
    lag: int | None
    """Records not yet consumed, summed over the group's partitions; None when unknown."""
    partitions: int
    detail: str = ""


@dataclass(frozen=True)
class PipelineStatus:
    components: list[Health]
    lags: list[GroupLag]
    events_in_per_s: float | None
    """Events the processor workers processed per second, None when none answers."""
    rows_out_per_s: float | None
    """Rows the sink inserted into ClickHouse per second, None when it does not answer."""
    processor_us_per_record: dict[str, float] | None = None
    """Processor time per raw record in each pipeline stage since the workers started (µs), None
    before any record."""

    @property
    def healthy(self) -> bool:
        return all(component.healthy for component in self.components)


def _get(url: str, timeout: float = PROBE_TIMEOUT_S) -> bytes | None:
    """The body of GET `url`, None when nothing answers with 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http URLs we built
            return bytes(response.read()) if response.status == 200 else None
    except (OSError, ValueError):
        return None


def counter_total(metrics_text: str, sample: str) -> float | None:
    """The sum over labels of a Prometheus sample (e.g. `onfinish_sink_rows_total`), None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [
        s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == sample
    ]
    return sum(values) if values else None


def rate(before: float | None, after: float | None, seconds: float) -> float | None:
    """Per-second increase of a counter; a restart (counter went down) counts from zero."""
    if before is None or after is None or seconds <= 0:
        return None
    return (after - before if after >= before else after) / seconds


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - compared, not bound


def _stack_health(component: ComponentStatus) -> Health:
    if component.healthy:
        detail = f"local stack, pid {component.pid}"
    else:
        detail = "running, not answering" if component.running else "stopped: `onfinish stack up`"
    return Health(component.name, component.healthy, component.address, detail)


def _processor_workers(processors: ProcessorSettings) -> list[Health]:
    """Health of the workers on consecutive web ports, up to the first that does not answer."""
    host = _loopback(processors.web_host)
    workers: list[Health] = []
    for index in range(MAX_PROCESSOR_WORKERS):
        address = f"http://{host}:{processors.web_port + index}"
        body = _get(f"{address}/health")
        if body is None:
            if not workers:
                workers.append(Health("processor", False, address, "no worker answers: `onfinish process`"))
            break
        try:
            partitions = json.loads(body).get("partitions", [])
            detail = (
                f"partitions {','.join(map(str, partitions))}" if partitions else "no partitions assigned"
            )
        except (ValueError, AttributeError):
            detail = ""
        workers.append(Health(f"processor {index + 1}", True, address, detail))
    return workers


def _sink(sink: SinkSettings) -> Health:
    address = f"http://{_loopback(sink.web_host)}:{sink.web_port}"
    answered = _get(f"{address}/health") is not None
    return Health("sink", answered, address, "" if answered else "does not answer: `onfinish sink`")


def stage_costs(metrics_texts: list[str]) -> dict[str, float] | None:
    """µs per raw record in each processor stage, over the workers' /metrics texts (the stage
    histograms' sums over their records read), None before any record."""
    from prometheus_client.parser import text_string_to_metric_families

    from onfinish.processors.pipeline import STAGES

    seconds = dict.fromkeys(STAGES, 0.0)
    records = 0.0
    for text in metrics_texts:
        records += counter_total(text, "onfinish_processor_records_in_total") or 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "onfinish_processor_stage_seconds_sum"
                    and sample.labels.get("stage") in seconds
                ):
                    seconds[sample.labels["stage"]] += sample.value
    if not records:
        return None
    return {stage: total / records * 1e6 for stage, total in seconds.items()}


def _metrics_texts(addresses: list[str]) -> list[str]:
    """The /metrics pages of the workers at `addresses` that answer."""
    bodies = (_get(f"{address}/metrics") for address in addresses)
    return [body.decode(errors="replace") for body in bodies if body is not None]


def _counters(texts: list[str], sample: str) -> float | None:
    known = [value for text in texts if (value := counter_total(text, sample)) is not None]
    return sum(known) if known else None


def _kafka_health(kafka: KafkaSettings, admin: AdminClient, timeout: float) -> Health:
    try:
        topics = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        return Health("kafka", False, kafka.bootstrap_servers, f"does not answer: {exc.args[0].str()}")
    ours = sum(name.startswith(f"{kafka.topic_prefix}.") for name in topics)
    return Health("kafka", True, kafka.bootstrap_servers, f"{ours} {kafka.topic_prefix}.* topics")


def _registry_health(registry: RegistrySettings) -> Health:
    answered = _get(f"{registry.url.rstrip('/')}/subjects") is not None
    return Health("registry", answered, registry.url, "" if answered else "does not answer")


def consumer_groups(processors: ProcessorSettings, sink: SinkSettings) -> list[str]:
    """The pipeline's consumer groups: the processors', then one per sink family."""
    return [processors.app_id, *(f"{sink.group_prefix}-{family}" for family in FAMILIES)]


def group_lag(admin: AdminClient, consumer: Consumer, group: str, timeout: float) -> GroupLag:
    """How far a group's committed offsets are behind the partitions' ends."""
    try:
        future = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
        )[group]
        committed = future.result(timeout=timeout).topic_partitions or []
    except Exception as exc:  # KafkaException, or a timeout of the future
        return GroupLag(group, None, 0, f"offsets unknown: {exc}")
    if not committed:
        return GroupLag(group, None, 0, "no committed offsets: has it run?")
    lag = 0
    topics = set()
    for tp in committed:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=timeout
            )
        except KafkaException as exc:
            return GroupLag(group, None, len(committed), f"watermarks unknown: {exc.args[0].str()}")
        # A partition without a commit is read from its start (auto.offset.reset = earliest).
        lag += max(high - (tp.offset if tp.offset >= 0 else low), 0)
        topics.add(tp.topic)
    return GroupLag(group, lag, len(committed), ", ".join(sorted(topics)))


def status(
    kafka: KafkaSettings,
    registry: RegistrySettings,
    stack: StackSettings,
    processors: ProcessorSettings,
    sink: SinkSettings,
    *,
    interval_s: float = 1.0,
) -> PipelineStatus:
    """Every component's health, each consumer group's lag, and events/s in and rows/s out.

    With the local stack (Kafka on the stack's address) its components come from `Stack.status()`;
    otherwise Kafka and the registry are asked directly. Rates are two reads of the workers'
    counters `interval_s` apart.
    """
    timeout = min(kafka.request_timeout_s, STATUS_TIMEOUT_S)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "log_level": QUIET_LOG_LEVEL})
    kafka_health = _kafka_health(kafka, admin, timeout)
    if kafka.bootstrap_servers == stack.kafka_bootstrap:
        from onfinish.stack.stack import Stack

        components = [_stack_health(s) for s in Stack(stack, kafka).status()]
    else:
        components = [kafka_health, _registry_health(registry)]
    workers = _processor_workers(processors)
    sink_health = _sink(sink)
    components += [*workers, sink_health]

    processor_addresses = [w.address for w in workers if w.healthy]
    sink_addresses = [sink_health.address] if sink_health.healthy else []
    began = time.monotonic()
    processed_before = _counters(_metrics_texts(processor_addresses), "onfinish_processor_processed_total")
    rows_before = _counters(_metrics_texts(sink_addresses), "onfinish_sink_rows_total")

    if kafka_health.healthy:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": f"onfinish-status-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "log_level": QUIET_LOG_LEVEL,
            }
        )
        try:
            lags = [group_lag(admin, consumer, group, timeout) for group in consumer_groups(processors, sink)]
        finally:
            consumer.close()
    else:
        lags = [
            GroupLag(group, None, 0, "Kafka does not answer") for group in consumer_groups(processors, sink)
        ]

    time.sleep(max(interval_s - (time.monotonic() - began), 0.0))
    elapsed = time.monotonic() - began
    processor_texts = _metrics_texts(processor_addresses)  # the rate's second read and the stage costs
    processed_after = _counters(processor_texts, "onfinish_processor_processed_total")
    rows_after = _counters(_metrics_texts(sink_addresses), "onfinish_sink_rows_total")
    return PipelineStatus(
        components=components,
        lags=lags,
        events_in_per_s=rate(processed_before, processed_after, elapsed),
        rows_out_per_s=rate(rows_before, rows_after, elapsed),
        processor_us_per_record=stage_costs(processor_texts),
    )
