"""One behaviour, two engines: the native core against the Python reference, record for record.

Both engines run the same pipeline over the same raw records, each from empty state: every output
(enriched records, dead letters with their reasons and messages, alerts, quality updates, window and
session snapshots) must be byte-identical and in the same order, and the state each leaves in its
changelogs must be equal. Traffic: 100,000 loadgen events with their feedback and malformed
records, the fault suite's hostile corpus, writer schemas that evolved, and fuzzed bytes.
"""

from __future__ import annotations

import io
import json
import random
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onfinish.loadgen.traffic import TRAFFIC_START, Malformed, TrafficGenerator, TrafficProfile
from onfinish.processors.alerts import RuleBook
from onfinish.processors.decoding import Decoder, TimeBounds
from onfinish.processors.engines import NativeCore
from onfinish.processors.enrichment import IDENTIFIER_FIELDS, TRACE_ID_LENGTHS, Enricher
from onfinish.processors.pipeline import DictStore, Output, Pipeline, RawRecord
from onfinish.processors.pricing import PriceCatalog
from onfinish.processors.quality import QualityWeights
from onfinish.processors.redaction import PatternSet, percent_decoded
from onfinish.processors.settings import ProcessorSettings
from onfinish.schemas.contract import ENRICHED_EVENT, FEEDBACK, ONFINISH_EVENT, QUALITY_UPDATE, RecordType
from onfinish.schemas.deadletter import DeadLetter
from onfinish.schemas.models import EnrichedEvent, Feedback, OnFinishEvent
from onfinish.schemas.wire import WriterSchema
from tests.conftest import UNIT_PROFILE, scaled_examples
from tests.integration.records import hostile_values, sample_event

NOW = TRAFFIC_START + timedelta(hours=1)
# Loadgen events through both engines: 100,000 in `make test`, a tenth in `make test-unit`.
DIFFERENTIAL_EVENTS = 10_000 if UNIT_PROFILE else 100_000
FRAME = b"\x00\x00\x00\x00\x09"
PARTITIONS = 4
# Attributes that carry the traffic's PII are allowed through here, so that their values are redacted.
ALLOWED = frozenset({*ProcessorSettings().attribute_allow_list, "customer_note", "debug.env", "client_ip"})
ENRICHER = Enricher(PriceCatalog.load(), QualityWeights(), PatternSet.load(), ALLOWED, b"differential-key")
RULES = RuleBook.load()


def _evolved(transform: Any) -> str:
    schema = json.loads(ONFINISH_EVENT.schema_str)
    transform(schema)
    return json.dumps(schema)


def _reorder(schema: dict[str, Any]) -> None:
    schema["fields"].reverse()


def _extra_fields(schema: dict[str, Any]) -> None:
    schema["fields"].insert(3, {"name": "tenant", "type": ["null", "string"], "default": None})
    schema["fields"].append(
        {
            "name": "origin",
            "type": {
                "type": "record",
                "name": "Origin",
                "fields": [
                    {"name": "host", "type": "string"},
                    {"name": "pid", "type": "long"},
                    {"name": "tags", "type": {"type": "array", "items": "string"}},
                    {"name": "score", "type": "float"},
                ],
            },
        }
    )


def _fewer_fields(schema: dict[str, Any]) -> None:
    gone = {"environment", "attributes", "rating", "sdk_version", "prompt_text"}
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in gone]


def _null_last(schema: dict[str, Any]) -> None:
    for field in schema["fields"]:
        if isinstance(field["type"], list) and field["name"] in ("trace_id", "ttft_ms", "http_status"):
            field["type"] = field["type"][::-1]
            field.pop("default", None)


def _more_statuses(schema: dict[str, Any]) -> None:
    for field in schema["fields"]:
        if field["name"] == "status":
            field["type"] = {**field["type"], "symbols": [*field["type"]["symbols"], "rejected"]}


def _promoted(schema: dict[str, Any]) -> None:
    for field in schema["fields"]:
        if field["name"] == "latency_ms":
            field["type"] = "float"


# Writer schemas by id: the contract's own, and evolutions a producer may have registered.
EVOLUTIONS = {
    11: _reorder,
    12: _extra_fields,
    13: _fewer_fields,
    14: _null_last,
    15: _more_statuses,
    16: _promoted,  # a promotion the core does not read: every record takes the Python path
}
WRITER_TEXTS = {1: ONFINISH_EVENT.schema_str, 2: FEEDBACK.schema_str} | {
    schema_id: _evolved(transform) for schema_id, transform in EVOLUTIONS.items()
}
WRITERS = {
    schema_id: WriterSchema(
        FEEDBACK if schema_id == 2 else ONFINISH_EVENT, fastavro.parse_schema(json.loads(text)), text
    )
    for schema_id, text in WRITER_TEXTS.items()
}


def _encode(record_type: RecordType, datum: dict[str, Any]) -> bytes:
    return FRAME + record_type.encode(datum)


class Engines:
    """The same pipeline twice, on the reference and on the native core, each with its own state."""

    def __init__(self, now: Any = NOW, writers: dict[int, WriterSchema] = WRITERS) -> None:
        self.stores: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.native: NativeCore | None = None
        for engine in ("python", "native"):
            decoder = Decoder(writers.get, bounds=TimeBounds(max_past=timedelta(days=2)), clock=lambda: now)
            if engine == "native":
                self.native = NativeCore(decoder, ENRICHER, lambda record_type: FRAME)
            sessions: dict[str, Any] = {}
            windows: dict[str, Any] = {}
            self.stores[engine] = (sessions, windows)
            self.pipelines[engine] = Pipeline(
                decoder,
                ENRICHER,
                RULES,
                _encode,
                DictStore(changelog=sessions),
                DictStore(changelog=windows),
                allowed_lateness=timedelta(minutes=2),
                clock=lambda: now,
                native=self.native,
            )
        self.handed_back = 0
        self.records = 0

    def run(self, records: list[RawRecord], batch_size: int = 1000) -> dict[str, list[Output]]:
        outputs: dict[str, list[Output]] = {}
        for engine, pipeline in self.pipelines.items():
            outputs[engine] = []
            for start in range(0, len(records), batch_size):
                batch = pipeline.batch()
                for record in records[start : start + batch_size]:
                    batch.add(record)
                outputs[engine] += batch.finish()
            outputs[engine] += pipeline.dirty_snapshots()
        assert self.native is not None
        self.records, self.handed_back = self.native.records, self.native.handed_back
        return outputs

    def assert_identical(self, outputs: dict[str, list[Output]]) -> None:
        reference, native = outputs["python"], outputs["native"]
        assert len(native) == len(reference)
        for index, (expected, got) in enumerate(zip(reference, native, strict=True)):
            assert got == expected, f"output {index} differs: {_describe(expected)} vs {_describe(got)}"
        assert self.stores["native"] == self.stores["python"]  # the changelogs: sessions, windows
        python, native_pipeline = self.pipelines["python"], self.pipelines["native"]
        assert native_pipeline.counts == python.counts
        assert native_pipeline.watermarks == python.watermarks


def _describe(output: Output) -> str:
    kind = output.record_type.full_name if output.record_type else "dead letter"
    return f"{kind} key={output.key!r} headers={output.headers} value={output.value[:80] if output.value else None!r}"


def _partition(key: bytes) -> int:
    return zlib.crc32(key) % PARTITIONS


def _records(values: Sequence[tuple[bytes, bytes | None]]) -> list[RawRecord]:
    """Raw records as a topic of PARTITIONS partitions holds them, keyed like the SDK's."""
    offsets = Counter[int]()
    records = []
    for key, value in values:
        partition = _partition(key)
        records.append(RawRecord(key, value, "onfinish.raw", partition, offsets[partition]))
        offsets[partition] += 1
    return records


def _loadgen(
    count: int, seed: int, transform: Callable[[Any], Any] = lambda item: item, **profile: Any
) -> tuple[list[tuple[bytes, bytes | None]], int]:
    """`count` loadgen items as raw values (events and feedback framed with the contract's ids,
    malformed ones as they are), some events sent twice as an SDK retry would; and the events.
    `transform` changes each event and feedback first."""
    rng = random.Random(seed)
    values: list[tuple[bytes, bytes | None]] = []
    events = 0
    for item in TrafficGenerator(TrafficProfile(**profile), seed=seed).items(count):
        if isinstance(item, Malformed):
            values.append((item.key, item.value))
            continue
        item = transform(item)
        record_type = ONFINISH_EVENT if isinstance(item, OnFinishEvent) else FEEDBACK
        schema_id = 1 if record_type is ONFINISH_EVENT else 2
        value = b"\x00" + schema_id.to_bytes(4, "big") + record_type.encode(record_type.to_datum(item))
        values.append((item.key.encode(), value))
        if record_type is ONFINISH_EVENT:
            events += 1
            if rng.random() < 0.01:
                values.append((item.key.encode(), value))  # a re-send: a duplicate at a later offset
    return values, events


def test_100000_loadgen_events_are_byte_identical_on_both_engines() -> None:
    values, events = _loadgen(DIFFERENTIAL_EVENTS * 106 // 100, seed=2026)
    assert events >= DIFFERENTIAL_EVENTS
    engines = Engines()
    outputs = engines.run(_records(values))
    engines.assert_identical(outputs)

    native = outputs["native"]
    kinds = Counter(o.record_type.full_name if o.record_type else "dead letter" for o in native)
    reasons = Counter(
        DeadLetter.from_headers(o.key, o.value, o.headers).reason for o in native if not o.record_type
    )
    share = engines.handed_back / engines.records
    print(
        f"\ndifferential: {engines.records} raw records, {events} events; outputs {dict(kinds)}; "
        f"dead letters {dict(reasons)}; handed back to the reference {engines.handed_back} ({share:.2%})"
    )
    assert kinds[ENRICHED_EVENT.full_name] >= DIFFERENTIAL_EVENTS
    assert sum(reasons.values()) > DIFFERENTIAL_EVENTS / 400
    assert engines.pipelines["native"].counts.duplicates > DIFFERENTIAL_EVENTS / 200
    # Only what the reference refuses takes the Python path: the malformed share (0.5%).
    assert engines.handed_back == sum(reasons.values())
    assert share < 0.01


def test_pii_traffic_is_redacted_identically() -> None:
    values, _ = _loadgen(3_000, seed=7, pii_share=1.0, malformed_share=0)
    engines = Engines()
    outputs = engines.run(_records(values), batch_size=250)
    engines.assert_identical(outputs)
    assert engines.handed_back == 0


# PII planted in identifiers and dimensions: as written, percent-encoded (once and twice), and
# encoded outside ASCII (which the core's regex engine leaves to the reference, inside its call).
PLANTS = (
    "alice@example.com",
    "alice%40example.com",
    "anna.meyer12%2540example.com",
    "4111%201111%201111%201111",
    "+1 415 555 0100",
    "%2B1%20415%20555%200100",
    "DE89370400440532013000",
    "user 123-45-6789",
    "M%C3%BCller%40example.com",
)
# Free text and attribute values with percent-encoded PII, as URLs carry it.
ENCODED_TEXTS = (
    "GET https://api.example.com/v1/users?email=bob%40example.com&page=2 -> 404",
    "redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb%3Fphone%3D%252B1%2520415%2520555%25200199",
    "card 5500%2D0000%2D0000%2D0004 declined",
)


def _plant(value: str) -> str:
    """One value in four (by its hash, so a session's and its feedback's ids change alike) gets PII."""
    digest = zlib.crc32(value.encode())
    return value if digest % 4 else f"{value} {PLANTS[digest // 4 % len(PLANTS)]}"


def _planted(item: Any) -> Any:
    if isinstance(item, Feedback):
        return item.model_copy(
            update={
                "request_id": _plant(item.request_id),
                "session_id": item.session_id and _plant(item.session_id),
            }
        )
    update: dict[str, Any] = {
        name: _plant(value)
        for name in (*IDENTIFIER_FIELDS, *TRACE_ID_LENGTHS)
        if (value := getattr(item, name))
    }
    digest = zlib.crc32(item.request_id.encode())
    if digest % 3 == 0:
        text = ENCODED_TEXTS[digest // 3 % len(ENCODED_TEXTS)]
        update["error_message"] = text
        update["attributes"] = {**item.attributes, "customer_note": text}
    return item.model_copy(update=update)


def test_pii_planted_in_every_identifier_and_percent_encoded_is_cleaned_identically() -> None:
    values, events = _loadgen(3_000, seed=11, transform=_planted, malformed_share=0)
    engines = Engines()
    outputs = engines.run(_records(values), batch_size=250)
    engines.assert_identical(outputs)
    assert engines.handed_back == 0
    native = outputs["native"]
    assert len([o for o in native if o.record_type is ENRICHED_EVENT]) == events
    assert [o for o in native if o.record_type is QUALITY_UPDATE], "feedback still finds its calls"
    keys = [o.key for o in native if o.record_type is ENRICHED_EVENT and o.key]
    assert events / 8 < sum(key.startswith(b"p_") for key in keys) < events / 2  # a quarter of sessions
    published = b"\n".join((o.key or b"") + b"\n" + (o.value or b"") for o in native)
    stored = json.dumps(engines.stores["native"], default=str)
    decoded_plants = {
        form
        for plant in PLANTS
        for form in (plant, percent_decoded(plant), percent_decoded(percent_decoded(plant)))
    }
    pii = [*decoded_plants, "bob@example.com", "+1 415 555 0199", "5500-0000-0000-0004"]
    assert not [text for text in pii if text.encode() in published or text in stored]


def _enriched(output: Output) -> dict[str, Any]:
    assert output.value is not None
    datum = fastavro.schemaless_reader(io.BytesIO(output.value[5:]), ENRICHED_EVENT.parsed)
    assert isinstance(datum, dict)
    return datum


def test_pii_in_every_identifier_of_one_event_at_once_is_cleaned_identically() -> None:
    """Hostile events whose every identifier and dimension holds PII at once (each plant in turn),
    with percent-encoded PII in error_message and an allowed attribute: every such field leaves as
    its "p_" pseudonym on both engines, and no plant leaves in any form."""
    values: list[tuple[bytes, bytes | None]] = []
    items = TrafficGenerator(TrafficProfile(pii_share=0, malformed_share=0), seed=5).items(400)
    events = [item for item in items if isinstance(item, OnFinishEvent)]
    planted_fields = (*IDENTIFIER_FIELDS, *TRACE_ID_LENGTHS)
    for index, plant in enumerate(PLANTS * 3):
        event = events[index]
        text = ENCODED_TEXTS[index % len(ENCODED_TEXTS)]
        update: dict[str, Any] = {name: f"{name}-{index} {plant}" for name in planted_fields}
        update |= {"error_message": text, "attributes": {**event.attributes, "customer_note": text}}
        event = event.model_copy(update=update)
        value = FRAME[:1] + (1).to_bytes(4, "big") + ONFINISH_EVENT.encode(ONFINISH_EVENT.to_datum(event))
        values.append((event.key.encode(), value))
    engines = Engines()
    outputs = engines.run(_records(values), batch_size=10)
    engines.assert_identical(outputs)
    enriched = [_enriched(o) for o in outputs["native"] if o.record_type is ENRICHED_EVENT]
    assert len(enriched) == len(values)
    for record in enriched:
        assert all(record[name].startswith("p_") and len(record[name]) == 34 for name in planted_fields)
    published = b"\n".join((o.key or b"") + b"\n" + (o.value or b"") for o in outputs["native"])
    stored = json.dumps(engines.stores["native"], default=str)
    pii = {
        form
        for plant in PLANTS
        for form in (plant, percent_decoded(plant), percent_decoded(percent_decoded(plant)))
    }
    pii |= {"bob@example.com", "bob%40example.com", "+1 415 555 0199", "5500-0000-0000-0004"}
    assert not [text for text in pii if text.encode() in published or text in stored]


def test_clean_loadgen_identifiers_pass_as_they_are() -> None:
    """Precision: the loadgen's ordinary ids and dimensions (UUIDs, hex trace ids, model versions,
    regions, semver) are never pseudonymised."""
    items = TrafficGenerator(TrafficProfile(pii_share=0, malformed_share=0), seed=9).items(5_000)
    pseudonymised = Counter[str]()
    for item in items:
        if not isinstance(item, OnFinishEvent):
            continue
        record = ENRICHER.enrich(item, 0, 0, NOW)
        for name in (*IDENTIFIER_FIELDS, *TRACE_ID_LENGTHS):
            if getattr(record, name) != getattr(item, name):
                pseudonymised[f"{name}={getattr(item, name)}"] += 1
    assert not pseudonymised


def test_the_fault_suites_hostile_corpus_gets_the_same_dead_letters() -> None:
    hostile = hostile_values(FRAME[:1] + (1).to_bytes(4, "big"), NOW, random.Random(3))
    values = [(b"hostile", value) for value, _ in hostile]
    # And a few that are fine, around them, so that state is compared too.
    for i in range(20):
        event = sample_event(i).model_copy(update={"finished_at": NOW - timedelta(minutes=30 - i)})
        event = event.model_copy(update={"started_at": event.finished_at - timedelta(milliseconds=500)})
        values.insert(
            2 * i % len(values), (event.key.encode(), FRAME[:1] + (1).to_bytes(4, "big") + _body(event))
        )
    engines = Engines()
    outputs = engines.run(_records(values), batch_size=7)
    engines.assert_identical(outputs)
    letters = [
        DeadLetter.from_headers(o.key, o.value, o.headers) for o in outputs["native"] if not o.record_type
    ]
    assert Counter(letter.reason.value for letter in letters) == Counter(reason for _, reason in hostile)


def _body(event: OnFinishEvent) -> bytes:
    return ONFINISH_EVENT.encode(ONFINISH_EVENT.to_datum(event))


def _written_with(schema_id: int, item: OnFinishEvent) -> bytes:
    datum = {
        **ONFINISH_EVENT.to_datum(item),
        "tenant": "t-1",
        "origin": {"host": "h", "pid": 7, "tags": ["a"], "score": 0.5},
    }
    if schema_id == 15 and item.status.value == "timeout":
        datum["status"] = "rejected"  # a symbol the reader lacks: the reference uses its default
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, WRITERS[schema_id].parsed, datum)
    return b"\x00" + schema_id.to_bytes(4, "big") + buffer.getvalue()


@pytest.mark.parametrize("schema_id", sorted(EVOLUTIONS))
def test_records_of_evolved_writer_schemas_resolve_identically(schema_id: int) -> None:
    values = []
    for item in TrafficGenerator(TrafficProfile(malformed_share=0, feedback_share=0), seed=schema_id).items(
        600
    ):
        assert isinstance(item, OnFinishEvent)
        values.append((item.key.encode(), _written_with(schema_id, item)))
    engines = Engines()
    outputs = engines.run(_records(values), batch_size=100)
    engines.assert_identical(outputs)
    assert not [o for o in outputs["native"] if o.record_type is None]  # nothing dead-lettered
    if schema_id == 16:
        assert engines.handed_back == engines.records  # not planned natively: the reference reads them
    elif schema_id == 15:
        assert 0 < engines.handed_back < engines.records / 5  # only the unknown symbol
    else:
        assert engines.handed_back == 0


def test_the_call_carries_every_numeric_field_an_event_rule_may_name() -> None:
    """Event rules read any numeric field of the enriched event: the native Call must have them all."""
    import onfinish_native

    numeric = {
        name
        for name, info in EnrichedEvent.model_fields.items()
        if any(t in str(info.annotation) for t in ("int", "float")) and "bool" not in str(info.annotation)
    }
    assert numeric - set(dir(onfinish_native.Call)) == set()


# --- Fuzzing: hostile bytes never crash the core and always end as an output or a dead letter ------

_VALID = [
    b"\x00\x00\x00\x00\x01" + _body(item)
    for item in TrafficGenerator(TrafficProfile(malformed_share=0, feedback_share=0), seed=9).items(50)
    if isinstance(item, OnFinishEvent)
]


@st.composite
def _hostile_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(("random", "framed", "mutated", "truncated", "spliced")))
    if kind == "random":
        return draw(st.binary(max_size=400))
    if kind == "framed":
        schema_id = draw(st.sampled_from((1, 2, 11, 12, 13, 14, 15, 16, 99)))
        return b"\x00" + schema_id.to_bytes(4, "big") + draw(st.binary(max_size=400))
    valid = bytearray(draw(st.sampled_from(_VALID)))
    if kind == "truncated":
        return bytes(valid[: draw(st.integers(0, len(valid)))])
    if kind == "spliced":
        at = draw(st.integers(5, len(valid)))
        return bytes(valid[:at]) + draw(st.binary(max_size=40)) + bytes(valid[at:])
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(5, len(valid) - 1))
        valid[position] = draw(st.integers(0, 255))
    return bytes(valid)


@pytest.fixture(scope="module")
def fuzzed() -> Engines:
    return Engines(now=TRAFFIC_START + timedelta(minutes=1))


@settings(
    max_examples=scaled_examples(500),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(values=st.lists(_hostile_bytes(), min_size=1, max_size=8))
def test_fuzzed_bytes_never_crash_and_match_the_reference(fuzzed: Engines, values: list[bytes]) -> None:
    records = [
        RawRecord(b"fuzz", value, "onfinish.raw", 0, fuzzed.pipelines["python"].counts.records_in + i)
        for i, value in enumerate(values)
    ]
    outputs = fuzzed.run(records)
    fuzzed.assert_identical(outputs)
    enriched = [o for o in outputs["native"] if o.record_type is ENRICHED_EVENT]
    letters = [o for o in outputs["native"] if o.record_type is None]
    # Every record is accounted for: enriched, dead-lettered with a reason, or a duplicate of one.
    assert all(dict(o.headers).get("onfinish.reason") for o in letters)
    assert len(enriched) + len(letters) <= len(values)
