"""Alert conditions: rates and percentiles over merged minutes against an independent computation,
the packaged defaults on normal and degraded traffic, and rule files refused with a clear reason."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onfinish.alerting.conditions import (
    ConditionBook,
    ConditionRule,
    SeriesMinute,
    judge,
    load_conditions,
    share_above,
)
from onfinish.errors import ConfigurationError
from onfinish.loadgen.traffic import Effect, TrafficGenerator, TrafficProfile
from onfinish.processors.histograms import Histogram
from onfinish.producers import OnFinishEvent
from onfinish.schemas.histogram_grid import DEFAULT_GRID, quantile_rank
from onfinish.schemas.models import RoutingStrategy, Status

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Call:
    """One call as the independent computation sees it: its raw values, no histogram."""

    minute: int
    model_id: str
    feature_id: str
    latency_ms: float
    ttft_ms: float | None
    failed: bool = False
    fallback: bool = False
    environment: str = "production"


def _minutes(calls: Iterable[Call]) -> list[SeriesMinute]:
    """What ClickHouse would return for these calls: one row per minute and finest series."""
    grouped: dict[tuple[int, str, str, str], list[Call]] = defaultdict(list)
    for call in calls:
        grouped[(call.minute, call.model_id, call.feature_id, call.environment)].append(call)
    rows = []
    for (minute, model, feature, environment), group in sorted(grouped.items()):
        latency, ttft = Histogram(), Histogram()
        for call in group:
            latency.add(call.latency_ms)
            if call.ttft_ms is not None:
                ttft.add(call.ttft_ms)
        rows.append(
            SeriesMinute(
                minute=T0 + timedelta(minutes=minute),
                provider="openai",
                model_id=model,
                feature_id=feature,
                environment=environment,
                calls=len(group),
                errors=sum(c.failed for c in group),
                fallbacks=sum(c.fallback for c in group),
                ttft_calls=ttft.count,
                latency_counts=latency.to_counts(),
                ttft_counts=ttft.to_counts(),
            )
        )
    return rows


def _rule(**overrides: object) -> ConditionRule:
    fields: dict[str, object] = {
        "name": "r",
        "metric": "error_rate",
        "threshold": 0.1,
        "window_minutes": 5,
        "min_calls": 1,
        "message": "{observed}",
    }
    fields.update(overrides)
    return ConditionRule.model_validate(fields)


def _book(*rules: ConditionRule) -> ConditionBook:
    return ConditionBook(version=1, rule=rules)


def _outside_the_threshold_bucket(value: float, above_ms: float) -> bool:
    """Whether `value` lies outside the one bucket that holds `above_ms` (where a call may be
    counted on either side of the threshold)."""
    index = DEFAULT_GRID.index(above_ms)
    return not DEFAULT_GRID.lower_bound(index) < value <= DEFAULT_GRID.upper_bound(index)


@given(
    values=st.lists(st.floats(min_value=1.0, max_value=100_000.0), min_size=1, max_size=300),
    above_ms=st.floats(min_value=10.0, max_value=50_000.0),
)
def test_share_above_is_the_share_of_values_above_the_threshold(values: list[float], above_ms: float):
    values = [v for v in values if _outside_the_threshold_bucket(v, above_ms)]
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    expected = sum(v > above_ms for v in values) / len(values) if values else None
    assert share_above(histogram.to_counts(), above_ms) == expected


@given(
    values=st.lists(st.floats(min_value=0.2, max_value=500_000.0), min_size=1, max_size=400),
    q=st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_a_percentile_condition_reads_the_value_of_its_rank_within_the_grids_accuracy(
    values: list[float], q: float
):
    calls = [Call(0, "gpt-4o", "chat", latency_ms=v, ttft_ms=v) for v in values]
    rule = _rule(metric="ttft_quantile", quantile=q, threshold=0.0)
    (judgement,) = judge(_book(rule), _minutes(calls), T0 + timedelta(minutes=1))
    exact = sorted(values)[quantile_rank(q, len(values)) - 1]
    assert judgement.value == pytest.approx(exact, rel=DEFAULT_GRID.relative_accuracy)
    assert judgement.calls == len(values)


def _calls(seed: int, minutes: int, per_minute: int) -> list[Call]:
    rng = random.Random(seed)
    calls = []
    for minute in range(minutes):
        for _ in range(per_minute):
            model = rng.choice(["gpt-4o", "claude-haiku-4"])
            latency = rng.lognormvariate(math.log(900), 0.6)
            ttft = (
                None
                if rng.random() < 0.3
                else rng.lognormvariate(math.log(700 if model == "gpt-4o" else 1200), 0.5)
            )
            calls.append(
                Call(
                    minute,
                    model,
                    rng.choice(["chat", "search"]),
                    latency,
                    ttft,
                    failed=rng.random() < (0.05 if minute < 6 else 0.3),
                    fallback=rng.random() < 0.1,
                    environment=rng.choice(["production", "staging"]),
                )
            )
    return calls


@pytest.mark.parametrize(
    "by", [("model_id",), ("model_id", "environment"), ("provider", "model_id", "feature_id", "environment")]
)
def test_rates_are_computed_over_the_window_merged_per_series(by: tuple[str, ...]):
    """Every rate of every series over minutes [T-5, T), from the raw calls."""
    calls = [
        c
        for c in _calls(seed=3, minutes=12, per_minute=120)
        if _outside_the_threshold_bucket(c.ttft_ms or 1, 1500.0)
        and _outside_the_threshold_bucket(c.latency_ms, 1500.0)
    ]
    rows = _minutes(calls)
    at = 10
    rules = [
        _rule(name="errors", metric="error_rate", by=by),
        _rule(name="fallbacks", metric="fallback_rate", by=by),
        _rule(name="slow_ttft", metric="ttft_share_above", above_ms=1500.0, by=by),
        _rule(name="slow", metric="latency_share_above", above_ms=1500.0, by=by),
    ]
    found = {(j.rule.name, j.series): j for j in judge(_book(*rules), rows, T0 + timedelta(minutes=at))}

    def series(call: Call) -> tuple[tuple[str, str], ...]:
        values = {
            "provider": "openai",
            "model_id": call.model_id,
            "feature_id": call.feature_id,
            "environment": call.environment,
        }
        return tuple((d, values[d]) for d in ("provider", "model_id", "feature_id", "environment") if d in by)

    window: dict[tuple[tuple[str, str], ...], list[Call]] = defaultdict(list)
    for call in calls:
        if at - 5 <= call.minute < at:
            window[series(call)].append(call)
    assert {key for _, key in found} == set(window)
    for key, group in window.items():
        timed = [c for c in group if c.ttft_ms is not None]
        expected = {
            "errors": sum(c.failed for c in group) / len(group),
            "fallbacks": sum(c.fallback for c in group) / len(group),
            "slow_ttft": sum(c.ttft_ms > 1500 for c in timed if c.ttft_ms is not None) / len(timed),
            "slow": sum(c.latency_ms > 1500 for c in group) / len(group),
        }
        for name, value in expected.items():
            assert found[(name, key)].value == pytest.approx(value, rel=1e-12), (name, key)
        assert found[("slow_ttft", key)].calls == len(timed) and found[("errors", key)].calls == len(group)


def test_a_condition_holds_only_above_its_threshold_and_with_enough_calls():
    calls = [Call(0, "gpt-4o", "chat", 100.0, 100.0, failed=i < 3) for i in range(10)]  # 30% failed
    at = T0 + timedelta(minutes=1)
    (held,) = judge(_book(_rule(threshold=0.2, min_calls=10)), _minutes(calls), at)
    assert held.holds and held.value == pytest.approx(0.3) and held.subject == "openai/gpt-4o/production"
    (clear,) = judge(_book(_rule(threshold=0.3, min_calls=10)), _minutes(calls), at)
    assert not clear.holds  # equal to the threshold is not above it
    assert judge(_book(_rule(threshold=0.2, min_calls=11)), _minutes(calls), at) == []


def test_only_and_except_narrow_the_series_judged():
    calls = [
        Call(0, model, "chat", 100.0, 100.0, failed=True) for model in ("gpt-4o", "o3-mini", "gpt-4o-mini")
    ]
    at = T0 + timedelta(minutes=1)
    judged = judge(_book(_rule(**{"except": {"model_id": ["o3-mini"]}})), _minutes(calls), at)
    assert sorted(j.labels["model_id"] for j in judged) == ["gpt-4o", "gpt-4o-mini"]
    judged = judge(_book(_rule(only={"model_id": ["o3-mini"]})), _minutes(calls), at)
    assert [j.labels["model_id"] for j in judged] == ["o3-mini"]


def test_minutes_outside_the_window_do_not_count():
    calls = [Call(m, "gpt-4o", "chat", 100.0, 100.0, failed=m in (0, 6)) for m in range(7) for _ in range(10)]
    (judgement,) = judge(_book(_rule(window_minutes=5)), _minutes(calls), T0 + timedelta(minutes=6))
    assert judgement.value == 0.0 and judgement.calls == 50  # minutes 1-5: minute 0 is out, 6 is not yet


def test_the_message_is_the_template_filled_in():
    rule = _rule(
        metric="ttft_share_above",
        above_ms=1500.0,
        message="{observed:.0%} of {calls} calls above {above_ms:.0f} ms in {window_minutes} min on {subject}",
    )
    calls = [Call(0, "gpt-4o", "chat", 3000.0, 2000.0 if i < 5 else 100.0) for i in range(20)]
    (judgement,) = judge(_book(rule), _minutes(calls), T0 + timedelta(minutes=1))
    assert judgement.message == "25% of 20 calls above 1500 ms in 5 min on openai/gpt-4o/production"


# --- the packaged defaults on loadgen's traffic ----------------------------------------------------


def _traffic_minutes(
    effects: tuple[Effect, ...] = (), minutes: int = 1, seed: int = 11
) -> list[SeriesMinute]:
    """`minutes` of loadgen's traffic model (about 11,000 calls a minute) as merged minutes: one is
    more calls than five minutes of a busy deployment, and a rule's window takes what it holds."""
    profile = TrafficProfile(start=T0, effects=effects, malformed_share=0.0, feedback_share=0.0)
    generator = TrafficGenerator(profile, seed)
    per_minute = 12_000
    calls = []
    for item in generator.items(per_minute * minutes):
        if not isinstance(item, OnFinishEvent):
            continue
        minute = int((item.finished_at - T0).total_seconds() // 60)
        if 0 <= minute < minutes:
            calls.append(
                Call(
                    minute,
                    item.model_id,
                    item.feature_id or "",
                    item.latency_ms,
                    item.ttft_ms,
                    failed=item.status is not Status.success,
                    fallback=item.routing_strategy is RoutingStrategy.fallback,
                    environment=item.environment,
                )
            )
    rows = _minutes(calls)
    return [
        SeriesMinute(
            r.minute, _PROVIDERS.get(r.model_id, "openai"), r.model_id, r.feature_id, r.environment,
            r.calls, r.errors, r.fallbacks, r.ttft_calls, r.latency_counts, r.ttft_counts,
        )
        for r in rows
    ]  # fmt: skip


_PROVIDERS = {
    "gpt-4o": "openai",
    "gpt-4o-mini": "openai",
    "o3-mini": "openai",
    "claude-sonnet-4": "anthropic",
    "claude-haiku-4": "anthropic",
    "gemini-2.5-pro": "google",
    "gemini-2.5-flash": "google",
    "llama-3.1-70b": "aws.bedrock",
}


def test_the_packaged_conditions_hold_for_nobody_on_normal_traffic():
    held = [j for j in judge(load_conditions(), _traffic_minutes(), T0 + timedelta(minutes=1)) if j.holds]
    assert held == []


def test_a_tripled_time_to_first_token_on_one_model_holds_for_that_model_only():
    slow = (Effect(match=(("model_id", "gpt-4o"),), latency_factor=3.0),)
    judged = judge(load_conditions(), _traffic_minutes(slow), T0 + timedelta(minutes=1))
    held = [(j.rule.name, j.subject) for j in judged if j.holds]
    assert held == [("ttft_slow_share", "openai/gpt-4o/production")]


# --- rule files --------------------------------------------------------------------------------------

RULE = 'version = 1\n\n[[rule]]\nname = "x"\nmetric = "error_rate"\nthreshold = 0.2\nmessage = "{observed}"\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (RULE.replace('metric = "error_rate"', 'metric = "ttft_share_above"'), "above_ms is required"),
        (
            RULE + "above_ms = 1500.0\n",
            "above_ms is required by ttft_share_above and latency_share_above, and only",
        ),
        (RULE.replace('metric = "error_rate"', 'metric = "ttft_quantile"'), "quantile is required"),
        (RULE.replace("threshold = 0.2", "threshold = 1.5"), "is a share between 0 and 1"),
        (RULE.replace('metric = "error_rate"', 'metric = "p95"'), "rule.0.metric"),
        (RULE + 'by = ["model_id", "region"]\n', "rule.0.by.1"),
        (RULE + "by = []\n", "at least one dimension"),
        (RULE + 'except = { user_id = ["u1"] }\n', "rule.0.except.user_id"),
        (RULE + "window_minutes = 0\n", "rule.0.window_minutes"),
        (RULE + "for_minutes = -1\n", "rule.0.for_minutes"),
        (RULE + "colour = 1\n", "Extra inputs are not permitted"),
        (RULE.replace('"{observed}"', '"{observed} over {callz}"'), "unknown placeholders ['callz']"),
        (RULE.replace('"{observed}"', '"{observed:d}"'), "does not format numbers"),
        (RULE + RULE.split("\n\n", 1)[1], "rule names must be unique, repeated: ['x']"),
        (RULE.replace("version = 1", "version = 0"), "version"),
        ("version = 1\n[[rule]\n", "cannot be read"),
    ],
)
def test_invalid_condition_files_are_refused_naming_the_problem(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "conditions.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as refused:
        load_conditions(path)
    assert problem in str(refused.value)
    assert str(path) in str(refused.value)


def test_a_missing_file_is_refused_with_its_path(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_conditions(tmp_path / "absent.toml")


def test_the_packaged_conditions_load():
    book = load_conditions()
    assert {r.name for r in book.rule} == {"ttft_slow_share", "ttft_p95_limit", "error_rate_limit"}
    assert all(r.by == ("provider", "model_id", "environment") for r in book.rule)
