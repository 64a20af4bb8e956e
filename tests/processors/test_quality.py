"""Quality enrichment: the implicit score's bounds, its documented ordering, and late Feedback."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onfinish.errors import ConfigurationError
from onfinish.processors.quality import (
    Behaviour,
    QualityWeights,
    apply_feedback,
    latency_signal,
    merge_feedback,
    quality_score,
    score_behaviour,
    token_efficiency_signal,
)
from onfinish.schemas.models import Feedback, OnFinishEvent, Status

WEIGHTS = QualityWeights()
FINISHED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _good(**changes: Any) -> dict[str, Any]:
    """A fast, complete, untouched successful answer, with some fields changed."""
    behaviour: dict[str, Any] = {
        "status": Status.success,
        "regenerated": False,
        "edited": False,
        "latency_ms": 800.0,
        "prompt_tokens": 500,
        "completion_tokens": 200,
        "finish_reason": "stop",
        "rating": None,
        "weights": WEIGHTS,
    }
    behaviour.update(changes)
    return behaviour


def _behaviour(**changes: Any) -> Behaviour:
    fields = _good(**changes)
    del fields["weights"]
    return Behaviour(**fields)


def _feedback(*, at: datetime = FINISHED + timedelta(minutes=1), **changes: Any) -> Feedback:
    return Feedback(request_id="req-1", at=at, **changes)


# --- Bounds -------------------------------------------------------------------------------------

WEIGHT = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@st.composite
def weights(draw: st.DrawFn) -> QualityWeights:
    behaviour = [draw(WEIGHT) for _ in range(4)]
    if sum(behaviour) == 0:
        behaviour[draw(st.integers(0, 3))] = draw(st.floats(min_value=1e-9, max_value=1e6))
    target = draw(st.floats(min_value=0, max_value=1e6))
    return QualityWeights(
        regenerated=behaviour[0],
        edited=behaviour[1],
        latency=behaviour[2],
        token_efficiency=behaviour[3],
        rating=draw(WEIGHT),
        latency_target_ms=target,
        latency_limit_ms=target + draw(st.floats(min_value=1e-3, max_value=1e6)),
        max_completion_ratio=draw(st.floats(min_value=1e-3, max_value=1e6)),
    )


@given(
    status=st.sampled_from([*Status, "success", "error"]),
    regenerated=st.booleans(),
    edited=st.booleans(),
    latency_ms=st.floats(allow_nan=True, allow_infinity=True),
    prompt_tokens=st.integers(min_value=-10, max_value=10**8),
    completion_tokens=st.integers(min_value=-10, max_value=10**8),
    finish_reason=st.one_of(
        st.none(), st.sampled_from(["stop", "length", "MAX_TOKENS", "tool_calls"]), st.text()
    ),
    rating=st.sampled_from([None, -1, 0, 1]),
    weights=weights(),
)
def test_score_lies_in_the_unit_interval_for_any_input(**behaviour: Any) -> None:
    score = quality_score(**behaviour)
    assert 0.0 <= score <= 1.0
    assert score == quality_score(**behaviour)  # deterministic


def test_a_perfect_answer_scores_one_and_a_failed_call_zero() -> None:
    assert quality_score(**_good()) == 1.0
    for status in (Status.error, Status.cancelled, Status.timeout, "timeout"):
        assert quality_score(**_good(status=status, rating=1)) == 0.0


def test_ratings_outside_minus_one_to_one_are_refused() -> None:
    with pytest.raises(ValueError, match="rating"):
        quality_score(**_good(rating=5))


# --- Ordering -----------------------------------------------------------------------------------


@given(
    regenerated=st.booleans(),
    edited=st.booleans(),
    latency_ms=st.floats(min_value=0, max_value=60_000),
    finish_reason=st.sampled_from(["stop", "length"]),
)
def test_rating_dominates_behaviour(regenerated, edited, latency_ms, finish_reason) -> None:
    behaviour = _good(
        regenerated=regenerated, edited=edited, latency_ms=latency_ms, finish_reason=finish_reason
    )
    liked = quality_score(**{**behaviour, "rating": 1})
    neutral = quality_score(**{**behaviour, "rating": 0})
    disliked = quality_score(**{**behaviour, "rating": -1})
    assert liked > neutral > disliked
    # With the defaults (rho = 0.75) a +1 beats a -1 whatever else happened to either answer.
    assert WEIGHTS.rating_share == pytest.approx(0.75)
    assert liked >= 0.75 > 0.25 >= disliked


def test_any_liked_answer_outranks_any_disliked_one() -> None:
    worst_liked = quality_score(
        **_good(regenerated=True, edited=True, latency_ms=1e9, finish_reason="length", rating=1)
    )
    best_disliked = quality_score(**_good(rating=-1))
    assert worst_liked > best_disliked


@pytest.mark.parametrize("rating", [None, -1, 0, 1])
def test_regeneration_and_edits_lower_the_score(rating) -> None:
    untouched = quality_score(**_good(rating=rating))
    regenerated = quality_score(**_good(rating=rating, regenerated=True))
    edited = quality_score(**_good(rating=rating, edited=True))
    both = quality_score(**_good(rating=rating, regenerated=True, edited=True))
    assert untouched > regenerated > both
    assert untouched > edited > both
    # The documented ranking of signals: a regeneration is worse than an edit.
    assert regenerated < edited


@given(
    latencies=st.tuples(st.floats(min_value=0, max_value=1e6), st.floats(min_value=0, max_value=1e6)),
    rating=st.sampled_from([None, -1, 0, 1]),
)
def test_score_does_not_increase_with_latency(latencies, rating) -> None:
    faster, slower = sorted(latencies)
    assert quality_score(**_good(latency_ms=slower, rating=rating)) <= quality_score(
        **_good(latency_ms=faster, rating=rating)
    )


def test_latency_signal_is_smooth_between_target_and_limit() -> None:
    target, limit = WEIGHTS.latency_target_ms, WEIGHTS.latency_limit_ms
    assert latency_signal(0.0, WEIGHTS) == latency_signal(target, WEIGHTS) == 1.0
    assert latency_signal(limit, WEIGHTS) == latency_signal(10 * limit, WEIGHTS) == 0.0
    assert latency_signal((target + limit) / 2, WEIGHTS) == pytest.approx(0.5)
    # No jump at either end: a step of 1 ms moves the signal by almost nothing.
    assert latency_signal(target + 1, WEIGHTS) == pytest.approx(1.0, abs=1e-6)
    assert latency_signal(limit - 1, WEIGHTS) == pytest.approx(0.0, abs=1e-6)
    assert latency_signal(float("nan"), WEIGHTS) == 0.0
    assert quality_score(**_good(latency_ms=limit)) == pytest.approx(
        1 - WEIGHTS.latency / WEIGHTS.behaviour_total
    )


def test_truncated_empty_and_runaway_answers_lose_token_efficiency() -> None:
    assert token_efficiency_signal(500, 200, "stop", WEIGHTS) == 1.0
    assert token_efficiency_signal(500, 200, "length", WEIGHTS) == 0.0
    assert token_efficiency_signal(500, 200, "MAX_TOKENS", WEIGHTS) == 0.0
    assert token_efficiency_signal(500, 0, "stop", WEIGHTS) == 0.0
    # 20 prompt tokens, 800 completion tokens: ratio 40, four times the limit of 10.
    assert token_efficiency_signal(20, 800, "stop", WEIGHTS) == pytest.approx(0.25)
    assert quality_score(**_good(finish_reason="length")) < quality_score(**_good())
    assert quality_score(**_good(prompt_tokens=20, completion_tokens=800)) < quality_score(**_good())


def test_formula_by_hand() -> None:
    # Edited, latency at the midpoint (signal 0.5), truncated; rated 0 (signal 0.5).
    score = quality_score(**_good(edited=True, latency_ms=11_000.0, finish_reason="length", rating=0))
    expected = (0.35 * 1 + 0.20 * 0 + 0.15 * 0.5 + 0.30 * 0 + 3.0 * 0.5) / (0.35 + 0.20 + 0.15 + 0.30 + 3.0)
    assert score == pytest.approx(expected)


# --- Feedback -----------------------------------------------------------------------------------


def test_feedback_flags_are_or_ed_into_the_events() -> None:
    behaviour = _behaviour(edited=True)
    merged = merge_feedback(behaviour, _feedback(regenerated=True))
    assert merged.regenerated and merged.edited
    # A Feedback never clears a flag the event already had.
    assert merge_feedback(merged, _feedback()).edited


def test_feedback_lowers_the_score_as_documented() -> None:
    behaviour = _behaviour()
    before = score_behaviour(behaviour, WEIGHTS)
    after = apply_feedback(behaviour, _feedback(regenerated=True), WEIGHTS)
    assert after < before
    assert after == quality_score(**_good(regenerated=True))


def test_latest_rating_wins() -> None:
    rated = replace(_behaviour(rating=1), rated_at=FINISHED)
    later = _feedback(rating=-1, at=FINISHED + timedelta(minutes=5))
    earlier = _feedback(rating=0, at=FINISHED + timedelta(minutes=2))
    assert merge_feedback(rated, later).rating == -1
    # Out of order: the earlier Feedback arriving last does not undo the later rating.
    assert merge_feedback(merge_feedback(rated, later), earlier).rating == -1
    assert merge_feedback(merge_feedback(rated, earlier), later).rating == -1
    # A Feedback without a rating keeps the one there is.
    assert merge_feedback(rated, _feedback(edited=True)).rating == 1
    assert apply_feedback(rated, later, WEIGHTS) == quality_score(**_good(rating=-1))


def test_a_later_feedback_replaces_the_rating_carried_by_the_event() -> None:
    event = OnFinishEvent(
        request_id="req-1",
        service="test",
        provider="openai",
        model_id="gpt-4o",
        started_at=FINISHED - timedelta(seconds=1),
        finished_at=FINISHED,
        latency_ms=1000.0,
        prompt_tokens=500,
        completion_tokens=200,
        finish_reason="stop",
        rating=-1,
    )
    behaviour = Behaviour.of(event)
    assert behaviour.rated_at == FINISHED
    assert score_behaviour(behaviour, WEIGHTS) == quality_score(**_good(latency_ms=1000.0, rating=-1))
    assert apply_feedback(behaviour, _feedback(rating=1), WEIGHTS) == quality_score(
        **_good(latency_ms=1000.0, rating=1)
    )


@given(
    regenerated=st.booleans(),
    edited=st.booleans(),
    rating=st.sampled_from([None, -1, 0, 1]),
)
def test_applying_the_same_feedback_twice_changes_nothing(regenerated, edited, rating) -> None:
    feedback = _feedback(regenerated=regenerated, edited=edited, rating=rating)
    once = merge_feedback(_behaviour(), feedback)
    assert merge_feedback(once, feedback) == once


def test_feedback_on_a_failed_call_still_scores_zero() -> None:
    assert apply_feedback(_behaviour(status=Status.error), _feedback(rating=1), WEIGHTS) == 0.0


# --- Weights ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"regenerated": -0.1}, "regenerated must be finite and >= 0"),
        ({"rating": float("nan")}, "rating must be finite"),
        ({"latency": float("inf")}, "latency must be finite"),
        (
            {"regenerated": 0.0, "edited": 0.0, "latency": 0.0, "token_efficiency": 0.0},
            "must not all be zero",
        ),
        (
            {"regenerated": 0.0, "edited": 0.0, "latency": 0.0, "token_efficiency": 0.0, "rating": 0.0},
            "must not all be zero",
        ),
        ({"latency_target_ms": 5_000.0, "latency_limit_ms": 5_000.0}, "must exceed latency_target_ms"),
        ({"max_completion_ratio": 0.0}, "max_completion_ratio must be > 0"),
        ({"regenerated": 1e308, "edited": 1e308}, "not finite"),
    ],
)
def test_invalid_weights_are_refused(changes, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        QualityWeights(**changes)


def test_a_zero_rating_weight_ignores_ratings() -> None:
    weights = QualityWeights(rating=0.0)
    assert (
        quality_score(**_good(rating=-1, weights=weights)) == quality_score(**_good(weights=weights)) == 1.0
    )
