"""The whole path over in-memory state: loadgen traffic in, exact aggregates out, even when
records arrive twice or a worker crashes and replays its partition."""

from __future__ import annotations

import io
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast
from uuid import uuid4

import fastavro
import pytest

from onfinish.loadgen.traffic import TRAFFIC_START, Malformed, TrafficGenerator, TrafficProfile
from onfinish.processors.alerts import RuleBook
from onfinish.processors.calls import EnrichedCall
from onfinish.processors.decoding import Decoder, TimeBounds
from onfinish.processors.engines import NativeCore
from onfinish.processors.enrichment import Enricher
from onfinish.processors.pipeline import STAGES, DictStore, Output, Pipeline, RawRecord
from onfinish.processors.pricing import PriceCatalog
from onfinish.processors.quality import QualityWeights
from onfinish.processors.redaction import PatternSet, pseudonymise_identifier
from onfinish.processors.sessions import SessionState
from onfinish.processors.windows import WindowKey
from onfinish.schemas.contract import (
    ALERT,
    ENRICHED_EVENT,
    FEEDBACK,
    ONFINISH_EVENT,
    QUALITY_UPDATE,
    SESSION_SNAPSHOT,
    WINDOW_SNAPSHOT,
    RecordType,
)
from onfinish.schemas.deadletter import DeadLetter
from onfinish.schemas.models import Feedback, OnFinishEvent, Status
from onfinish.schemas.wire import RegistryUnavailable, WriterSchema

SCHEMA_IDS = {ONFINISH_EVENT.full_name: 1, FEEDBACK.full_name: 2}
WRITERS = {1: WriterSchema(ONFINISH_EVENT, ONFINISH_EVENT.parsed), 2: WriterSchema(FEEDBACK, FEEDBACK.parsed)}
NOW = TRAFFIC_START + timedelta(hours=1)
ENRICHER = Enricher(PriceCatalog.load(), QualityWeights(), PatternSet.load(), frozenset({"tenant_id"}), b"k")
RULES = RuleBook.load()


FRAME = b"\x00\x00\x00\x00\x09"


def _encode(record_type: RecordType, datum: dict[str, Any]) -> bytes:
    # Every output must be a valid record of its contract model, as the worker sends it unvalidated.
    record_type.model.model_validate(datum)
    return FRAME + record_type.encode(datum)


def _pipeline(
    sessions: dict[str, Any] | None = None,
    windows: dict[str, Any] | None = None,
    engine: str = "python",
    frame: Callable[[RecordType], bytes] = lambda record_type: FRAME,
) -> Pipeline:
    """A pipeline whose state is restored from, and written to, the `sessions` and `windows`
    changelogs (a new worker when they hold something), on the Python or the native engine."""
    sessions = {} if sessions is None else sessions
    windows = {} if windows is None else windows
    decoder = Decoder(WRITERS.get, bounds=TimeBounds(max_past=timedelta(days=2)), clock=lambda: NOW)
    return Pipeline(
        decoder,
        ENRICHER,
        RULES,
        _encode,
        DictStore(dict(sessions), changelog=sessions),
        DictStore(dict(windows), changelog=windows),
        allowed_lateness=timedelta(minutes=2),
        clock=lambda: NOW,
        native=NativeCore(decoder, ENRICHER, frame) if engine == "native" else None,
    )


def _raw(seed: int, count: int, **profile: Any) -> tuple[list[tuple[bytes, bytes]], list[Any]]:
    items = list(TrafficGenerator(TrafficProfile(**profile), seed=seed).items(count))
    raw = []
    for item in items:
        if isinstance(item, Malformed):
            raw.append((item.key, item.value))
        else:
            record_type = ONFINISH_EVENT if isinstance(item, OnFinishEvent) else FEEDBACK
            value = b"\x00" + SCHEMA_IDS[record_type.full_name].to_bytes(4, "big")
            raw.append((item.key.encode(), value + record_type.encode(record_type.to_datum(item))))
    return raw, items


def _run(
    pipeline: Pipeline, raw: list[tuple[bytes, bytes]], offsets: range | None = None, batch_size: int = 1
) -> list[Output]:
    """Feed the records at `offsets` in batches of `batch_size`, as a worker's consumer batches."""
    outputs: list[Output] = []
    offsets = offsets if offsets is not None else range(len(raw))
    for start in range(0, len(offsets), batch_size):
        batch = pipeline.batch()
        for offset in offsets[start : start + batch_size]:
            key, value = raw[offset]
            batch.add(RawRecord(key, value, "onfinish.raw", 0, offset))
        outputs += batch.finish()
    return outputs + pipeline.dirty_snapshots()


def _decode(output: Output) -> dict[str, Any]:
    assert output.record_type is not None and output.value is not None
    body = io.BytesIO(output.value[5:])
    datum = fastavro.schemaless_reader(body, output.record_type.parsed, output.record_type.parsed)
    assert isinstance(datum, dict)
    return datum


def _window_totals(outputs: list[Output]) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    """Latest snapshot per window id, then summed per minute and model: what ClickHouse will show."""
    latest: dict[str, dict[str, Any]] = {}
    for output in outputs:
        if output.record_type is not None and output.record_type.model.__name__ == "WindowSnapshot":
            snapshot = _decode(output)
            if (
                snapshot["window_id"] not in latest
                or snapshot["version"] >= latest[snapshot["window_id"]]["version"]
            ):
                latest[snapshot["window_id"]] = snapshot
    totals: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
    for snapshot in latest.values():
        row = totals[(snapshot["window_start"], snapshot["model_id"])]
        row[0] += snapshot["events"]
        row[1] += snapshot["errors"]
        row[2] += snapshot["prompt_tokens"]
    return {k: tuple(v) for k, v in totals.items()}  # type: ignore[misc]


def _expected_totals(items: list[Any]) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    totals: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
    for item in items:
        if isinstance(item, OnFinishEvent):
            minute = item.finished_at.replace(second=0, microsecond=0)
            row = totals[(minute, item.model_id)]
            row[0] += 1
            row[1] += item.status is not Status.success
            row[2] += item.prompt_tokens
    return {k: tuple(v) for k, v in totals.items()}  # type: ignore[misc]


BATCH_SIZES = pytest.mark.parametrize("batch_size", [1, 7, 500])
# Both engines of the per-event path (processors/engines.py) must pass every scenario.
ENGINES = pytest.mark.parametrize("engine", ["python", "native"])
# Traffic sizes: a few hundred records already cover every kind of item, malformed ones among them,
# and many windows and sessions; with one record per batch each record costs a batch's snapshots,
# so sizes in the thousands made these tests take a minute and a half together.


@ENGINES
@BATCH_SIZES
def test_traffic_in_exact_aggregates_and_dead_letters_out(batch_size: int, engine: str):
    raw, items = _raw(21, 1000, malformed_share=0.02)
    pipeline = _pipeline(engine=engine)
    outputs = _run(pipeline, raw, batch_size=batch_size)
    enriched = [o for o in outputs if o.record_type is ENRICHED_EVENT]
    assert len(enriched) == sum(isinstance(i, OnFinishEvent) for i in items)
    assert _window_totals(outputs) == _expected_totals(items)
    letters = [DeadLetter.from_headers(o.key, o.value, o.headers) for o in outputs if o.record_type is None]
    assert len(letters) == sum(isinstance(i, Malformed) for i in items) > 0
    assert Counter(letter.reason.value for letter in letters) == Counter(pipeline.counts.dead_lettered)
    assert all(letter.source_topic == "onfinish.raw" and letter.value for letter in letters)
    assert pipeline.counts.feedback == sum(isinstance(i, Feedback) for i in items)


@ENGINES
@BATCH_SIZES
def test_every_record_delivered_twice_changes_no_aggregate(batch_size: int, engine: str):
    raw, items = _raw(22, 600, malformed_share=0)
    doubled = [record for record in raw for _ in range(2)]  # each event again at the next offset
    pipeline = _pipeline(engine=engine)
    outputs = _run(pipeline, doubled, batch_size=batch_size)
    assert pipeline.counts.duplicates == sum(isinstance(i, OnFinishEvent) for i in items)
    assert _window_totals(outputs) == _expected_totals(items)
    sessions = {}
    for output in outputs:
        if output.record_type is SESSION_SNAPSHOT:
            snapshot = _decode(output)
            sessions[snapshot["session_id"]] = snapshot
    assert sum(s["turns"] for s in sessions.values()) == sum(isinstance(i, OnFinishEvent) for i in items)


@ENGINES
@BATCH_SIZES
def test_a_crash_and_replay_of_the_partition_counts_nothing_twice(batch_size: int, engine: str):
    raw, items = _raw(23, 800, malformed_share=0)
    sessions: dict[str, Any] = {}
    windows: dict[str, Any] = {}
    first = _pipeline(sessions, windows, engine)
    outputs = _run(first, raw, range(0, 520), batch_size)
    # The state a new worker restores from the changelog, and the offset its group committed.
    restored = _pipeline(dict(sessions), dict(windows), engine)
    outputs += _run(restored, raw, range(360, len(raw)), batch_size)
    assert restored.counts.replayed > 0
    assert _window_totals(outputs) == _expected_totals(items)


@ENGINES
@BATCH_SIZES
def test_windows_closed_before_a_crash_stay_closed_when_their_events_are_replayed(
    batch_size: int, engine: str
):
    raw, items = _raw(24, 900, malformed_share=0, feedback_share=0)
    # Spread the events over 15 minutes so that windows close while the worker runs.
    spread = []
    for index, item in enumerate(items):
        finished = TRAFFIC_START + timedelta(seconds=index)
        item = item.model_copy(
            update={"finished_at": finished, "started_at": finished - timedelta(milliseconds=item.latency_ms)}
        )
        items[index] = item
        spread.append(
            (
                raw[index][0],
                b"\x00" + (1).to_bytes(4, "big") + ONFINISH_EVENT.encode(ONFINISH_EVENT.to_datum(item)),
            )
        )
    sessions: dict[str, Any] = {}
    windows: dict[str, Any] = {}
    first = _pipeline(sessions, windows, engine)
    outputs = _run(first, spread, range(0, 600), batch_size)
    restored = _pipeline(dict(sessions), dict(windows), engine)
    outputs += _run(
        restored, spread, range(100, len(spread)), batch_size
    )  # replays windows first closed long ago
    assert _window_totals(outputs) == _expected_totals(items)


@ENGINES
def test_a_registry_outage_mid_batch_loses_nothing_and_counts_nothing_twice(engine: str):
    """Encoding fails now and then (the registry is away); the worker retries the same call."""
    raw, items = _raw(25, 600, malformed_share=0)
    calls = [0]

    def away_now_and_then() -> None:
        # Fails every 53rd call (every 7th for the native engine's prefix, asked once a batch), in
        # the middle of batches and of their finish.
        calls[0] += 1
        if calls[0] % 53 == 0:
            raise RegistryUnavailable("registry away")

    def flaky(record_type: RecordType, datum: dict[str, Any]) -> bytes:
        away_now_and_then()
        return _encode(record_type, datum)

    frames = [0]

    def flaky_frame(record_type: RecordType) -> bytes:
        frames[0] += 1
        if frames[0] % 7 == 0:
            raise RegistryUnavailable("registry away")
        return FRAME

    pipeline = _pipeline(engine=engine, frame=flaky_frame)
    pipeline.encode = flaky
    outputs: list[Output] = []
    failures = 0

    def retried(step: Any) -> Any:
        nonlocal failures
        while True:
            try:
                return step()
            except RegistryUnavailable:
                failures += 1

    for start in range(0, len(raw), 20):
        batch = pipeline.batch()
        for offset in range(start, min(start + 20, len(raw))):
            record = RawRecord(raw[offset][0], raw[offset][1], "onfinish.raw", 0, offset)
            retried(lambda: batch.add(record))  # noqa: B023 - called at once
        outputs += retried(batch.finish)
        outputs += retried(pipeline.dirty_snapshots)
    assert failures > 10
    assert pipeline.counts.records_in == len(raw), "a retried record is read once"
    assert len([o for o in outputs if o.record_type is ENRICHED_EVENT]) == sum(
        isinstance(i, OnFinishEvent) for i in items
    )
    assert _window_totals(outputs) == _expected_totals(items)


def test_feedback_after_its_event_updates_the_events_score_once():
    event = next(
        i for i in TrafficGenerator(TrafficProfile(), seed=26).items(50) if isinstance(i, OnFinishEvent)
    )
    event = event.model_copy(
        update={"status": Status.success, "regenerated": False, "edited": False, "rating": None}
    )
    feedback = Feedback(
        request_id=event.request_id,
        session_id=event.session_id,
        regenerated=True,
        rating=-1,
        at=event.finished_at + timedelta(seconds=5),
    )
    raw = [
        (
            event.key.encode(),
            b"\x00" + (1).to_bytes(4, "big") + ONFINISH_EVENT.encode(ONFINISH_EVENT.to_datum(event)),
        ),
        (
            feedback.key.encode(),
            b"\x00" + (2).to_bytes(4, "big") + FEEDBACK.encode(FEEDBACK.to_datum(feedback)),
        ),
    ]
    sessions: dict[str, Any] = {}
    pipeline = _pipeline(sessions)
    outputs = _run(pipeline, raw)
    (stored,) = [_decode(o) for o in outputs if o.record_type is ENRICHED_EVENT]
    (update,) = [_decode(o) for o in outputs if o.record_type is QUALITY_UPDATE]
    assert update["request_id"] == event.request_id and update["version"] == 1
    assert (update["regenerated"], update["rating"]) == (True, -1)
    assert update["quality_score"] < stored["quality_score"]
    session = [_decode(o) for o in outputs if o.record_type is SESSION_SNAPSHOT][-1]
    assert session["quality_mean"] == update["quality_score"] and session["regenerations"] == 1
    # The changelog holds the behaviour as the feedback changed it (a restored worker scores from it).
    restored = SessionState.from_state(json.loads(json.dumps(sessions[event.session_id or event.request_id])))
    index = restored.call_index(event.request_id)
    assert index is not None
    persisted = restored.call(index)
    assert (persisted.regenerated, persisted.rating) == (True, -1)
    # The same feedback replayed by a worker that restored the session: no second update.
    again = _run(_pipeline(dict(sessions)), raw, range(1, 2))
    assert not [o for o in again if o.record_type is QUALITY_UPDATE]


# PII planted in every identifier and dimension of a session's two calls and a Feedback, as written
# and percent-encoded, and in free text percent-encoded: (field, value).
PLANTED_IDS = {
    "request_id": "req-1 card 4111%201111%201111%201111",
    "session_id": "alice@example.com",
    "trace_id": "trace-bob@example.com",
    "span_id": "span +1 415 555 0100",
    "service": "svc-carol%40example.com",
    "environment": "env 123-45-6789",
    "region": "region-192.168.1.20",
    "deployment_id": "deploy=DE89370400440532013000",
    "feature_id": "feature-dave%2540example.com",
    "variant_id": "variant sk-" + "v" * 40,
    "prompt_template_id": "tpl %2B49%20151%2012345678",
    "provider": "provider erin@example.com",
    "model_id": "model frank@example.com",
    "model_version": "v grace%40example.com",
    "prompt_hash": "hash=5500000000000004",
    "sdk_name": "sdk heidi@example.com",
    "sdk_version": "1.0 +1 415 555 0199",
}
# What must appear nowhere downstream: the planted values and the PII in them, decoded.
PLANTED_PII = [
    *PLANTED_IDS.values(),
    "4111 1111 1111 1111",
    "carol@example.com",
    "dave@example.com",
    "dave%40example.com",
    "+49 151 12345678",
    "grace@example.com",
    "ivan@example.com",
    "ivan%40example.com",
    "+1 415 555 0142",
    "%2B1%20415%20555%200142",
    "judy@example.com",
]


def _pii_session() -> list[tuple[bytes, bytes]]:
    base = next(
        i for i in TrafficGenerator(TrafficProfile(), seed=27).items(50) if isinstance(i, OnFinishEvent)
    )
    first = base.model_copy(
        update={
            **PLANTED_IDS,
            "status": Status.success,
            "regenerated": False,
            "edited": False,
            "rating": None,
            "ttft_ms": min(base.latency_ms, 1600.0),
            "latency_ms": max(base.latency_ms, 1600.0),
            "error_message": "GET https://api.example.com/v1/users?email=ivan%40example.com&page=2 -> 404",
            "attributes": {"tenant_id": "https://shop.example.com/?phone=%2B1%20415%20555%200142"},
            "safety_flags": ["reported-by judy%40example.com"],
        }
    )
    second = first.model_copy(
        update={
            "event_id": uuid4(),
            "request_id": "req-2 for alice%40example.com",
            "finished_at": first.finished_at + timedelta(seconds=5),
            "started_at": first.started_at + timedelta(seconds=5),
        }
    )
    feedback = Feedback(
        request_id=first.request_id,
        session_id=first.session_id,
        regenerated=True,
        rating=-1,
        at=second.finished_at + timedelta(seconds=5),
    )
    return [
        (
            item.key.encode(),
            b"\x00" + (schema_id).to_bytes(4, "big") + record_type.encode(record_type.to_datum(item)),
        )
        for item, record_type, schema_id in (
            (first, ONFINISH_EVENT, 1),
            (second, ONFINISH_EVENT, 1),
            (feedback, FEEDBACK, 2),
        )
    ]


@ENGINES
def test_pii_in_identifiers_is_pseudonymised_in_every_output_and_state(engine: str):
    sessions: dict[str, Any] = {}
    windows: dict[str, Any] = {}
    pipeline = _pipeline(sessions, windows, engine=engine)
    outputs = _run(pipeline, _pii_session(), batch_size=3)
    assert not [o for o in outputs if o.record_type is None], "nothing is dead-lettered"
    if pipeline.native is not None:
        assert pipeline.native.handed_back == 0  # the core cleans identifiers itself

    def pseudonym(field: str) -> str:
        return pseudonymise_identifier(PLANTED_IDS[field], ENRICHER.pseudonym_key)

    session_key = pseudonym("session_id")
    enriched = [_decode(o) for o in outputs if o.record_type is ENRICHED_EVENT]
    assert len(enriched) == 2
    for field in PLANTED_IDS:
        assert enriched[0][field] == pseudonym(field), field
    assert enriched[0]["error_message"] == "GET https://api.example.com/v1/users?email=<email>&page=2 -> 404"
    assert enriched[0]["attributes"] == {"tenant_id": "https://shop.example.com/?phone=<phone>"}
    assert enriched[0]["safety_flags"] == ["reported-by <email>"]
    assert enriched[1]["request_id"] == pseudonymise_identifier("req-2 for alice%40example.com", b"k")
    # One session still: its calls, snapshot and feedback meet under the pseudonymised key.
    assert {
        o.key for o in outputs if o.record_type in (ENRICHED_EVENT, SESSION_SNAPSHOT, QUALITY_UPDATE)
    } == {session_key.encode()}
    session = [_decode(o) for o in outputs if o.record_type is SESSION_SNAPSHOT][-1]
    assert (session["session_id"], session["turns"], session["regenerations"]) == (session_key, 2, 1)
    assert (session["service"], session["environment"]) == (pseudonym("service"), pseudonym("environment"))
    assert session["models"] == [pseudonym("model_id")]
    (update,) = [_decode(o) for o in outputs if o.record_type is QUALITY_UPDATE]
    assert (update["request_id"], update["session_id"]) == (pseudonym("request_id"), session_key)
    windows_out = [_decode(o) for o in outputs if o.record_type is WINDOW_SNAPSHOT]
    assert windows_out and all(
        (w["feature_id"], w["variant_id"], w["environment"], w["provider"], w["model_id"])
        == tuple(pseudonym(f) for f in ("feature_id", "variant_id", "environment", "provider", "model_id"))
        for w in windows_out
    )
    alerts = [_decode(o) for o in outputs if o.record_type is ALERT]
    assert {(a["rule"], a["subject"]) for a in alerts} >= {("ttft_high", pseudonym("request_id"))}

    published = b"\n".join((o.key or b"") + b"\n" + (o.value or b"") for o in outputs)
    stored = json.dumps([sessions, windows], default=str)
    for pii in PLANTED_PII:
        assert pii.encode() not in published, pii
        assert pii not in stored, pii


@ENGINES
def test_trace_context_ids_pass_as_they_are_and_other_spellings_are_identifiers(engine: str):
    # 16 decimal digits that pass Luhn: a card to the patterns, and a valid W3C span id.
    event = next(
        i for i in TrafficGenerator(TrafficProfile(), seed=28).items(50) if isinstance(i, OnFinishEvent)
    )
    event = event.model_copy(update={"span_id": "4111111111111111", "trace_id": "4111111111111111"})
    raw = [
        (
            event.key.encode(),
            b"\x00" + (1).to_bytes(4, "big") + ONFINISH_EVENT.encode(ONFINISH_EVENT.to_datum(event)),
        )
    ]
    (enriched,) = [_decode(o) for o in _run(_pipeline(engine=engine), raw) if o.record_type is ENRICHED_EVENT]
    assert enriched["span_id"] == "4111111111111111"
    assert enriched["trace_id"] == pseudonymise_identifier("4111111111111111", ENRICHER.pseudonym_key)


def test_a_batch_times_each_stage_and_counts_every_record_read():
    raw, items = _raw(seed=5, count=300, malformed_share=0.05, feedback_share=0.1)
    pipeline = _pipeline()
    began = time.perf_counter()
    batch = pipeline.batch()
    for offset, (key, value) in enumerate(raw):
        batch.add(RawRecord(key, value, "onfinish.raw", 0, offset))
    batch.finish()
    took = time.perf_counter() - began
    assert batch.records == pipeline.counts.records_in == len(raw)
    malformed = sum(isinstance(item, Malformed) for item in items)
    assert sum(pipeline.counts.dead_lettered.values()) == malformed > 0
    assert set(batch.seconds) == set(STAGES)
    assert all(seconds > 0 for seconds in batch.seconds.values()), batch.seconds
    # The stages share the batch's time: they never add up to more than the batch took.
    assert sum(batch.seconds.values()) <= took


@pytest.mark.parametrize("engine", ["python", "native"])
def test_a_session_over_closes_then_leaves_memory_and_its_changelog_and_stays_gone(engine: str):
    first, *others = [
        i for i in TrafficGenerator(TrafficProfile(), seed=31).items(400) if isinstance(i, OnFinishEvent)
    ]
    old = first.model_copy(
        update={"session_id": "s-old", "finished_at": NOW - timedelta(hours=1, minutes=30)}
    )
    old = old.model_copy(update={"started_at": old.finished_at - timedelta(seconds=2)})
    # Later traffic of other sessions moves the partition's event time 33 minutes on, then 40:
    # past the gap (30 min) and the lateness (2 min), then past the retention (2 min) too.
    later = [
        event.model_copy(
            update={
                "session_id": f"s-{minutes}",
                "started_at": old.finished_at + timedelta(minutes=minutes),
                "finished_at": old.finished_at + timedelta(minutes=minutes, seconds=1),
            }
        )
        for minutes, event in zip((33, 40), others, strict=False)
    ]

    def raw(event: OnFinishEvent) -> tuple[bytes, bytes]:
        return event.key.encode(), b"\x00" + (1).to_bytes(4, "big") + ONFINISH_EVENT.encode(
            ONFINISH_EVENT.to_datum(event)
        )

    sessions: dict[str, Any] = {}
    pipeline = _pipeline(sessions, engine=engine)
    records = [raw(old), raw(later[0])]
    outputs = _run(pipeline, records)
    snapshots = [_decode(o) for o in outputs if o.record_type is SESSION_SNAPSHOT]
    closing = [s for s in snapshots if s["session_id"] == "s-old" and s["closed"]]
    assert len(closing) == 1 and closing[0]["version"] == 1, "its last snapshot: closed, as of the batch"
    assert SessionState.from_state(sessions["s-old"]).closed, "closed, still kept for the retention"

    records.append(raw(later[1]))
    _run(pipeline, records, range(2, 3))
    assert "s-old" not in sessions and pipeline.session("s-old") is None, "gone from changelog and memory"
    assert "s-40" in sessions

    # A re-delivery of the old session's event (a new offset) opens nothing again, here or in a
    # worker restored from the changelog.
    records.append(raw(old))
    late_before = pipeline.counts.late
    again = _run(pipeline, records, range(3, 4))
    assert not [o for o in again if o.record_type is SESSION_SNAPSHOT and _decode(o)["session_id"] == "s-old"]
    assert "s-old" not in sessions and pipeline.counts.late == late_before + 1
    restored = _pipeline(sessions, engine=engine)
    again = _run(restored, records, range(3, 4))
    assert "s-old" not in sessions
    assert not [o for o in again if o.record_type is SESSION_SNAPSHOT and _decode(o)["session_id"] == "s-old"]


@pytest.mark.parametrize("engine", ["python", "native"])
def test_a_session_that_moved_on_is_closed_by_its_last_call_not_its_first(engine: str):
    first, second, *others = [
        i for i in TrafficGenerator(TrafficProfile(), seed=32).items(400) if isinstance(i, OnFinishEvent)
    ]
    start = NOW - timedelta(hours=2)

    def at(event: OnFinishEvent, session: str, minutes: int) -> tuple[bytes, bytes]:
        moved = event.model_copy(
            update={
                "session_id": session,
                "started_at": start + timedelta(minutes=minutes),
                "finished_at": start + timedelta(minutes=minutes, seconds=1),
            }
        )
        return moved.key.encode(), b"\x00" + (1).to_bytes(4, "big") + ONFINISH_EVENT.encode(
            ONFINISH_EVENT.to_datum(moved)
        )

    # s-moving calls at minute 0 and minute 20 (its index entry for minute 0 goes stale); other
    # traffic then passes minute 0 by the gap (30 min) and lateness (2 min), but not minute 20.
    records = [at(first, "s-moving", 0), at(second, "s-moving", 20), at(others[0], "s-other", 33)]
    sessions: dict[str, Any] = {}
    pipeline = _pipeline(sessions, engine=engine)
    outputs = _run(pipeline, records)
    closed = [
        s
        for s in (_decode(o) for o in outputs if o.record_type is SESSION_SNAPSHOT)
        if s["session_id"] == "s-moving" and s["closed"]
    ]
    assert not closed, "its last call was 13 minutes ago: not over"
    session = pipeline.session("s-moving")
    assert session is not None and not session.closed and session.turns == 2

    # Past its last call by gap and lateness: closed once, with both calls.
    records.append(at(others[1], "s-later", 53))
    outputs = _run(pipeline, records, range(3, 4))
    closed = [
        s
        for s in (_decode(o) for o in outputs if o.record_type is SESSION_SNAPSHOT)
        if s["session_id"] == "s-moving" and s["closed"]
    ]
    assert len(closed) == 1 and closed[0]["turns"] == 2


@dataclass
class _Dimensions:
    """What a window key reads of a call."""

    finished_at: datetime
    status: Status
    provider: str = "openai"
    model_id: str = "gpt-4o"
    feature_id: str | None = None
    variant_id: str | None = "b"
    environment: str = "production"


def test_a_calls_window_key_is_the_one_its_fields_make_whatever_its_time_zone():
    pipeline = _pipeline()
    base = datetime(2026, 11, 23, 12, 0, 59, 999_999, tzinfo=UTC)
    moments = [base, base + timedelta(microseconds=1), base + timedelta(seconds=61)]
    # The same instants with other offsets, one of them holding seconds (its local minute is not
    # the UTC minute): each lands in its UTC minute's window, under the same key text.
    moments += [m.astimezone(timezone(timedelta(hours=5, minutes=30))) for m in moments[:3]]
    moments += [m.astimezone(timezone(timedelta(seconds=30))) for m in moments[:3]]
    texts = set()
    for _ in range(2):  # built, then from the cache
        for moment in moments:
            for status in (Status.success, Status.error):
                call = cast(EnrichedCall, _Dimensions(moment, status))
                key, text = pipeline.window_key(call)
                assert key == WindowKey.of(call) and text == WindowKey.of(call).as_text()
                texts.add(text)
    assert len(texts) == 3 * 2  # three minutes, two statuses


@ENGINES
def test_a_bug_on_one_record_dead_letters_it_without_quoting_it_and_the_rest_go_on(engine, monkeypatch):
    raw, items = _raw(23, 300, malformed_share=0.0)
    pipeline = _pipeline(engine=engine)
    original = Pipeline.window_key
    calls = 0

    def window_key(self: Pipeline, call: EnrichedCall) -> tuple[WindowKey, str]:
        nonlocal calls
        calls += 1
        if calls == 10:  # a bug whose exception quotes the data it met, as KeyError does
            raise KeyError("alice@example.com")
        return original(self, call)

    monkeypatch.setattr(Pipeline, "window_key", window_key)
    outputs = _run(pipeline, raw, batch_size=50)
    letters = [DeadLetter.from_headers(o.key, o.value, o.headers) for o in outputs if o.record_type is None]
    assert [letter.reason.value for letter in letters] == ["processing_error"]
    assert "KeyError in window_key" in letters[0].message
    assert "alice" not in letters[0].message
    events = sum(isinstance(i, OnFinishEvent) for i in items)
    assert calls == events and pipeline.counts.processed == events - 1


@ENGINES
def test_dead_letters_leave_sealed_and_open_to_the_records_as_they_came(engine):
    raw, items = _raw(29, 400, malformed_share=0.05)
    # A call that breaks the contract (finished before it started), carrying PII as it came.
    call = next(item for item in items if isinstance(item, OnFinishEvent))
    event = call.model_copy(update={"user_id": "alice@example.com", "session_id": "sess-alice@example.com"})
    datum = ONFINISH_EVENT.to_datum(event)
    datum["finished_at"] = datum["started_at"] - timedelta(seconds=1)
    raw.append((b"sess-alice@example.com", FRAME[:1] + (1).to_bytes(4, "big") + ONFINISH_EVENT.encode(datum)))
    pipeline = _pipeline(engine=engine)
    outputs = _run(pipeline, raw, batch_size=50)
    letters = [o for o in outputs if o.record_type is None]
    assert len(letters) > 5
    for output in letters:
        letter = DeadLetter.from_headers(output.key, output.value, output.headers)
        assert (pipeline.seal.open(output.key), pipeline.seal.open(output.value)) == raw[letter.source_offset]
        assert b"alice" not in (output.key or b"") + (output.value or b"")
    assert raw[-1][0] in {pipeline.seal.open(o.key) for o in letters}, "the PII-carrying call was refused"
