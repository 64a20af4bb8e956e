"""Two-group statistics: the t distribution, Newcombe's and Welch's intervals, the bootstrap, Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onfinish.insights import stats
from onfinish.insights.stats import (
    MIN_SAMPLES,
    Direction,
    Verdict,
    bootstrap_quantile_difference,
    bootstrap_quantiles,
    holm_adjust,
    judge,
    minimum_for_quantile,
    newcombe_difference,
    normal_quantile,
    rate_shortfall,
    regularized_incomplete_beta,
    sample_shortfall,
    student_t_cdf,
    student_t_density,
    student_t_quantile,
    student_t_upper_tail,
    welch_difference,
    wilson_interval,
)
from tests.conftest import scaled_examples

# --- Student t ------------------------------------------------------------------------------------

# Student t quantiles as printed in the usual tables (three decimals), by one-sided level and df.
T_TABLE: dict[float, dict[float, float]] = {
    0.90: {1: 3.078, 2: 1.886, 5: 1.476, 10: 1.372, 30: 1.310, 100: 1.290, math.inf: 1.282},
    0.95: {1: 6.314, 2: 2.920, 5: 2.015, 10: 1.812, 30: 1.697, 100: 1.660, math.inf: 1.645},
    0.975: {1: 12.706, 2: 4.303, 5: 2.571, 10: 2.228, 30: 2.042, 100: 1.984, math.inf: 1.960},
    0.995: {1: 63.657, 2: 9.925, 5: 4.032, 10: 3.169, 30: 2.750, 100: 2.626, math.inf: 2.576},
}


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(p, df, value) for p, row in T_TABLE.items() for df, value in row.items()],
)
def test_t_quantile_matches_the_table_to_three_decimals(p, df, expected):
    assert round(student_t_quantile(p, df), 3) == pytest.approx(expected, abs=1e-9)
    assert round(student_t_quantile(1 - p, df), 3) == pytest.approx(-expected, abs=1e-9)


def test_t_quantile_of_the_median_is_zero():
    assert student_t_quantile(0.5, 7.3) == 0


def _integrated_cdf(t: float, df: float) -> float:
    """P(T <= t) by the trapezoid rule on the density written out independently (t > 0)."""
    grid = np.linspace(0.0, t, 400_001)
    density = (
        math.gamma((df + 1) / 2)
        / (math.sqrt(df * math.pi) * math.gamma(df / 2))
        * (1 + grid**2 / df) ** (-(df + 1) / 2)
    )
    return 0.5 + float(np.trapezoid(density, grid))


@pytest.mark.parametrize("df", [1.5, 2.5, 100 / 17, 12.25, 47.9])
def test_t_quantile_for_fractional_df_agrees_with_numerical_integration(df):
    # Welch's degrees of freedom are fractional, which no table lists.
    for p in (0.9, 0.975, 0.995):
        assert _integrated_cdf(student_t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)


@given(
    p=st.floats(min_value=1e-7, max_value=1 - 1e-7),
    df=st.floats(min_value=0.5, max_value=5e6),
)
@settings(max_examples=scaled_examples(300), deadline=None)
def test_t_quantile_inverts_the_distribution_function(p, df):
    t = student_t_quantile(p, df)
    assert student_t_cdf(t, df) == pytest.approx(p, rel=1e-7, abs=1e-12)


def test_t_quantile_joins_the_cornish_fisher_expansion_smoothly():
    for p in (0.9, 0.975, 0.995, 0.9999):
        below = student_t_quantile(p, 99_999.0)
        above = student_t_quantile(p, 100_001.0)
        assert below > above
        assert below - above < 1e-8


def test_t_tails_and_density():
    assert student_t_upper_tail(2.228, 10) == pytest.approx(0.025, abs=5e-5)
    assert student_t_upper_tail(0.0, 3) == pytest.approx(0.5)
    assert student_t_upper_tail(-1.0, 4) == pytest.approx(1 - student_t_upper_tail(1.0, 4))
    assert student_t_upper_tail(math.inf, 4) == 0
    assert student_t_upper_tail(1.96, math.inf) == pytest.approx(0.025, abs=1e-4)
    assert student_t_density(0.0, 1) == pytest.approx(1 / math.pi)
    assert student_t_density(0.0, math.inf) == pytest.approx(1 / math.sqrt(2 * math.pi))


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_t_quantile_refuses_levels_outside_the_open_unit_interval(p):
    with pytest.raises(ValueError, match="p must lie"):
        student_t_quantile(p, 5)


def test_t_functions_refuse_non_positive_df():
    with pytest.raises(ValueError, match="degrees of freedom"):
        student_t_quantile(0.9, 0)
    with pytest.raises(ValueError, match="degrees of freedom"):
        student_t_upper_tail(1.0, -1)


@pytest.mark.parametrize(("a", "b"), [(1, 1), (2, 3), (5, 2), (7, 9), (30, 4)])
@pytest.mark.parametrize("x", [0.01, 0.3, 0.5, 0.77, 0.99])
def test_incomplete_beta_for_integers_is_a_binomial_tail(a, b, x):
    # I_x(a, b) = P(Binomial(a + b - 1, x) >= a) for whole a and b.
    trials = a + b - 1
    tail = sum(math.comb(trials, k) * x**k * (1 - x) ** (trials - k) for k in range(a, trials + 1))
    assert regularized_incomplete_beta(x, a, b) == pytest.approx(tail, rel=1e-12, abs=1e-15)


def test_incomplete_beta_edges_and_refusals():
    assert regularized_incomplete_beta(0.0, 2, 3) == 0
    assert regularized_incomplete_beta(1.0, 2, 3) == 1
    with pytest.raises(ValueError):
        regularized_incomplete_beta(1.5, 2, 3)
    with pytest.raises(ValueError):
        regularized_incomplete_beta(0.5, 0, 3)


# --- Rates ----------------------------------------------------------------------------------------

Z95 = normal_quantile(0.975)


def test_wilson_interval_matches_newcombe_single_proportion_examples():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", method 3.
    assert wilson_interval(81, 263, Z95) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(15, 148, Z95) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    assert wilson_interval(0, 20, Z95) == pytest.approx((0.0, 0.1611), abs=5e-5)


# Newcombe (1998), "Interval estimation for the difference between independent proportions:
# comparison of eleven methods", Statistics in Medicine 17:873-890, Table II, method 10, as
# (x1, n1, x2, n2, p1 - p2, lower, upper). Example (a) is 56/70 - 48/80 = 0.2000 with 0.0524 to
# 0.3339 (also checked by the R package propint); "0.1833, 0.0243 to 0.3245" is not in the paper.
NEWCOMBE_TABLE = [
    (56, 70, 48, 80, 0.2000, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.6000, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.5714, 0.0582, 0.8062),
    (5, 56, 0, 29, 0.0893, -0.0381, 0.1926),
    (0, 10, 0, 20, 0.0000, -0.1611, 0.2775),
    (0, 10, 0, 10, 0.0000, -0.2775, 0.2775),
    (10, 10, 0, 20, 1.0000, 0.6791, 1.0000),
    (10, 10, 0, 10, 1.0000, 0.6075, 1.0000),
]


@pytest.mark.parametrize(("x1", "n1", "x2", "n2", "delta", "low", "high"), NEWCOMBE_TABLE)
def test_newcombe_interval_matches_the_published_worked_examples(x1, n1, x2, n2, delta, low, high):
    # Our difference is B - A: the paper's first proportion is B, its second A.
    estimate = newcombe_difference(x2, n2, x1, n1, confidence=0.95)
    assert estimate.delta == pytest.approx(delta, abs=5e-5)
    assert estimate.low == pytest.approx(low, abs=5e-5)
    assert estimate.high == pytest.approx(high, abs=5e-5)
    assert "Newcombe" in estimate.method and "method 10" in estimate.method


counts = st.integers(min_value=1, max_value=400).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
)


@given(a=counts, b=counts, confidence=st.floats(min_value=0.5, max_value=0.999))
@settings(max_examples=scaled_examples(300), deadline=None)
def test_newcombe_interval_is_antisymmetric_bounded_and_agrees_with_its_p_value(a, b, confidence):
    forward = newcombe_difference(a[0], a[1], b[0], b[1], confidence=confidence)
    backward = newcombe_difference(b[0], b[1], a[0], a[1], confidence=confidence)
    assert forward.low == pytest.approx(-backward.high, abs=1e-12)
    assert forward.high == pytest.approx(-backward.low, abs=1e-12)
    assert -1 - 1e-12 <= forward.low <= forward.delta <= forward.high <= 1 + 1e-12
    assert 0 <= forward.p_value <= 1
    excludes_zero = forward.low > 0 or forward.high < 0
    alpha = 1 - confidence
    # Away from the boundary (bisection leaves ~1e-15), p < alpha exactly when 0 is excluded.
    if abs(forward.p_value - alpha) > 1e-9:
        assert excludes_zero == (forward.p_value < alpha)


def test_newcombe_with_an_empty_group_is_undefined():
    estimate = newcombe_difference(0, 0, 5, 10)
    assert math.isnan(estimate.low) and math.isnan(estimate.p_value)
    assert not estimate.testable


def test_rates_refuse_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 3, Z95)
    with pytest.raises(ValueError):
        newcombe_difference(1, 10, 1, 10, confidence=1.0)


# --- Means ----------------------------------------------------------------------------------------


def test_welch_interval_on_a_hand_computed_case():
    # A = 1..5: mean 3, s^2 = 2.5. B = 2, 4, ..., 10: mean 6, s^2 = 10.
    # se^2 = 2.5/5 + 10/5 = 2.5; df = 2.5^2 / (0.5^2/4 + 2^2/4) = 6.25 / 1.0625 = 100/17 = 5.8824;
    # t_{0.975, 100/17} = 2.4588 (see the integration test above), so 3 -/+ 2.4588 * 1.5811.
    estimate = welch_difference([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], confidence=0.95)
    t = student_t_quantile(0.975, 100 / 17)
    assert t == pytest.approx(2.4588, abs=5e-5)
    assert estimate.delta == pytest.approx(3.0)
    assert estimate.low == pytest.approx(3 - t * math.sqrt(2.5), abs=1e-12)
    assert estimate.high == pytest.approx(3 + t * math.sqrt(2.5), abs=1e-12)
    assert (estimate.low, estimate.high) == pytest.approx((-0.8877, 6.8877), abs=5e-5)
    # t = 3 / 1.5811 = 1.8974 on 5.88 df.
    assert estimate.p_value == pytest.approx(2 * student_t_upper_tail(3 / math.sqrt(2.5), 100 / 17))
    assert estimate.p_value == pytest.approx(0.1075, abs=5e-4)
    assert estimate.method == "Welch t, df 5.9"


def test_welch_ignores_missing_values():
    plain = welch_difference([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    holed = welch_difference([1, 2, math.nan, 3, 4, 5], [2, 4, 6, 8, 10, math.nan])
    assert holed == plain


@given(
    a=st.lists(st.floats(min_value=-1e3, max_value=1e3), min_size=2, max_size=40),
    b=st.lists(st.floats(min_value=-1e3, max_value=1e3), min_size=2, max_size=40),
)
@settings(max_examples=scaled_examples(200), deadline=None)
def test_welch_interval_agrees_with_its_p_value(a, b):
    estimate = welch_difference(a, b, confidence=0.95)
    if not estimate.testable:
        # Only without variation: both groups constant (whose variance numpy may still round a hair
        # above zero: var([683.2352738832017] * 3) is 1.3e-26), or variation whose variance underflows.
        assert (np.ptp(a) == 0 and np.ptp(b) == 0) or np.var(a) + np.var(b) < 1e-300
        return
    assert estimate.low <= estimate.delta <= estimate.high
    if abs(estimate.p_value - 0.05) > 1e-9:
        assert (estimate.low > 0 or estimate.high < 0) == (estimate.p_value < 0.05)


def test_welch_without_variation_or_values_says_nothing():
    constant = welch_difference([2.0] * 40, [3.0] * 40)
    assert constant.delta == 1.0 and not constant.testable
    assert not welch_difference([1.0], [1.0, 2.0]).testable
    assert math.isnan(welch_difference([], [1.0, 2.0]).delta)


# --- Quantiles ------------------------------------------------------------------------------------


def test_bootstrap_is_reproducible_and_chunking_does_not_change_it(monkeypatch):
    values = np.random.default_rng(0).lognormal(size=1001)
    whole = bootstrap_quantiles(values, [0.5, 0.95], resamples=37, rng=np.random.default_rng(5))
    again = bootstrap_quantiles(values, [0.5, 0.95], resamples=37, rng=np.random.default_rng(5))
    # One resample per chunk: the index stream is the same however it is split.
    monkeypatch.setattr(stats, "BOOTSTRAP_CHUNK_ELEMENTS", 1001)
    chunked = bootstrap_quantiles(values, [0.5, 0.95], resamples=37, rng=np.random.default_rng(5))
    assert whole.shape == (37, 2)
    assert np.array_equal(whole, again)
    assert np.array_equal(whole, chunked)


def test_bootstrap_quantile_difference_finds_a_shift_and_covers_it():
    rng = np.random.default_rng(11)
    a = rng.normal(100, 10, 3000)
    b = rng.normal(110, 10, 3000)
    median, p95 = bootstrap_quantile_difference(a, b, [0.5, 0.95], rng=rng, resamples=1000)
    for estimate in (median, p95):
        assert estimate.low < 10 < estimate.high
        assert estimate.p_value == 0
        assert estimate.method == "percentile bootstrap, 1000 resamples"
    assert median.delta == pytest.approx(np.quantile(b, 0.5) - np.quantile(a, 0.5))


def test_bootstrap_p_value_agrees_with_its_interval():
    rng = np.random.default_rng(3)
    for shift in np.linspace(0, 0.3, 7):
        (estimate,) = bootstrap_quantile_difference(
            rng.normal(0, 1, 400), rng.normal(shift, 1, 400), [0.5], rng=rng, resamples=500
        )
        if abs(estimate.p_value - 0.05) > 0.01:
            assert (estimate.low > 0 or estimate.high < 0) == (estimate.p_value < 0.05)


def test_bootstrap_without_values_or_variation_says_nothing():
    rng = np.random.default_rng(0)
    (empty,) = bootstrap_quantile_difference([], [1.0, 2.0], [0.5], rng=rng)
    assert math.isnan(empty.delta) and not empty.testable
    (nan_only,) = bootstrap_quantile_difference([math.nan] * 5, [1.0, 2.0], [0.5], rng=rng)
    assert not nan_only.testable
    (constant,) = bootstrap_quantile_difference([5.0] * 50, [7.0] * 50, [0.5], rng=rng)
    assert constant.delta == 2.0 and not constant.testable
    with pytest.raises(ValueError):
        bootstrap_quantiles(np.array([]), [0.5], resamples=10, rng=rng)
    with pytest.raises(ValueError):
        bootstrap_quantiles(np.array([1.0]), [0.5], resamples=0, rng=rng)


# --- Minimum sample sizes -------------------------------------------------------------------------


def test_minimum_for_quantile_keeps_ten_values_beyond_it():
    assert minimum_for_quantile(0.5) == MIN_SAMPLES == 30
    assert minimum_for_quantile(0.95) == 200
    assert minimum_for_quantile(0.99) == 1000
    assert minimum_for_quantile(0.05) == 200
    with pytest.raises(ValueError):
        minimum_for_quantile(1.0)


def test_shortfalls_name_what_is_missing():
    assert sample_shortfall(30, 30) is None
    assert sample_shortfall(29, 500) == "needs 30 calls per group (A has 29, B has 500)"
    assert sample_shortfall(100, 150, minimum=200, unit="sessions") is not None
    # A healthy rate with few failures in one group is still testable over both groups.
    assert rate_shortfall(1000, 1000, 990, 1000) is None
    assert rate_shortfall(1000, 1000, 995, 1000) == (
        "needs 10 of each outcome over both groups (has 1995 yes and 5 no)"
    )
    assert rate_shortfall(5, 20, 5, 500) is not None


# --- Multiple comparisons and verdicts ------------------------------------------------------------


def test_holm_adjustment_on_a_worked_example():
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, max(0.06, 0.04 * 1) = 0.06.
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx((0.03, 0.06, 0.06, 0.02))
    assert holm_adjust([]) == ()
    assert holm_adjust([0.3, 0.9]) == pytest.approx((0.6, 0.9))
    with pytest.raises(ValueError):
        holm_adjust([math.nan])


@given(st.lists(st.floats(min_value=0, max_value=1), max_size=15))
def test_holm_adjustment_is_between_raw_and_bonferroni_and_keeps_the_order(p_values):
    adjusted = holm_adjust(p_values)
    count = len(p_values)
    for raw, fixed in zip(p_values, adjusted, strict=True):
        assert raw <= fixed <= min(1.0, count * raw) + 1e-15
    for first in range(count):
        for second in range(count):
            if p_values[first] < p_values[second]:
                assert adjusted[first] <= adjusted[second]


@pytest.mark.parametrize(
    ("delta", "direction", "expected"),
    [
        (+5.0, Direction.LOWER_IS_BETTER, Verdict.WORSE),
        (-5.0, Direction.LOWER_IS_BETTER, Verdict.BETTER),
        (+0.02, Direction.HIGHER_IS_BETTER, Verdict.BETTER),
        (-0.02, Direction.HIGHER_IS_BETTER, Verdict.WORSE),
    ],
)
def test_judge_speaks_for_b(delta, direction, expected):
    assert judge(delta, 0.001, alpha=0.05, direction=direction) is expected
    assert judge(delta, 0.2, alpha=0.05, direction=direction) is Verdict.NO_DIFFERENCE
    assert judge(delta, 0.05, alpha=0.05, direction=direction) is Verdict.NO_DIFFERENCE
