"""Splitting a sink batch: pass-through Avro, rows, and dead letters with their reasons."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from onfinish.processors.windows import WindowKey, WindowState
from onfinish.schemas.contract import ALERT, ENRICHED_EVENT, WINDOW_SNAPSHOT, RecordType
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.sealing import Seal
from onfinish.schemas.wire import WriterSchema
from onfinish.sinks.batches import BatchBuilder, KafkaRecord, offset_ranges, topic_tables
from onfinish.sinks.tables import DLQ_COLUMNS, EVENTS, WINDOWS
from tests.processors.test_windows import _enriched

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
IDS = {1: ENRICHED_EVENT, 2: WINDOW_SNAPSHOT, 3: ALERT}


def _lookup(schema_id: int) -> WriterSchema | None:
    record_type = IDS.get(schema_id)
    return None if record_type is None else WriterSchema(record_type, record_type.parsed)


def _framed(schema_id: int, record_type: RecordType, datum: dict) -> bytes:  # type: ignore[type-arg]
    return b"\x00" + schema_id.to_bytes(4, "big") + record_type.encode(datum)


def _builder() -> BatchBuilder:
    return BatchBuilder(_lookup, topic_tables("p"), "p.dlq", clock=lambda: NOW)


def _window_value() -> bytes:
    state = WindowState()
    event = _enriched(0, latency_ms=120.0, ttft_ms=40.0)
    state.apply(event, 5)
    return _framed(2, WINDOW_SNAPSHOT, state.datum(WindowKey.of(event), 3, NOW))


def test_events_pass_through_and_windows_become_dense_rows():
    event = ENRICHED_EVENT.to_datum(_enriched(1))
    records = [
        KafkaRecord("p.enriched", 0, 10, b"k", _framed(1, ENRICHED_EVENT, event)),
        KafkaRecord("p.enriched", 0, 11, b"k", _framed(1, ENRICHED_EVENT, event)),
        KafkaRecord("p.windows", 2, 7, b"w", _window_value()),
    ]
    batch = _builder().build(records)
    assert set(batch.inserts) == {"events", "windows_1m"}
    assert batch.inserts["events"].avro == [records[0].value, records[1].value]
    assert batch.inserts["events"].rows == []
    (row,) = batch.inserts["windows_1m"].rows
    named = dict(zip(WINDOWS.columns, row, strict=True))
    assert len(named["latency_counts"]) == 393 and sum(named["latency_counts"]) == 1
    assert (named["kafka_partition"], named["kafka_offset"], named["events"]) == (2, 7, 1)


def test_decode_all_turns_pass_through_records_into_rows():
    value = _framed(1, ENRICHED_EVENT, ENRICHED_EVENT.to_datum(_enriched(1)))
    batch = _builder().build([KafkaRecord("p.enriched", 1, 3, b"k", value)], decode_all=True)
    (row,) = batch.inserts["events"].rows
    assert batch.inserts["events"].avro == []
    assert dict(zip(EVENTS.columns, row, strict=True))["request_id"] == "r1"


def test_unstorable_records_become_dead_letters_with_their_reason():
    good = _framed(1, ENRICHED_EVENT, ENRICHED_EVENT.to_datum(_enriched(1)))
    records = [
        KafkaRecord("p.enriched", 0, 1, b"a", None),
        KafkaRecord("p.enriched", 0, 2, b"b", b"{json}"),
        KafkaRecord("p.enriched", 0, 3, b"c", b"\x00\x00\x00\x00\x63rest"),
        KafkaRecord("p.enriched", 0, 4, b"d", _window_value()),
        KafkaRecord("p.windows", 0, 5, b"e", _window_value()[:-9]),
        KafkaRecord("p.enriched", 0, 6, b"f", good),
    ]
    batch = _builder().build(records)
    reasons = [row[1] for row in batch.inserts["dlq"].rows]
    assert reasons == [
        Reason.empty.value,
        Reason.not_confluent_framed.value,
        Reason.unknown_schema_id.value,
        Reason.unknown_record_type.value,
        Reason.truncated.value,
    ]
    assert {row[0] for row in batch.inserts["dlq"].rows} == {Stage.sink.value}
    assert batch.dead_lettered == {reason: 1 for reason in reasons}
    seal = Seal.configured()  # the builder's, as the worker's: sealed as every stage's dead letters
    stored = [dict(zip(DLQ_COLUMNS, row, strict=True)) for row in batch.inserts["dlq"].rows]
    for letter, record in zip(stored, records, strict=False):
        key, value = base64.b64decode(letter["key"]), base64.b64decode(letter["value"])
        assert (seal.open(key), seal.open(value) or None) == (record.key, record.value)
        assert record.value is None or value != record.value
    assert batch.inserts["events"].avro == [good]


def test_dead_letters_of_the_dlq_topic_keep_the_stage_and_reason_that_refused_them():
    letter = DeadLetter(
        Stage.validate, Reason.contract_violation, "latency_ms: < 0", b"k", b"v", "p.raw", 4, 9
    )
    batch = _builder().build([KafkaRecord("p.dlq", 1, 0, b"k", b"v", letter.headers())])
    (row,) = batch.inserts["dlq"].rows
    assert row[:6] == ["validate", "contract_violation", "latency_ms: < 0", "p.raw", 4, 9]
    assert batch.dead_lettered == {}, "the processors counted it already"


def test_the_deduplication_token_names_the_offsets_of_the_insert():
    value = _framed(1, ENRICHED_EVENT, ENRICHED_EVENT.to_datum(_enriched(1)))
    records = [KafkaRecord("p.enriched", p, o, b"k", value) for p, o in ((1, 9), (0, 4), (1, 7), (0, 5))]
    token = _builder().build(records).inserts["events"].token()
    assert token == "events|p.enriched:0:4-5,p.enriched:1:7-9"
    assert _builder().build(list(reversed(records))).inserts["events"].token() == token
    later = _builder().build([*records, KafkaRecord("p.enriched", 1, 10, b"k", value)])
    assert later.inserts["events"].token() != token


def _pass_through_batch(offsets: list[tuple[int, int]]) -> list[KafkaRecord]:
    value = _framed(1, ENRICHED_EVENT, ENRICHED_EVENT.to_datum(_enriched(1)))
    return [KafkaRecord("p.enriched", partition, offset, b"k", value) for partition, offset in offsets]


def test_a_pass_through_insert_splits_into_contiguous_parts_with_tokens_of_their_own():
    # Consumed order interleaves partitions; each part is a run of it, so per partition the parts
    # cover disjoint offset ranges and no two parts share a token.
    runs = [(partition, start) for start in (0, 100, 200) for partition in (0, 1)]
    records = _pass_through_batch([(p, o) for p, start in runs for o in range(start, start + 100)])
    insert = _builder().build(records).inserts["events"]
    parts = insert.split(2, 100)
    assert [len(part.avro) for part in parts] == [300, 300]
    assert [r.offset for part in parts for r in part.avro_records] == [r.offset for r in records]
    assert b"".join(b"".join(part.avro) for part in parts) == b"".join(insert.avro)
    assert parts[0].ranges == {("p.enriched", 0): (0, 199), ("p.enriched", 1): (0, 99)}
    assert parts[1].ranges == {("p.enriched", 1): (100, 299), ("p.enriched", 0): (200, 299)}
    assert len({part.token() for part in parts} | {insert.token()}) == 3


def test_splitting_is_the_same_for_the_same_records_and_never_makes_small_parts():
    records = _pass_through_batch([(0, o) for o in range(1000)])
    tokens = [
        [part.token() for part in _builder().build(records).inserts["events"].split(3, 100)] for _ in "ab"
    ]
    assert tokens[0] == tokens[1] and len(tokens[0]) == 3
    insert = _builder().build(records).inserts["events"]
    assert insert.split(4, 400) == insert.split(2, 400) and len(insert.split(4, 400)) == 2
    assert insert.split(2, 600) == [insert]
    assert insert.split(1, 1) == [insert]


def test_rows_are_never_split():
    value = _framed(1, ENRICHED_EVENT, ENRICHED_EVENT.to_datum(_enriched(1)))
    records = [KafkaRecord("p.enriched", 0, n, b"k", value) for n in range(100)]
    insert = _builder().build(records, decode_all=True).inserts["events"]
    assert insert.split(2, 1) == [insert]


def test_offset_ranges_are_first_and_last_per_partition_across_runs_and_lists():
    def runs(topic: str, *spans: tuple[int, int, int]) -> list[KafkaRecord]:
        return [KafkaRecord(topic, p, o, None, b"") for p, a, b in spans for o in range(a, b + 1)]

    # runs of one partition interleaved as the consumer fetched them, one partition read again
    # from an earlier offset (a rewind), and a second list of records (rows) of the same topic
    values = runs("t", (0, 10, 19), (1, 5, 9), (0, 20, 24), (1, 0, 4), (2, 7, 7))
    rows = runs("t", (2, 3, 3)) + runs("u", (0, 100, 101))
    assert offset_ranges(values, rows) == {
        ("t", 0): (10, 24),
        ("t", 1): (0, 9),
        ("t", 2): (3, 7),
        ("u", 0): (100, 101),
    }
    assert offset_ranges([]) == {}
