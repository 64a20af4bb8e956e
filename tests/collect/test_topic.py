"""The Collector topic worker's reading of records, with fake Kafka messages (the worker itself runs
against real Kafka in tests/integration/test_collect.py)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from unittest.mock import MagicMock

import confluent_kafka
import pytest

from onfinish.collect.feedback import FeedbackReader
from onfinish.collect.ingest import Ingest
from onfinish.collect.mapping import Ignored, Rejected, SpanData, SpanMapper, load_mapping
from onfinish.collect.samples import genai_request
from onfinish.collect.settings import CollectSettings
from onfinish.collect.topic import TopicWorker, read_record
from onfinish.producers.emitter import DurableBatch
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.sealing import Seal
from onfinish.settings import KafkaSettings

SEAL = Seal("a test secret")


@dataclass
class FakeMessage:
    payload: bytes | None
    key_bytes: bytes | None = None

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "otlp_spans"

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 42

    def key(self) -> bytes | None:
        return self.key_bytes

    def value(self) -> bytes | None:
        return self.payload


def test_a_collector_record_gives_its_spans():
    spans, letter = read_record(FakeMessage(genai_request(7, seed=1).SerializeToString()), SEAL)
    assert letter is None
    assert len(spans) == 7
    assert spans[0].resource["service.name"] == "chat-api"


def test_records_that_do_not_parse_become_dead_letters_with_their_origin_and_bytes():
    body = genai_request(3, seed=1).SerializeToString()
    for payload, reason in ((None, Reason.empty), (b"", Reason.empty), (body[:-5], Reason.undecodable)):
        spans, letter = read_record(FakeMessage(payload, b"k"), SEAL)
        assert spans == [] and isinstance(letter, DeadLetter)
        assert (letter.stage, letter.reason) == (Stage.collect, reason)
        assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("otlp_spans", 3, 42)
        assert (SEAL.open(letter.key), SEAL.open(letter.value)) == (b"k", payload)
        assert letter.key != b"k" and (not payload or letter.value != payload), "sealed"
        headers = dict(letter.headers())
        assert headers["onfinish.stage"] == b"collect"
        assert DeadLetter.from_headers(letter.key, letter.value, letter.headers()) == letter


class _BrokenOnSecondSpan(SpanMapper):
    """A mapping with a bug that meets one span, quoting its data as a KeyError does."""

    def __init__(self) -> None:
        super().__init__(load_mapping())
        self.seen = 0

    def map(self, span: SpanData) -> dict[str, Any] | Ignored | Rejected:
        self.seen += 1
        if self.seen == 2:
            raise KeyError("alice@example.com")
        return super().map(span)


class _Spool:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def spool_batch(self, items: Sequence[Any], *, sync: bool = False) -> DurableBatch:
        self.items += items
        return DurableBatch(spooled=len(items), rejected=[], refused=0)


def test_a_bug_in_the_mapping_refuses_its_span_alone_without_quoting_it(caplog):
    spool = _Spool()
    ingest = Ingest(_BrokenOnSecondSpan(), FeedbackReader(load_mapping().feedback), spool)
    spans, _ = read_record(FakeMessage(genai_request(5, seed=2).SerializeToString()), SEAL)
    outcome = ingest.spans(spans)
    assert (outcome.events, dict(outcome.rejected)) == (4, {"processing_error": 1})
    assert len(spool.items) == 4
    answer = outcome.partial_success()
    assert answer.rejected == 1 and "KeyError in map" in answer.message
    assert "alice" not in answer.message and "alice" not in caplog.text


class _CoordinatorAway:
    """A consumer whose first commit finds the group coordinator away."""

    def __init__(self) -> None:
        self.attempts = 0
        self.committed: list[tuple[str, int, int]] = []

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        self.attempts += 1
        if self.attempts == 1:
            raise confluent_kafka.KafkaException(
                confluent_kafka.KafkaError(confluent_kafka.KafkaError._WAIT_COORD)
            )
        self.committed = [(tp.topic, tp.partition, tp.offset) for tp in offsets]


class _Letters:
    """The dead letters' producer, Kafka acknowledging at once."""

    def __init__(self) -> None:
        self.letters: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        self.letters.append(value)

    def flush(self, timeout: float) -> int:
        return 0


def test_a_commit_kafka_refuses_leaves_the_worker_running_and_is_done_later():
    """It raised out of the worker's loop before, ending `onfinish collect kafka` on a broker restart."""
    consumer, letters, sdk = _CoordinatorAway(), _Letters(), MagicMock()
    sdk.flush.return_value = True  # Kafka acknowledged what the batch spooled
    ingest = Ingest(SpanMapper(load_mapping()), FeedbackReader(load_mapping().feedback), _Spool())
    worker = TopicWorker(
        CollectSettings(commit_retry_initial_s=0.01, commit_retry_max_s=0.02),
        KafkaSettings(),
        sdk,
        ingest,
        MagicMock(),
        consumer=consumer,
        dead_letters=letters,
        seal=SEAL,
    )
    worker.commits.assigned([confluent_kafka.TopicPartition("otlp_spans", 3)])
    worker.process([FakeMessage(b"")], threading.Event())  # an empty record: a dead letter
    assert len(letters.letters) == 1 and consumer.attempts == 1
    threading.Event().wait(0.03)
    worker.commits.commit()  # the worker's loop does this when a consume brings nothing
    assert consumer.committed == [("otlp_spans", 3, 43)]


def test_a_commit_retry_that_starts_longer_than_its_longest_is_refused_by_name():
    with pytest.raises(ValueError, match="ONFINISH_COLLECT_COMMIT_RETRY_INITIAL_S must not exceed"):
        CollectSettings(commit_retry_initial_s=60, commit_retry_max_s=30)
