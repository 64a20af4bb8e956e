"""The topics of DESIGN.md, provisioned idempotently.

Creating a topic that exists is not an error; an existing topic is left as it is, and a partition
count that differs from the setting is reported, since partitions are fixed at creation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from onfinish.errors import StackError
from onfinish.schemas.contract import DEAD_LETTER_OVERHEAD_BYTES, MAX_RECORD_BYTES
from onfinish.security import librdkafka_config
from onfinish.settings import KafkaSettings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    suffix: str
    purpose: str
    config: dict[str, str] = field(default_factory=dict)

    def name(self, settings: KafkaSettings) -> str:
        return f"{settings.topic_prefix}.{self.suffix}"


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        "raw",
        "onFinish and Feedback records from the SDK (Avro), keyed by session_id",
        {"retention.ms": str(7 * DAY_MS), "max.message.bytes": str(MAX_RECORD_BYTES)},
    ),
    TopicSpec(
        "enriched",
        "validated, priced, redacted events, keyed by session_id",
        {"retention.ms": str(7 * DAY_MS)},
    ),
    TopicSpec("windows", "1-minute aggregate snapshots per dimension set", {"retention.ms": str(7 * DAY_MS)}),
    # One running row per session: compaction keeps the latest snapshot of each key.
    TopicSpec("sessions", "session snapshots, keyed by session_id", {"cleanup.policy": "compact"}),
    TopicSpec("alerts", "rule breaches, keyed by rule and subject", {"retention.ms": str(30 * DAY_MS)}),
    TopicSpec(
        "dlq",
        "records any stage could not process, with the reason in headers",
        {
            "retention.ms": str(30 * DAY_MS),
            "max.message.bytes": str(MAX_RECORD_BYTES + DEAD_LETTER_OVERHEAD_BYTES),
        },
    ),
)


@dataclass(frozen=True)
class TopicResult:
    name: str
    created: bool
    partitions: int
    note: str = ""


def provision_topics(settings: KafkaSettings, specs: tuple[TopicSpec, ...] = TOPICS) -> list[TopicResult]:
    """Create every topic that does not exist yet; describe the ones that do."""
    admin = AdminClient({**librdkafka_config(settings), "log_level": 2})
    timeout = settings.request_timeout_s
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise StackError(
            f"Kafka at {settings.bootstrap_servers} did not answer within {timeout:.0f}s: {exc.args[0].str()}"
        ) from exc
    wanted = {spec.name(settings): spec for spec in specs}
    to_create = [
        NewTopic(
            name,
            num_partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            config=spec.config,
        )
        for name, spec in wanted.items()
        if name not in existing
    ]
    created: set[str] = set()
    if to_create:
        for name, future in admin.create_topics(to_create, operation_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
                created.add(name)
            except KafkaException as exc:
                error = exc.args[0]
                # Another process created it between our listing and our request: that is fine.
                if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise StackError(f"creating topic {name} failed: {error.str()}") from exc
    topics = admin.list_topics(timeout=timeout).topics
    results = []
    for name in wanted:
        partitions = len(topics[name].partitions) if name in topics else 0
        note = ""
        if name not in created and partitions != settings.partitions:
            note = f"exists with {partitions} partitions (setting: {settings.partitions}; fixed at creation)"
        results.append(TopicResult(name, created=name in created, partitions=partitions, note=note))
    return results
