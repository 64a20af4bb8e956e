"""The synthetic traffic model: reproducible, valid where it should be, broken where it should be."""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from onfinish.errors import ConfigurationError
from onfinish.loadgen.traffic import (
    MALFORMED_DEFECTS,
    Item,
    Malformed,
    TrafficGenerator,
    TrafficProfile,
)
from onfinish.schemas.models import Feedback, OnFinishEvent, RoutingStrategy, Status

SAMPLE = 10_000  # each share asserted within at least 3.5 standard errors of its profile value


def _comparable(item: Item) -> Any:
    if isinstance(item, Malformed):
        return item
    return item.model_dump(mode="json")


def _events(items: list[Item]) -> list[OnFinishEvent]:
    return [item for item in items if isinstance(item, OnFinishEvent)]


def _timestamp(item: OnFinishEvent | Feedback) -> datetime:
    return item.finished_at if isinstance(item, OnFinishEvent) else item.at


def _luhn_valid(number: str) -> bool:
    digits = [int(d) for d in reversed(number)]
    total = sum(digits[0::2]) + sum(sum(divmod(2 * d, 10)) for d in digits[1::2])
    return total % 10 == 0


def _iban_valid(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


@pytest.fixture(scope="module")
def generated() -> tuple[TrafficGenerator, list[Item]]:
    generator = TrafficGenerator(TrafficProfile(), seed=42)
    return generator, list(generator.items(SAMPLE))


@pytest.fixture(scope="module")
def items(generated: tuple[TrafficGenerator, list[Item]]) -> list[Item]:
    return generated[1]


def test_the_same_seed_gives_the_same_traffic():
    first = TrafficGenerator(TrafficProfile(), seed=7)
    second = TrafficGenerator(TrafficProfile(), seed=7)
    assert [_comparable(i) for i in first.items(1_000)] == [_comparable(i) for i in second.items(1_000)]
    assert first.planted_pii == second.planted_pii


def test_another_seed_gives_other_traffic():
    first = [_comparable(i) for i in TrafficGenerator(TrafficProfile(), seed=7).items(200)]
    second = [_comparable(i) for i in TrafficGenerator(TrafficProfile(), seed=8).items(200)]
    assert first != second
    ids = {item["request_id"] for item in first if isinstance(item, dict)}
    assert ids.isdisjoint(item["request_id"] for item in second if isinstance(item, dict))


def test_items_continue_where_the_last_call_stopped():
    in_batches = TrafficGenerator(TrafficProfile(), seed=3)
    at_once = TrafficGenerator(TrafficProfile(), seed=3)
    batched = [*in_batches.items(400), *in_batches.items(600)]
    assert [_comparable(i) for i in batched] == [_comparable(i) for i in at_once.items(1_000)]


def test_item_shares_follow_the_profile(items):
    kinds = Counter(type(item) for item in items)
    assert kinds[Malformed] / SAMPLE == pytest.approx(0.005, abs=0.0025)
    assert kinds[Feedback] / SAMPLE == pytest.approx(0.05, abs=0.01)
    assert kinds[OnFinishEvent] / SAMPLE == pytest.approx(0.945, abs=0.01)


def test_event_shares_follow_the_profile(generated):
    generator, items = generated
    events = _events(items)
    count = len(events)
    assert sum(e.status is not Status.success for e in events) / count == pytest.approx(0.04, abs=0.01)
    assert sum(e.streamed for e in events) / count == pytest.approx(0.6, abs=0.02)
    routes = Counter(e.routing_strategy for e in events)
    assert routes[RoutingStrategy.cache] / count == pytest.approx(0.1, abs=0.015)
    assert routes[RoutingStrategy.fallback] / count == pytest.approx(0.05, abs=0.01)
    # Malformed records may be built from events too, but never carry PII.
    assert len(generator.planted_pii) / count == pytest.approx(0.02, abs=0.006)


def test_another_profile_changes_the_shares():
    profile = TrafficProfile(error_share=0.3, cache_share=0.0, streaming_share=0.0, feedback_share=0.0)
    items = list(TrafficGenerator(profile, seed=1).items(5_000))
    events = _events(items)
    assert not any(isinstance(item, Feedback) for item in items)
    assert all(e.routing_strategy is not RoutingStrategy.cache for e in events)
    assert not any(e.streamed or e.ttft_ms is not None or e.stream_chunks for e in events)
    assert sum(e.status is not Status.success for e in events) / len(events) == pytest.approx(0.3, abs=0.03)


def test_every_event_is_valid_and_consistent(items):
    events = _events(items)
    for event in events:
        assert OnFinishEvent.model_validate(event.model_dump()) == event
        assert event.finished_at - event.started_at == timedelta(milliseconds=event.latency_ms)
        assert event.latency_ms > 0
        assert event.cached_tokens <= event.prompt_tokens
        if event.ttft_ms is not None:
            assert event.streamed and event.ttft_ms <= event.latency_ms
        if not event.streamed:
            assert event.ttft_ms is None and event.stream_chunks == 0
        if event.reasoning_tokens:
            assert event.model_id == "o3-mini"
            assert event.reasoning_tokens <= event.completion_tokens
        if event.status is Status.success:
            assert event.finish_reason in {"stop", "length", "tool_calls"}
            assert event.error_type is None and event.error_message is None
            assert (event.tool_call_count > 0) == (event.finish_reason == "tool_calls")
        else:
            assert event.finish_reason is None and event.tool_call_count == 0
            assert event.error_type and event.error_message
        if event.routing_strategy is RoutingStrategy.cache:
            assert event.cached_tokens == event.prompt_tokens
        if event.routing_strategy is RoutingStrategy.fallback:
            assert event.retry_count >= 1 and event.attributes["fallback_from"] != event.model_id


def test_errors_look_like_provider_errors(items):
    failed = [e for e in _events(items) if e.status is not Status.success]
    assert {e.error_type for e in failed} >= {"rate_limit", "server_error", "timeout", "content_filter"}
    assert {e.http_status for e in failed} >= {429, 500, 503, 408}
    assert {e.status for e in failed} == {Status.error, Status.timeout, Status.cancelled}
    assert all(e.http_status == 429 for e in failed if e.error_type == "rate_limit")
    assert all(e.latency_ms >= 25_000 for e in failed if e.status is Status.timeout)
    assert any(e.retry_count > 0 for e in failed)


def test_latency_and_tokens_are_heavy_tailed_and_plausible(items):
    answered = [
        e
        for e in _events(items)
        if e.status is Status.success and e.routing_strategy is not RoutingStrategy.cache
    ]
    latencies = sorted(e.latency_ms for e in answered)
    median = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99)]
    assert 300 < median < 10_000
    assert p99 > 4 * median
    prompts = sorted(e.prompt_tokens for e in answered)
    assert prompts[len(prompts) // 10] > 100 and prompts[len(prompts) // 2] < 10_000
    assert statistics.median(e.completion_tokens for e in answered) < statistics.median(prompts)
    cache_hits = [e for e in _events(items) if e.routing_strategy is RoutingStrategy.cache]
    assert statistics.median(e.latency_ms for e in cache_hits) < 100
    for event in answered:
        if event.streamed:
            visible = event.completion_tokens - event.reasoning_tokens
            assert visible / 8 - 1 <= event.stream_chunks <= visible / 3 + 1


def test_feedback_refers_to_requests_already_emitted(items):
    finished: dict[str, datetime] = {}
    feedback = 0
    for item in items:
        if isinstance(item, OnFinishEvent):
            finished[item.request_id] = item.finished_at
        elif isinstance(item, Feedback):
            feedback += 1
            assert item.request_id in finished
            assert item.at >= finished[item.request_id]
            assert item.regenerated or item.edited or item.rating is not None
    assert feedback > 0


def test_malformed_items_cover_every_defect():
    profile = TrafficProfile(malformed_share=0.3)
    malformed = [i for i in TrafficGenerator(profile, seed=5).items(2_000) if isinstance(i, Malformed)]
    assert {m.defect for m in malformed} == set(MALFORMED_DEFECTS)
    for record in malformed:
        assert record.key.startswith(b"sess-")
        if record.defect == "random_bytes":
            assert record.value[0] != 0
        elif record.defect == "wrong_magic_byte":
            assert record.value[0] == 1 and len(record.value) > 5
        elif record.defect == "unknown_schema_id":
            assert record.value[:5] == b"\x00" + (2**31 - 7).to_bytes(4, "big")
        elif record.defect == "truncated_avro":
            assert record.value[:5] == b"\x00\x00\x00\x00\x01" and len(record.value) < 16
        else:
            payload = json.loads(record.value)
            with pytest.raises(ValidationError):
                OnFinishEvent.model_validate(payload)
            if record.defect == "negative_latency":
                assert payload["latency_ms"] < 0
            else:
                assert datetime.fromisoformat(payload["finished_at"]) < datetime.fromisoformat(
                    payload["started_at"]
                )


def test_planted_pii_appears_in_the_events(generated):
    generator, items = generated
    planted = generator.planted_pii
    assert planted
    free_text = "\n".join(
        text for event in _events(items) for text in [event.error_message or "", *event.attributes.values()]
    )
    for pii in planted:
        assert pii in free_text
    assert any(re.fullmatch(r"sk-[A-Za-z0-9]{40}", pii) for pii in planted)
    assert any(pii.startswith("Bearer ") for pii in planted)
    assert any(re.fullmatch(r"[\w.]+@[\w.]+", pii) for pii in planted)
    cards = [pii for pii in planted if re.fullmatch(r"\d{15,16}", pii)]
    ibans = [pii for pii in planted if re.fullmatch(r"[A-Z]{2}\d{14,20}", pii)]
    assert cards and all(_luhn_valid(card) for card in cards)
    assert ibans and all(_iban_valid(iban) for iban in ibans)
    for event in _events(items):
        assert all(len(value) <= 1024 for value in event.attributes.values())


def test_planted_pii_is_a_copy():
    generator = TrafficGenerator(TrafficProfile(pii_share=1.0), seed=2)
    list(generator.items(10))
    generator.planted_pii.clear()
    assert generator.planted_pii


def test_timestamps_are_utc_and_follow_the_simulated_clock(items):
    stamped = [item for item in items if not isinstance(item, Malformed)]
    times = [_timestamp(item) for item in stamped]
    for event in _events(items):
        assert event.started_at.utcoffset() == timedelta(0) and event.finished_at.tzinfo is UTC
    assert all(t.tzinfo is UTC for t in times)
    assert times == sorted(times)
    assert times[0] >= TrafficProfile().start
    mean_gap = (times[-1] - times[0]) / len(items)
    assert timedelta(milliseconds=3) < mean_gap < timedelta(milliseconds=7)


def test_the_clock_starts_at_the_profile_start():
    start = datetime(2030, 1, 1, tzinfo=UTC)
    first = next(TrafficGenerator(TrafficProfile(start=start), seed=1).items(1))
    assert isinstance(first, OnFinishEvent)
    assert start <= first.finished_at < start + timedelta(seconds=1)


def test_traffic_spans_providers_models_and_sessions(items):
    events = _events(items)
    assert {e.provider for e in events} >= {"openai", "anthropic", "google", "aws.bedrock"}
    models = Counter(e.model_id for e in events)
    assert len(models) >= 6 and "o3-mini" in models
    assert all(e.model_version for e in events)
    assert {e.service for e in events} == {"chat-api", "search-api", "support-bot"}
    assert {e.variant_id for e in events} == {"A", "B"}
    users_of_session: dict[str, set[str | None]] = {}
    for event in events:
        assert event.session_id is not None and re.fullmatch(r"sess-\d+", event.session_id)
        assert event.user_id is not None and re.fullmatch(r"user-\d+", event.user_id)
        users_of_session.setdefault(event.session_id, set()).add(event.user_id)
    assert all(len(users) == 1 for users in users_of_session.values())
    turns = Counter(e.session_id for e in events)
    assert max(turns.values()) >= 5


def test_conversations_grow_their_prompts(items):
    by_session: dict[str, list[int]] = {}
    for event in _events(items):
        if event.status is Status.success and event.session_id is not None:
            by_session.setdefault(event.session_id, []).append(event.prompt_tokens)
    long_sessions = [prompts for prompts in by_session.values() if len(prompts) >= 4]
    assert long_sessions
    grew = sum(prompts[-1] > prompts[0] for prompts in long_sessions)
    assert grew / len(long_sessions) > 0.8


@pytest.mark.parametrize(
    "changes",
    [{"sessions": 0}, {"pii_share": 1.5}, {"error_share": -0.1}, {"cache_share": 0.6, "fallback_share": 0.5}],
)
def test_a_profile_refuses_impossible_values(changes):
    with pytest.raises(ConfigurationError):
        TrafficProfile(**changes)


def test_a_profile_refuses_a_naive_start():
    with pytest.raises(ConfigurationError):
        TrafficProfile(start=datetime(2026, 11, 23, 12, 0))


def test_count_must_not_be_negative():
    with pytest.raises(ValueError, match="negative"):
        TrafficGenerator(TrafficProfile(), seed=1).items(-1)


def test_predrawn_traffic_is_the_traffic_drawn_as_it_is_sent():
    from onfinish.loadgen.load import LoadPlan, draw

    plan = LoadPlan(rate=500, duration_s=5, seed=11, profile=TrafficProfile(sessions=20, pii_share=0.1))
    told: list[tuple[int, int]] = []
    predrawn_generator, predrawn = draw(dataclasses.replace(plan, predraw=True), lambda *at: told.append(at))
    assert told == [(1000, 2500), (2000, 2500), (2500, 2500)]  # every thousand, and the last
    # Drawn already: the generator has planted its PII before anything is sent; and held in a list
    # that outlives the send (an exhausted iterator would free the items inside the timed send).
    assert predrawn_generator.planted_pii and isinstance(predrawn, list)
    lazy_generator, lazy = draw(plan)
    assert not lazy_generator.planted_pii
    assert [_comparable(i) for i in predrawn] == [_comparable(i) for i in lazy]
    assert predrawn_generator.planted_pii == lazy_generator.planted_pii


def test_too_much_traffic_to_predraw_is_refused_before_anything_is_drawn():
    from onfinish.errors import OnfinishError
    from onfinish.loadgen.load import PREDRAW_MAX_ITEMS, LoadPlan, draw

    with pytest.raises(OnfinishError, match="too many to draw beforehand"):
        draw(LoadPlan(rate=PREDRAW_MAX_ITEMS, duration_s=1.01, predraw=True))
