"""Windows: event-time minutes, idempotent by offset, snapshots that replace rather than add."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from onfinish.processors.windows import WINDOW, Watermark, WindowKey, WindowState, window_start
from onfinish.schemas.histogram_grid import quantile_from_counts
from onfinish.schemas.models import EnrichedEvent, RoutingStrategy, Status

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _enriched(i: int, **changes: Any) -> EnrichedEvent:
    finished = T0 + timedelta(seconds=i)
    values: dict[str, Any] = {
        "request_id": f"r{i}",
        "service": "s",
        "provider": "openai",
        "model_id": "gpt-4o",
        "started_at": finished - timedelta(milliseconds=100 + i),
        "finished_at": finished,
        "latency_ms": 100.0 + i,
        "ttft_ms": 50.0,
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "cached_tokens": 20,
        "cost_input_usd": 0.001,
        "cost_cached_input_usd": 0.0,
        "cost_output_usd": 0.002,
        "cost_reasoning_usd": 0.0,
        "cost_usd": 0.003,
        "cost_source": "catalog:test",
        "quality_score": 0.8,
        "processed_at": finished,
        "redaction_version": 1,
        "raw_partition": 0,
        "raw_offset": i,
    }
    values.update(changes)
    return EnrichedEvent(**values)


def test_windows_are_event_time_minutes():
    assert window_start(T0 + timedelta(seconds=59, microseconds=999_999)) == T0
    assert window_start(T0 + timedelta(minutes=1)) == T0 + WINDOW
    assert WindowKey.of(_enriched(61)).window_start == T0 + WINDOW


def test_aggregates_match_an_independent_computation():
    events = [
        _enriched(
            i,
            status=Status.error if i % 5 == 0 else Status.success,
            routing_strategy=RoutingStrategy.fallback if i % 7 == 0 else RoutingStrategy.primary,
            tool_call_count=i % 3,
            streamed=i % 2 == 0,
            cache_hit=i % 4 == 0,
        )
        for i in range(50)
    ]
    state = WindowState()
    for offset, event in enumerate(events):
        assert state.apply(event, offset)
    snapshot = state.snapshot(WindowKey.of(events[0]), 0, T0)
    assert snapshot.events == 50
    assert snapshot.errors == sum(e.status is not Status.success for e in events)
    assert snapshot.fallbacks == sum(e.routing_strategy is RoutingStrategy.fallback for e in events)
    assert snapshot.tool_use == sum(e.tool_call_count > 0 for e in events)
    assert snapshot.streamed == 25 and snapshot.cache_hits == 13
    assert abs(snapshot.cost_usd - 0.15) < 1e-12
    latencies = sorted(e.latency_ms for e in events)
    p95 = quantile_from_counts(_dense(snapshot.latency_buckets, snapshot.latency_counts), 0.95)
    assert p95 is not None and abs(p95 - latencies[47]) / latencies[47] <= 0.02
    # What window rules see is the snapshot without its bucket arrays.
    summary = state.summary(WindowKey.of(events[0]), 0)
    full = snapshot.model_dump()
    assert all(summary[name] == full[name] for name in summary)
    assert {n for n in full if n not in summary} == {
        *("window_end", "feature_id", "variant_id", "environment", "status", "emitted_at"),
        *("latency_buckets", "latency_counts", "ttft_buckets", "ttft_counts"),
    }


def _dense(indexes: list[int], counts: list[int]) -> list[int]:
    dense = [0] * 393
    for index, count in zip(indexes, counts, strict=True):
        dense[index] = count
    return dense


def test_replaying_offsets_changes_nothing():
    state = WindowState()
    events = [_enriched(i) for i in range(10)]
    for offset, event in enumerate(events):
        state.apply(event, offset)
    before = state.to_state()
    # A worker restored from the changelog re-reads its partition from the committed offset.
    assert not any(state.apply(event, offset) for offset, event in enumerate(events))
    assert state.to_state() == before


@given(st.lists(st.floats(min_value=0, max_value=100_000, allow_nan=False), min_size=1, max_size=60))
def test_state_survives_its_changelog_form(latencies: list[float]):
    state = WindowState()
    for offset, latency in enumerate(latencies):
        state.apply(_enriched(0, latency_ms=latency, ttft_ms=None), offset)
    restored = WindowState.from_state(json.loads(json.dumps(state.to_state())))
    key = WindowKey.of(_enriched(0))
    assert restored.snapshot(key, 3, T0) == state.snapshot(key, 3, T0)


def test_window_identity_is_deterministic_and_per_partition():
    key = WindowKey.of(_enriched(0))
    assert key.window_id(1) == WindowKey.of(_enriched(1)).window_id(1)
    assert key.window_id(1) != key.window_id(2)
    assert WindowKey.from_text(key.as_text()) == key


def test_the_watermark_closes_windows_after_the_allowed_lateness():
    watermark = Watermark(allowed_lateness=timedelta(minutes=2))
    assert not watermark.is_closed(T0)
    watermark.observe(T0 + timedelta(minutes=2, seconds=59))
    assert not watermark.is_closed(T0)
    watermark.observe(T0 + timedelta(minutes=3))
    assert watermark.is_closed(T0) and not watermark.is_closed(T0 + WINDOW)
    watermark.observe(T0)  # an old event does not move it back
    assert watermark.is_closed(T0)
