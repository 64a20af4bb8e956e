"""PII planted in every identifier and dimension, and percent-encoded in error messages and allowed
attributes, sent through the SDK to a real processor and sink: it reaches no ClickHouse table and
no topic the processors write (issue 18, item 6; decision 0015)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from confluent_kafka.admin import AdminClient

from onfinish.loadgen.load import LoadReport
from onfinish.processors.enrichment import IDENTIFIER_FIELDS, TRACE_ID_LENGTHS
from onfinish.producers.emitter import Emitter
from onfinish.producers.settings import ProducerSettings
from onfinish.schemas.models import Feedback, OnFinishEvent, Status
from onfinish.security import librdkafka_config
from onfinish.settings import KafkaSettings
from tests.integration.pipeline import Run
from tests.integration.records import consume_all

# One e-mail address, one phone number, one (Luhn-valid) card number.
EMAIL = "alice.pii@example.com"
PHONE = "+1 415 555 0100"
CARD = "4111 1111 1111 1111"
# Each as written, percent-encoded once (as in a URL) and twice (a URL inside a URL's query).
PLANTS = (
    EMAIL,
    "alice.pii%40example.com",
    "alice.pii%2540example.com",
    PHONE,
    "%2B1%20415%20555%200100",
    CARD,
    "4111%201111%201111%201111",
)
# What must appear nowhere: every form above, decoded ones, and the digits run together.
LEAKS = (
    *PLANTS,
    "alice.pii",
    "415 555 0100",
    "%2B1%2520415",
    "4111111111111111",
    "4111%25201111",
)
PLANTED_FIELDS = (*IDENTIFIER_FIELDS, *TRACE_ID_LENGTHS, "user_id")
# What the SDK sets itself, whatever the caller passes.
SDK_FIELDS = {"sdk_name", "sdk_version"}
# An allowed attribute (ONFINISH_PROCESSOR_ATTRIBUTE_ALLOW_LIST's default) and one that is dropped.
ALLOWED_ATTRIBUTE = "tenant_id"


def _event(index: int, plant: str, now: datetime) -> OnFinishEvent:
    ids = {name: f"{name}-{index}-{plant}" for name in PLANTED_FIELDS}
    # Encoded once in a URL, or twice in a URL inside a URL's query.
    email = "alice.pii%40example.com" if index % 2 else "alice.pii%2540example.com"
    return OnFinishEvent.model_validate(
        {
            **ids,
            "started_at": now - timedelta(milliseconds=700),
            "finished_at": now,
            "latency_ms": 700.0,
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "status": Status.error,
            "error_type": "upstream_error",
            "error_message": (
                f"GET https://api.example.com/v1/users?email={email}&phone=%2B1%20415%20555%200100 -> 404; "
                "card 4111%201111%201111%201111"
            ),
            "attributes": {
                ALLOWED_ATTRIBUTE: f"redirect=https%3A%2F%2Fapp.example.com%2Fcb%3Femail%3D{plant}",
                "debug_url": f"https://x.example.com/?e={plant}",
            },
        }
    )


def _output_topics(kafka: KafkaSettings, prefix: str) -> list[str]:
    """Every topic of this run but the raw one: outputs, dead letters, the processors' changelogs."""
    admin = AdminClient(librdkafka_config(kafka))
    topics = admin.list_topics(timeout=20).topics
    return sorted(name for name in topics if name.startswith(prefix) and name != f"{prefix}.raw")


def test_pii_in_every_identifier_and_percent_encoded_reaches_no_table_and_no_output_topic(
    run: Run, kafka_settings: KafkaSettings, unique: str
) -> None:
    now = datetime.now(UTC)
    events = [_event(index, plant, now) for index, plant in enumerate(PLANTS * 3)]
    feedback = [
        Feedback(request_id=event.request_id, session_id=event.session_id, rating=1, at=now)
        for event in events
    ]
    emitter = Emitter(
        ProducerSettings(topic=f"{unique}.raw", spool_dir=run.stack.settings.home / f"{unique}-spool")
    )
    try:
        for record in [*events, *feedback]:
            emitter.on_finish(record)
        assert emitter.flush(60), f"Kafka did not acknowledge: {emitter.stats()}"
    finally:
        emitter.close()
    assert sum("%2540" in event.model_dump_json() for event in events) >= len(PLANTS)

    # Every event stored once, in events, windows_1m and sessions (the fault suite's reconciliation),
    # and every feedback's quality update stored.
    run.manifest.write_text(json.dumps({"event_ids": [str(event.event_id) for event in events]}))
    result = run.reconcile(LoadReport(events=len(events), feedback=len(feedback)))
    assert (result.lost, result.doubled, result.dead_lettered) == (0, 0, 0)
    deadline = time.monotonic() + 60
    while (
        run.value("SELECT count() FROM event_quality FINAL") < len(feedback) and time.monotonic() < deadline
    ):
        time.sleep(1)

    # The identifiers arrived pseudonymised, one distinct "p_" value per planted value, and the
    # feedback met its calls by the cleaned ids.
    columns = ", ".join(name for name in PLANTED_FIELDS if name not in SDK_FIELDS)
    rows = run.query.query(f"SELECT {columns} FROM events FINAL").rows
    assert len(rows) == len(events)
    for row in rows:
        assert all(str(value)[:2] in ("p_", "u_") and len(str(value)) == 34 for value in row), row
    assert len({row[0] for row in rows}) == len(events)
    met = run.value(
        "SELECT count() FROM event_quality FINAL WHERE request_id IN (SELECT request_id FROM events FINAL)"
    )
    assert met == len(feedback), "every feedback's quality update names its call's cleaned request_id"

    leaks: list[tuple[str, str]] = []
    tables = [row[0] for row in run.query.query("SHOW TABLES").rows]
    assert {"events", "windows_1m", "sessions", "dlq"} <= set(tables)
    for table in tables:
        text = json.dumps(run.query.query(f"SELECT * FROM {table}").rows, default=str)
        leaks += [(f"table {table}", leak) for leak in LEAKS if leak in text]
    topics = _output_topics(kafka_settings, unique)
    assert f"{unique}.enriched" in topics
    for topic in topics:
        messages = consume_all(kafka_settings, topic, f"{unique}-audit-{topic}", idle_s=2)
        published = b"\n".join((m.key() or b"") + b"\n" + (m.value() or b"") for m in messages)
        leaks += [(f"topic {topic}", leak) for leak in LEAKS if leak.encode() in published]
    assert not leaks, f"{len(leaks)} leaks: {leaks[:8]}"
