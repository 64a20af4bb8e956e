"""The variant readout: planted effects are found, identical groups are left alone, thin data is said so."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onfinish.insights.compare import (
    MEASURES,
    Calls,
    Outcome,
    Readout,
    compare,
    render_text,
    to_json,
)
from onfinish.insights.stats import Direction, Verdict
from tests.conftest import scaled_examples

LATENCY_MEDIAN_MS = 1200.0
LATENCY_SIGMA = 0.6
LATENCY_MEASURES = ("latency_p50_ms", "latency_p95_ms", "latency_mean_ms")


def synthetic_calls(
    rng: np.random.Generator,
    calls: int,
    *,
    latency_factor: float = 1.0,
    error_rate: float = 0.05,
    streamed_share: float = 0.7,
) -> Calls:
    """Calls with lognormal latency, TTFT on streamed calls, lognormal cost, about 4 calls a session."""
    streamed = rng.random(calls) < streamed_share
    return Calls(
        ok=rng.random(calls) >= error_rate,
        latency_ms=latency_factor * rng.lognormal(math.log(LATENCY_MEDIAN_MS), LATENCY_SIGMA, calls),
        ttft_ms=np.where(streamed, rng.lognormal(math.log(300), 0.5, calls), np.nan),
        cost_usd=rng.lognormal(math.log(0.002), 0.8, calls),
        quality=rng.beta(8, 2, calls),
        regenerated=rng.random(calls) < 0.05,
        edited=rng.random(calls) < 0.10,
        session_id=np.array([f"session-{k}" for k in rng.integers(0, max(1, calls // 4), calls)]),
    )


def true_latency_differences(factor: float) -> dict[str, float]:
    """B - A on each latency measure when B's lognormal latency is A's scaled by `factor`."""
    p95 = LATENCY_MEDIAN_MS * math.exp(LATENCY_SIGMA * 1.6448536269514722)
    mean = LATENCY_MEDIAN_MS * math.exp(LATENCY_SIGMA**2 / 2)
    return {
        "latency_p50_ms": (factor - 1) * LATENCY_MEDIAN_MS,
        "latency_p95_ms": (factor - 1) * p95,
        "latency_mean_ms": (factor - 1) * mean,
    }


def _row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "ok": True,
        "latency_ms": 900.0,
        "ttft_ms": 250.0,
        "cost_usd": 0.002,
        "quality": 0.8,
        "regenerated": False,
        "edited": False,
        "session_id": "s-1",
    }
    row.update(changes)
    return row


def _verdicts(readout: Readout) -> dict[str, Verdict]:
    return {difference.measure: difference.verdict for difference in readout.differences}


# --- Calls ----------------------------------------------------------------------------------------


def test_calls_from_rows_fills_missing_values():
    calls = Calls.from_rows(
        [
            _row(),
            _row(ok=False, ttft_ms=None, quality=None, session_id=None, regenerated=True),
            {"ok": 1, "latency_ms": 5, "cost_usd": 0.1, "regenerated": 0, "edited": 1},
        ]
    )
    assert len(calls) == 3
    assert calls.ok.tolist() == [True, False, True]
    assert calls.ttft_ms[0] == 250.0 and math.isnan(calls.ttft_ms[1]) and math.isnan(calls.ttft_ms[2])
    assert math.isnan(calls.quality[1])
    assert calls.session_id.tolist() == ["s-1", "", ""]
    assert calls.edited.tolist() == [False, False, True]
    assert calls.sessions == 3


def test_calls_are_read_only_and_of_one_length():
    calls = Calls.from_rows([_row(), _row()])
    with pytest.raises(ValueError):
        calls.latency_ms[0] = 1.0
    with pytest.raises(ValueError, match="one length"):
        Calls(
            ok=np.array([True]),
            latency_ms=np.array([1.0, 2.0]),
            ttft_ms=np.array([1.0]),
            cost_usd=np.array([1.0]),
            quality=np.array([1.0]),
            regenerated=np.array([False]),
            edited=np.array([False]),
            session_id=np.array(["a"]),
        )
    assert len(Calls.empty()) == 0 and Calls.empty().sessions == 0


def test_session_costs_sum_priced_calls_and_keep_lone_calls_as_sessions():
    calls = Calls.from_rows(
        [
            _row(session_id="s1", cost_usd=0.1),
            _row(session_id="s1", cost_usd=0.2),
            _row(session_id="s2", cost_usd=0.3),
            _row(session_id="s3", cost_usd=math.nan),
            _row(session_id=None, cost_usd=0.4),
            _row(session_id=None, cost_usd=0.5),
        ]
    )
    assert calls.sessions == 5
    assert sorted(calls.session_costs().tolist()) == pytest.approx([0.3, 0.3, 0.4, 0.5])


# --- Known answers --------------------------------------------------------------------------------


def test_planted_latency_increase_is_found_and_covered():
    rng = np.random.default_rng(2024)
    readout = compare(
        synthetic_calls(rng, 2000),
        synthetic_calls(rng, 2000, latency_factor=1.15),
        a_name="control",
        b_name="slower",
        seed=7,
    )
    truth = true_latency_differences(1.15)
    for measure in LATENCY_MEASURES:
        difference = readout.difference(measure)
        assert difference.verdict is Verdict.WORSE, measure
        assert difference.ci_low < truth[measure] < difference.ci_high, (measure, difference)
        assert difference.relative_delta is not None
        assert difference.relative_delta == pytest.approx(0.15, abs=0.1)
    assert readout.outcome is Outcome.WORSE
    assert readout.verdict.startswith("slower is worse than control: latency")
    for key, verdict in _verdicts(readout).items():
        if not key.startswith("latency"):
            assert verdict is Verdict.NO_DIFFERENCE, key


def test_planted_error_rate_is_found_as_a_worse_success_rate():
    rng = np.random.default_rng(99)
    readout = compare(
        synthetic_calls(rng, 2000, error_rate=0.05),
        synthetic_calls(rng, 2000, error_rate=0.09),
        a_name="A",
        b_name="B",
    )
    success = readout.difference("success_rate")
    assert success.verdict is Verdict.WORSE
    assert success.ci_low < -0.04 < success.ci_high
    assert success.method.startswith("cluster-robust t (sessions)"), "calls come about 4 a session"
    assert success.relative_delta is None
    assert readout.outcome is Outcome.WORSE
    assert "success rate" in readout.verdict and "pp" in readout.verdict


def test_no_planted_effect_gives_no_verdict_either_way():
    rng = np.random.default_rng(5)
    readout = compare(synthetic_calls(rng, 2000), synthetic_calls(rng, 2000), a_name="A", b_name="B")
    assert set(_verdicts(readout).values()) == {Verdict.NO_DIFFERENCE}
    assert readout.outcome is Outcome.NO_DIFFERENCE
    assert readout.verdict == "no difference found"
    assert readout.tested == len(MEASURES)


def test_faster_and_less_reliable_b_is_mixed():
    rng = np.random.default_rng(17)
    readout = compare(
        synthetic_calls(rng, 2000, error_rate=0.03),
        synthetic_calls(rng, 2000, latency_factor=0.7, error_rate=0.10),
        a_name="A",
        b_name="B",
    )
    assert readout.difference("latency_p50_ms").verdict is Verdict.BETTER
    assert readout.difference("success_rate").verdict is Verdict.WORSE
    assert readout.outcome is Outcome.MIXED
    assert readout.verdict.startswith("B is mixed against A: worse on success rate")
    assert "better on latency" in readout.verdict


def test_cost_per_session_counts_sessions_not_calls():
    # Each session's calls cost the same, so the calls inside a session are not independent: a
    # per-call interval that took them as independent would be too narrow. Both intervals have the
    # sessions' degrees of freedom (per call: cluster-robust on sessions).
    rng = np.random.default_rng(1)

    def group(sessions: int, calls_per_session: int) -> Calls:
        session_cost = rng.lognormal(math.log(0.01), 0.5, sessions)
        return Calls.from_rows(
            _row(session_id=f"s{k}", cost_usd=session_cost[k])
            for k in range(sessions)
            for _ in range(calls_per_session)
        )

    readout = compare(group(40, 25), group(40, 25), a_name="A", b_name="B", resamples=200)
    per_session = readout.difference("cost_per_session_usd")
    per_call = readout.difference("cost_per_call_usd")
    assert readout.a.sessions == readout.b.sessions == 40
    session_df = float(per_session.method.rsplit(" ", 1)[1])
    call_df = float(per_call.method.rsplit(" ", 1)[1])
    assert session_df <= 78 and call_df <= 78
    assert per_call.method.startswith("cluster-robust t (sessions)")
    assert per_session.delta == pytest.approx(25 * per_call.delta)


# --- Error rates over seeds -----------------------------------------------------------------------


# The two calibrations below (100 and 20 seeds of whole readouts, about half a minute together)
# measure the statistics' false-alarm rate and power; `make test` runs them with the integration
# suite, `make test-unit` leaves them out.
@pytest.mark.integration
def test_false_alarm_rate_over_seeds_stays_near_nominal():
    # Holm keeps the family-wise rate at 5% or below when the p-values are exact; the bootstrap's
    # are slightly liberal at these sizes, hence the margin.
    seeds = 100
    started = time.perf_counter()
    alarms = []
    for seed in range(seeds):
        rng = np.random.default_rng(10_000 + seed)
        readout = compare(
            synthetic_calls(rng, 1000),
            synthetic_calls(rng, 1000),
            a_name="A",
            b_name="B",
            seed=seed,
            resamples=400,
        )
        if readout.claims_difference:
            alarms.append((seed, readout.verdict))
    rate = len(alarms) / seeds
    elapsed = time.perf_counter() - started
    assert rate <= 0.15, (
        f"false-alarm rate {rate:.3f} over {seeds} seeds ({elapsed:.1f} s), nominal 0.05: {alarms}"
    )


@pytest.mark.integration  # a calibration, see above
def test_power_to_find_a_fifteen_percent_latency_increase():
    seeds = 20
    found = 0
    for seed in range(seeds):
        rng = np.random.default_rng(20_000 + seed)
        readout = compare(
            synthetic_calls(rng, 2000),
            synthetic_calls(rng, 2000, latency_factor=1.15),
            a_name="A",
            b_name="B",
            seed=seed,
            resamples=400,
        )
        verdicts = _verdicts(readout)
        if readout.claims_difference and Verdict.WORSE in (verdicts[key] for key in LATENCY_MEASURES):
            found += 1
    assert found / seeds >= 0.9, f"found the planted +15% latency in {found} of {seeds} seeds"


# --- Thin data ------------------------------------------------------------------------------------


def test_below_the_minimum_sample_sizes_there_is_not_enough_data():
    rng = np.random.default_rng(3)
    readout = compare(
        synthetic_calls(rng, 20, error_rate=0.0),
        synthetic_calls(rng, 20, latency_factor=3.0, error_rate=0.5),
        a_name="A",
        b_name="B",
    )
    assert set(_verdicts(readout).values()) == {Verdict.NOT_ENOUGH_DATA}
    assert readout.outcome is Outcome.NOT_ENOUGH_DATA
    assert readout.verdict == "not enough data"
    assert readout.tested == 0
    assert readout.difference("latency_p50_ms").note == "needs 30 calls per group (A has 20, B has 20)"


def test_p95_needs_more_calls_than_p50():
    rng = np.random.default_rng(4)
    readout = compare(
        synthetic_calls(rng, 150, streamed_share=1.0),
        synthetic_calls(rng, 150, latency_factor=3.0, streamed_share=1.0),
        a_name="A",
        b_name="B",
    )
    assert readout.difference("latency_p50_ms").verdict is Verdict.WORSE
    assert readout.difference("latency_p95_ms").verdict is Verdict.NOT_ENOUGH_DATA
    assert "needs 200 calls per group" in readout.difference("latency_p95_ms").note
    assert readout.difference("ttft_p95_ms").note.startswith("needs 200 streamed calls")
    assert readout.verdict.endswith("(and 1 more measure)")


def test_edge_cases_never_raise():
    rng = np.random.default_rng(8)
    many = synthetic_calls(rng, 500)
    unstreamed = synthetic_calls(rng, 500, streamed_share=0.0)
    constant = Calls.from_rows([_row(session_id=f"s{k}") for k in range(100)])
    one_session = Calls.from_rows([_row(latency_ms=float(k)) for k in range(100)])
    empty = Calls.empty()
    for a, b in [
        (empty, empty),
        (empty, many),
        (many, unstreamed),
        (constant, constant),
        (one_session, many),
    ]:
        readout = compare(a, b, a_name="A", b_name="B", resamples=100)
        assert len(readout.differences) == len(MEASURES)
        render_text(readout)
        json.dumps(to_json(readout), allow_nan=False)

    no_ttft = compare(many, unstreamed, a_name="A", b_name="B", resamples=100)
    assert no_ttft.difference("ttft_p50_ms").verdict is Verdict.NOT_ENOUGH_DATA
    assert math.isnan(no_ttft.b.values["ttft_p50_ms"])

    flat = compare(constant, constant, a_name="A", b_name="B", resamples=100)
    assert flat.difference("latency_mean_ms").note == "no variation in either group"
    assert flat.difference("latency_p50_ms").note == "no variation in either group"
    assert flat.outcome is Outcome.NOT_ENOUGH_DATA

    single = compare(one_session, many, a_name="A", b_name="B", resamples=100)
    assert single.a.sessions == 1
    assert single.difference("cost_per_session_usd").verdict is Verdict.NOT_ENOUGH_DATA
    assert single.difference("cost_per_session_usd").note.startswith("needs 30 sessions per group (A has 1")

    nothing = compare(empty, empty, a_name="A", b_name="B")
    assert nothing.outcome is Outcome.NOT_ENOUGH_DATA
    assert nothing.a.calls == 0 and nothing.a.sessions == 0


rows = st.lists(
    st.fixed_dictionaries(
        {
            "ok": st.booleans(),
            "latency_ms": st.one_of(st.just(math.nan), st.floats(min_value=0, max_value=1e5)),
            "ttft_ms": st.one_of(st.none(), st.floats(min_value=0, max_value=1e4)),
            "cost_usd": st.one_of(st.just(math.nan), st.floats(min_value=0, max_value=1.0)),
            "quality": st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
            "regenerated": st.booleans(),
            "edited": st.booleans(),
            "session_id": st.one_of(st.none(), st.sampled_from(["s1", "s2", "s3"])),
        }
    ),
    max_size=40,
)


@given(a=rows, b=rows)
@settings(max_examples=scaled_examples(60), deadline=None)
def test_any_small_groups_give_a_readout(a, b):
    readout = compare(Calls.from_rows(a), Calls.from_rows(b), a_name="A", b_name="B", resamples=50)
    assert {d.verdict for d in readout.differences} <= set(Verdict)
    assert readout.outcome in set(Outcome)
    json.dumps(to_json(readout), allow_nan=False)


# --- Determinism and presentation -----------------------------------------------------------------


def test_readout_is_deterministic_for_a_seed():
    rng = np.random.default_rng(6)
    a, b = synthetic_calls(rng, 600), synthetic_calls(rng, 600, latency_factor=1.1)
    first = to_json(compare(a, b, a_name="A", b_name="B", seed=3, resamples=300))
    again = to_json(compare(a, b, a_name="A", b_name="B", seed=3, resamples=300))
    other = to_json(compare(a, b, a_name="A", b_name="B", seed=4, resamples=300))
    assert first == again
    assert first != other
    # Only the bootstrap depends on the seed.
    same = [d["measure"] for d, e in zip(first["differences"], other["differences"], strict=True) if d == e]
    assert "latency_mean_ms" in same and "success_rate" in same


def test_compare_refuses_bad_arguments():
    empty = Calls.empty()
    with pytest.raises(ValueError, match="confidence"):
        compare(empty, empty, a_name="A", b_name="B", confidence=1.0)
    with pytest.raises(ValueError, match="seed"):
        compare(empty, empty, a_name="A", b_name="B", seed=-1)
    with pytest.raises(ValueError, match="resamples"):
        compare(empty, empty, a_name="A", b_name="B", resamples=0)


def test_measures_know_which_way_is_better():
    directions = {measure.key: measure.direction for measure in MEASURES}
    assert directions["success_rate"] is Direction.HIGHER_IS_BETTER
    assert directions["quality"] is Direction.HIGHER_IS_BETTER
    for key in ("latency_p95_ms", "ttft_p50_ms", "cost_per_call_usd", "regeneration_rate", "edit_rate"):
        assert directions[key] is Direction.LOWER_IS_BETTER
    assert len({measure.key for measure in MEASURES}) == len(MEASURES)


def test_render_text_states_methods_limits_and_verdicts():
    rng = np.random.default_rng(2024)
    readout = compare(
        synthetic_calls(rng, 2000),
        synthetic_calls(rng, 2000, latency_factor=1.15),
        a_name="v1",
        b_name="v2",
        resamples=500,
    )
    text = render_text(readout)
    assert text.startswith("Readout: B = v2 against A = v1\n")
    assert "A v1: 2,000 calls" in text
    assert f"Verdict: {readout.verdict}\n" in text
    for label in ("success rate", "latency p95", "TTFT p50", "cost per session", "edit rate"):
        assert label in text
    assert "cluster-robust t (sessions)" in text  # about 4 calls a session
    assert "session bootstrap, 500 resamples" in text
    assert "Welch t, df" in text
    assert "95% confidence" in text and "Holm-adjusted over the 11 tested measures" in text
    assert "p95: 200" in text
    assert "Notes:" not in text


def test_to_json_is_json_safe_and_complete():
    readout = compare(Calls.empty(), Calls.from_rows([_row()] * 5), a_name="A", b_name="B")
    document = to_json(readout)
    json.dumps(document, allow_nan=False)
    assert document["outcome"] == "not enough data"
    assert document["adjustment"] == "holm"
    assert document["minimum_sample_sizes"]["p95"] == 200
    assert document["a"]["values"]["latency_p50_ms"] is None
    assert document["b"]["values"]["latency_p50_ms"] == 900.0
    first = document["differences"][0]
    assert first["measure"] == "success_rate"
    assert first["verdict"] == "not enough data"
    assert first["direction"] == "higher is better"
    assert first["delta"] is None and first["ci_low"] is None
    assert first["note"].startswith("needs 30 calls per group")
