"""Entry point of one processor worker process: `python -m onfinish.processors.worker`."""

from __future__ import annotations

import logging
import time

from confluent_kafka.admin import AdminClient

from onfinish.logs import LogSettings
from onfinish.runtime import tune_gc
from onfinish.settings import KafkaSettings

log = logging.getLogger(__name__)


def wait_for_raw_topic(kafka: KafkaSettings, timeout_s: float = 120.0) -> bool:
    """Until the broker's metadata lists the raw topic (True), or `timeout_s` passed (False).

    Faust subscribes once, at start: a worker that starts before its topic shows in the metadata
    (created a moment ago, or not yet by `onfinish topics create`) would sit idle for good.
    """
    topic = f"{kafka.topic_prefix}.raw"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "log_level": 2})
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


def main() -> None:
    if not wait_for_raw_topic(KafkaSettings()):
        raise SystemExit("the raw topic does not exist: create it with `onfinish topics create`")
    from onfinish.processors.app import app
    from onfinish.processors.faust_overrides import StructuredLogWorker
    from onfinish.processors.settings import ProcessorSettings

    tune_gc(ProcessorSettings().gc_thresholds)

    # Faust sets the process's logging up, then the worker puts onfinish's handler in its place.
    # Faust's worker handles SIGTERM and SIGINT: it stops consuming, flushes the producer,
    # commits the processed offsets and leaves the group, so another worker takes over cleanly.
    StructuredLogWorker(app, loglevel=LogSettings().level, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
