"""The Collector topic worker's reading of records, with fake Kafka messages (the worker itself runs
against real Kafka in tests/integration/test_collect.py)."""

from __future__ import annotations

from dataclasses import dataclass

from onfinish.collect.samples import genai_request
from onfinish.collect.topic import read_record
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage


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
    spans, letter = read_record(FakeMessage(genai_request(7, seed=1).SerializeToString()))
    assert letter is None
    assert len(spans) == 7
    assert spans[0].resource["service.name"] == "chat-api"


def test_records_that_do_not_parse_become_dead_letters_with_their_origin_and_bytes():
    body = genai_request(3, seed=1).SerializeToString()
    for payload, reason in ((None, Reason.empty), (b"", Reason.empty), (body[:-5], Reason.undecodable)):
        spans, letter = read_record(FakeMessage(payload, b"k"))
        assert spans == [] and isinstance(letter, DeadLetter)
        assert (letter.stage, letter.reason) == (Stage.collect, reason)
        assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("otlp_spans", 3, 42)
        assert (letter.key, letter.value) == (b"k", payload)
        headers = dict(letter.headers())
        assert headers["onfinish.stage"] == b"collect"
        assert DeadLetter.from_headers(letter.key, letter.value, letter.headers()) == letter
