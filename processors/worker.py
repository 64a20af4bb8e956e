"""Entry point of one processor worker process: `python -m onfinish.processors.worker`."""

from __future__ import annotations

import logging
import time

from confluent_kafka.admin import AdminClient

from onfinish.errors import AccessDenied
from onfinish.logs import LogSettings, configure_logging
from onfinish.runtime import prepare_worker
from onfinish.schemas.contract import PROCESSED_RECORD_TYPES
from onfinish.schemas.wire import (
    RegistryUnavailable,
    SchemaRefused,
    check_registry_access,
    registered_id,
    registry_client,
)
from onfinish.security import check_kafka_access, librdkafka_config
from onfinish.settings import KafkaSettings, RegistrySettings

log = logging.getLogger(__name__)


def wait_for_raw_topic(kafka: KafkaSettings, timeout_s: float = 120.0) -> bool:
    """Until the broker's metadata lists the raw topic (True), or `timeout_s` passed (False).

    Faust subscribes once, at start: a worker that starts before its topic shows in the metadata
    (created a moment ago, or not yet by `onfinish topics create`) would sit idle for good.
    """
    topic = f"{kafka.topic_prefix}.raw"
    admin = AdminClient({**librdkafka_config(kafka), "log_level": 2})
    deadline = time.monotonic() + timeout_s
    warned = False
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=5)  # all topics: asking for one may create it
            entry = metadata.topics.get(topic)
            if entry is not None and entry.error is None and entry.partitions:
                return True
        except Exception as exc:  # the broker is not reachable yet
            if not warned:
                log.warning("waiting for Kafka", extra={"error": str(exc)[:200]})
                warned = True
        if not warned:
            log.warning("waiting for topic %s (onfinish topics create)", topic)
            warned = True
        time.sleep(0.5)
    return False


def check_access(kafka: KafkaSettings, registry: RegistrySettings, app_id: str) -> None:
    """Refuse to start, with the reason, when Kafka or the registry will not have us: a wrong
    password, an unknown CA or a missing ACL ends here within the connect timeout, not in Faust's
    (or librdkafka's) silent reconnect loop."""
    prefix = kafka.topic_prefix
    outputs = [record_type.topic(prefix) for record_type in PROCESSED_RECORD_TYPES]
    check_kafka_access(
        kafka, topics=[f"{prefix}.raw", *sorted(set(outputs)), f"{prefix}.dlq"], groups=[app_id]
    )
    check_registry_access(registry)


def check_registered_outputs(registry: RegistrySettings, topic_prefix: str) -> None:
    """With auto-registration off, the output schemas must be there before the first batch: a
    contract the schema admin has not registered is SchemaRefused here, at the start, with what to
    run, rather than a worker that ends at its first event."""
    client = registry_client(registry, quick=True)
    for record_type in PROCESSED_RECORD_TYPES:
        registered_id(client, record_type, record_type.subject(record_type.topic(topic_prefix)))


def main() -> None:
    from onfinish.processors.settings import ProcessorSettings

    configure_logging(LogSettings())  # until Faust's worker puts the same handler in place
    settings = ProcessorSettings()
    try:
        check_access(KafkaSettings(), RegistrySettings(), settings.app_id)
        if not settings.auto_register:
            check_registered_outputs(RegistrySettings(), KafkaSettings().topic_prefix)
    except (AccessDenied, SchemaRefused) as exc:
        log.error("processor worker cannot start: %s", exc)
        raise SystemExit(2) from None
    except RegistryUnavailable as exc:  # away for now: the pipeline waits for it, as ever
        log.warning("schema registry not reachable at start", extra={"error": str(exc)[:300]})
    if not wait_for_raw_topic(KafkaSettings()):
        raise SystemExit("the raw topic does not exist: create it with `onfinish topics create`")
    from onfinish.processors.app import app
    from onfinish.processors.faust_overrides import StructuredLogWorker
    from onfinish.processors.settings import ProcessorSettings

    prepare_worker(ProcessorSettings().gc_thresholds)

    # Faust sets the process's logging up, then the worker puts onfinish's handler in its place.
    # Faust's worker handles SIGTERM and SIGINT: it stops consuming, flushes the producer,
    # commits the processed offsets and leaves the group, so another worker takes over cleanly.
    StructuredLogWorker(app, loglevel=LogSettings().level, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
