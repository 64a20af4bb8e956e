"""How long a sink's consume may wait: a batch is inserted `batch_seconds` after its first record,
not up to a poll later, and its clock starts when that record arrives."""

from __future__ import annotations

import pytest

from onfinish.settings import KafkaSettings, RegistrySettings
from onfinish.sinks.settings import SinkSettings
from onfinish.sinks.worker import FamilySink, SinkMetrics


@pytest.fixture
def sink() -> FamilySink:
    sink = FamilySink(
        "events",
        SinkSettings(batch_rows=1000, batch_seconds=0.5),
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        RegistrySettings(url="http://127.0.0.1:1"),
        lambda: pytest.fail("no ClickHouse here"),
        SinkMetrics(),
    )
    sink.consumer.close()
    return sink


def test_with_nothing_pending_the_first_record_ends_the_wait(sink: FamilySink) -> None:
    count, timeout = sink._consume_plan(100.0)
    assert count == 1 and timeout == pytest.approx(0.2)


def test_a_pending_batch_waits_no_longer_than_its_deadline(sink: FamilySink) -> None:
    sink.pending = [object()] * 10
    sink.batch_started = 100.0
    assert sink._consume_plan(100.1)[1] == pytest.approx(0.2)  # the poll's own bound
    assert sink._consume_plan(100.45)[1] == pytest.approx(0.05)  # the deadline's
    assert sink._consume_plan(100.7) == (990, 0.0)  # past it: take what is there, insert


def test_a_full_batch_still_asks_for_one_record(sink: FamilySink) -> None:
    sink.pending = [object()] * 1000
    sink.batch_started = 100.0
    assert sink._consume_plan(100.1)[0] == 1
