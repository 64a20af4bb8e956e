"""The Collector topic worker's reading of records, with fake Kafka messages (the worker itself runs
against real Kafka in tests/integration/test_collect.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from onfinish.collect.feedback import FeedbackReader
from onfinish.collect.ingest import Ingest
from onfinish.collect.mapping import Ignored, Rejected, SpanData, SpanMapper, load_mapping
from onfinish.collect.samples import genai_request
from onfinish.collect.topic import read_record
from onfinish.producers.emitter import DurableBatch
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.sealing import Seal

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
