"""Two-group statistics behind variant readouts and model-version drift: intervals, tests, verdicts.

Every function here is pure and deterministic (the bootstrap takes a seeded numpy `Generator`).
Each interval is for the difference B - A, where A is the baseline (control variant, previous model
version) and B the candidate, and comes with the two-sided p-value of "no difference" that agrees
with it: the interval at level 1 - alpha excludes 0 exactly when p < alpha (for the bootstrap, up
to its resolution).

Rates (success, regeneration, edit): Newcombe's hybrid score interval, method 10 of Newcombe (1998),
built from the two Wilson score intervals [l, u] of p = x / n at z = z_{1 - alpha/2}:

    centre = (x + z^2/2) / (n + z^2),  half = z * sqrt(x (n - x) / n + z^2/4) / (n + z^2)
    d = p_B - p_A,  low = d - sqrt((p_B - l_B)^2 + (u_A - p_A)^2),
                    high = d + sqrt((u_B - p_B)^2 + (p_A - l_A)^2)

Its p-value inverts the interval: the z at which the bound nearest 0 touches 0 (found by
bisection; Wilson intervals nest as z grows), p = 2 (1 - Phi(z)).

Means (latency, cost per call, cost per session, quality): Welch's t interval,

    d = mean_B - mean_A,  se^2 = s_A^2/n_A + s_B^2/n_B,
    df = se^4 / ((s_A^2/n_A)^2/(n_A - 1) + (s_B^2/n_B)^2/(n_B - 1))   (Welch-Satterthwaite)
    d -/+ t_{1 - alpha/2, df} se,  p = 2 P(T_df > |d| / se)

The Student t distribution and the incomplete beta function are scipy.special's (stdtr,
stdtrit, betainc); the normal's are the standard library's.

What stays written out here, and why: scipy has no Newcombe hybrid interval for a difference of
rates (statsmodels has, but is a far heavier dependency for twenty lines); scipy's Wilson interval
(binomtest(...).proportion_ci) takes a confidence level where the p-value's bisection needs a z, and
costs a binomial test per call. scipy.stats.ttest_ind(equal_var=False) computes Welch's test, but the
cluster-robust interval below needs the same t machinery on its own variance, and the edge cases
(NaN values ignored, constant groups, underflowing variance) are ours either way. scipy.stats.bootstrap
gives no p-value, holds every resample in memory at once and has no session (Poisson) bootstrap; and
scipy's multiple-comparison helper (false_discovery_control) does Benjamini-Hochberg, not Holm.

Quantiles (latency and TTFT p50, p95): percentile bootstrap. Each group is resampled with
replacement on its own, `resamples` times; the interval is the alpha/2 and 1 - alpha/2 quantiles of
q(B*) - q(A*) and p = 2 min(P*(d* <= 0), P*(d* >= 0)), so its resolution is 2 / resamples. The
resamples are drawn in chunks of at most `BOOTSTRAP_CHUNK_ELEMENTS` indices, so memory stays bounded
whatever the sample size and no subsampling is needed; the generator yields the same index
stream however it is chunked, so the chunk size does not change the result. Sample quantiles use
numpy's default linear interpolation, for the point values and inside the bootstrap alike.

Verdicts. A readout tests about ten measures at once; tested separately at 5 % each, some measure
would "differ" in up to four readouts in ten (1 - 0.95^11) of two identical groups. Verdicts
therefore use Holm's step-down adjustment (uniformly more powerful than Bonferroni, valid under any
dependence between the measures, and latency p50, p95 and mean are strongly dependent): with the m
p-values sorted, p_(1) <= ... <= p_(m), the adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)),
and a measure is "better" or "worse" only when its adjusted p-value is below alpha. The chance that
a readout of two identical groups claims any difference is then at most alpha (the family-wise error
rate), as far as each p-value is exact; the bootstrap's are slightly liberal at a few hundred calls.
The intervals themselves stay at the stated confidence, per measure: a 95 % interval that excludes 0
can still read "no difference" once the other tests are accounted for, never the other way round.

Minimum sample sizes (below them the verdict is "not enough data"; the interval is still shown):

- `MIN_SAMPLES = 30` per group, calls or sessions, for every measure: the t interval leans on the
  central limit theorem, and 30 is where it holds for moderately skewed data such as latency; below
  it a "group" is a handful of users and no verdict about the variant is worth stating.
- `MIN_EVENTS_FOR_RATE = 10` of each outcome, both groups together: the Wilson-based interval keeps
  its coverage down to zero events in a group, so a per-group floor is not needed (and would forbid
  any verdict on a healthy 0.3 % error rate); with fewer events overall a handful of calls would
  decide it.
- `MIN_TAIL_FOR_QUANTILE = 10` calls beyond the quantile, on its far side, per group: the
  bootstrap distribution of a sample quantile lives on the few order statistics around it, and with
  fewer than about ten of them it is too coarse for a percentile interval. p50 needs 30 calls (the
  general floor), p95 needs 200.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

DEFAULT_CONFIDENCE: Final = 0.95
DEFAULT_RESAMPLES: Final = 2000
# Indices drawn per bootstrap chunk: int32 indices plus the gathered float64 values and numpy's
# partition copy come to about 20 bytes each, so a chunk stays near 20 MB.
BOOTSTRAP_CHUNK_ELEMENTS: Final = 1 << 20

MIN_SAMPLES: Final = 30
MIN_EVENTS_FOR_RATE: Final = 10
MIN_TAIL_FOR_QUANTILE: Final = 10

ADJUSTMENT: Final = "holm"

NEWCOMBE_METHOD: Final = "Newcombe hybrid score (method 10)"

_NORMAL: Final = NormalDist()


class Direction(StrEnum):
    """Which way a measure improves."""

    HIGHER_IS_BETTER = "higher is better"
    LOWER_IS_BETTER = "lower is better"


class Verdict(StrEnum):
    """What a difference says about B, from B's point of view."""

    BETTER = "better"
    WORSE = "worse"
    NO_DIFFERENCE = "no difference"
    NOT_ENOUGH_DATA = "not enough data"


@dataclass(frozen=True)
class Estimate:
    """A difference B - A, its confidence interval and the two-sided p-value of "no difference".

    `p_value` is NaN when the uncertainty cannot be estimated (an empty group, fewer than two values
    for a variance, or no variation at all in either group); `delta`, `low` and `high` are NaN when
    the difference itself cannot be computed.
    """

    delta: float
    low: float
    high: float
    p_value: float
    method: str

    @property
    def testable(self) -> bool:
        """Whether the estimate carries a p-value a verdict can rest on."""
        return math.isfinite(self.p_value)


def _undefined(method: str, delta: float = math.nan) -> Estimate:
    return Estimate(delta=delta, low=math.nan, high=math.nan, p_value=math.nan, method=method)


def _check_confidence(confidence: float) -> float:
    """The two-sided alpha of `confidence`, which must lie strictly between 0 and 1."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence}")
    return 1 - confidence


# --- Normal and Student t -------------------------------------------------------------------------
#
# The distributions come from scipy.special: stdtr / stdtrit (Student t, any positive df including
# inf, where they give the normal) and betainc (the regularised incomplete beta function). The
# wrappers only add what scipy leaves out: it answers a bad argument with NaN, and a NaN p-value
# would silently read "not testable", so they raise ValueError instead. scipy.special rather than
# scipy.stats.t: the ufuncs take about 4 us a call, the frozen-distribution methods about 400 us,
# and a readout asks for a quantile and a tail per measure and per segment.


def normal_quantile(p: float) -> float:
    """The standard normal quantile (Wichura's AS 241, through the standard library)."""
    return _NORMAL.inv_cdf(p)


def _normal_upper_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b), for 0 <= x <= 1 and a, b > 0."""
    if not 0 <= x <= 1:
        raise ValueError(f"x must lie in [0, 1], not {x}")
    if a <= 0 or b <= 0:
        raise ValueError(f"a and b must be positive, not {a} and {b}")
    return float(special.betainc(a, b, x))


def _check_df(df: float) -> None:
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, not {df}")


def student_t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom (df may be non-integer or inf)."""
    _check_df(df)
    # By symmetry, P(T > t) = P(T <= -t): the lower tail keeps full relative precision far out.
    return float(special.stdtr(df, -t))


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    _check_df(df)
    return float(special.stdtr(df, t))


def student_t_density(t: float, df: float) -> float:
    """The density of Student's t with `df` degrees of freedom."""
    _check_df(df)
    # Imported here: scipy.stats takes about 1.5 s to import, scipy.special a third of that, and
    # nothing on a readout's path needs the density.
    from scipy import stats as scipy_stats

    return float(scipy_stats.t.pdf(t, df))


def student_t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (df may be non-integer or inf)."""
    if not 0 < p < 1:
        raise ValueError(f"p must lie strictly between 0 and 1, not {p}")
    _check_df(df)
    if p == 0.5:
        return 0.0
    # The upper half from the lower tail, as in student_t_upper_tail: 1 - p is exact, p near 1 is not.
    if p > 0.5:
        return -float(special.stdtrit(df, 1 - p))
    return float(special.stdtrit(df, p))


# --- Rates ----------------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float) -> tuple[float, float]:
    """The Wilson score interval for successes / trials at normal quantile z."""
    if trials <= 0:
        raise ValueError(f"trials must be positive, not {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], not {successes}")
    z2 = z * z
    centre = (successes + z2 / 2) / (trials + z2)
    half = z * math.sqrt(successes * (trials - successes) / trials + z2 / 4) / (trials + z2)
    return max(0.0, centre - half), min(1.0, centre + half)


def _newcombe_bounds(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, z: float
) -> tuple[float, float]:
    rate_a = successes_a / trials_a
    rate_b = successes_b / trials_b
    low_a, high_a = wilson_interval(successes_a, trials_a, z)
    low_b, high_b = wilson_interval(successes_b, trials_b, z)
    delta = rate_b - rate_a
    return (
        delta - math.hypot(rate_b - low_b, high_a - rate_a),
        delta + math.hypot(high_b - rate_b, rate_a - low_a),
    )


def newcombe_difference(
    successes_a: int,
    trials_a: int,
    successes_b: int,
    trials_b: int,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Estimate:
    """The difference of rates p_B - p_A with Newcombe's hybrid score interval (method 10)."""
    alpha = _check_confidence(confidence)
    if trials_a <= 0 or trials_b <= 0:
        return _undefined(NEWCOMBE_METHOD)
    delta = successes_b / trials_b - successes_a / trials_a
    low, high = _newcombe_bounds(successes_a, trials_a, successes_b, trials_b, normal_quantile(1 - alpha / 2))
    return Estimate(
        delta=delta,
        low=low,
        high=high,
        p_value=_newcombe_p_value(successes_a, trials_a, successes_b, trials_b, delta),
        method=NEWCOMBE_METHOD,
    )


def _newcombe_p_value(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, delta: float
) -> float:
    """The smallest alpha at which Newcombe's interval excludes 0."""
    if delta == 0:
        return 1.0

    def excludes_zero(z: float) -> bool:
        low, high = _newcombe_bounds(successes_a, trials_a, successes_b, trials_b, z)
        return low > 0 if delta > 0 else high < 0

    z_low, z_high = 0.0, 40.0
    if excludes_zero(z_high):
        return 0.0
    for _ in range(60):
        middle = (z_low + z_high) / 2
        if excludes_zero(middle):
            z_low = middle
        else:
            z_high = middle
    return min(1.0, 2 * _normal_upper_tail((z_low + z_high) / 2))


# --- Means ----------------------------------------------------------------------------------------


def _finite(values: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def welch_difference(a: ArrayLike, b: ArrayLike, *, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """The difference of means mean(B) - mean(A) with Welch's t interval; NaN values are ignored."""
    alpha = _check_confidence(confidence)
    values_a, values_b = _finite(a), _finite(b)
    method = "Welch t"
    if values_a.size == 0 or values_b.size == 0:
        return _undefined(method)
    delta = float(values_b.mean() - values_a.mean())
    if values_a.size < 2 or values_b.size < 2:
        return _undefined(method, delta)
    if np.ptp(values_a) == 0 and np.ptp(values_b) == 0:
        # No variation in either group: the t interval is degenerate and says nothing. (Tested on
        # the values, not on the variance, which rounding leaves a hair above zero.)
        return Estimate(delta=delta, low=delta, high=delta, p_value=math.nan, method=method)
    variance_a = float(values_a.var(ddof=1)) / values_a.size
    variance_b = float(values_b.var(ddof=1)) / values_b.size
    standard_error = math.sqrt(variance_a + variance_b)
    if standard_error == 0:
        # Variation so small that its variance underflows: as good as none.
        return Estimate(delta=delta, low=delta, high=delta, p_value=math.nan, method=method)
    # df is scale-free; dividing by the larger variance keeps the squares from underflowing.
    share_a, share_b = variance_a / max(variance_a, variance_b), variance_b / max(variance_a, variance_b)
    df = (share_a + share_b) ** 2 / (share_a**2 / (values_a.size - 1) + share_b**2 / (values_b.size - 1))
    half_width = student_t_quantile(1 - alpha / 2, df) * standard_error
    p_value = min(1.0, 2 * student_t_upper_tail(abs(delta) / standard_error, df))
    return Estimate(
        delta=delta,
        low=delta - half_width,
        high=delta + half_width,
        p_value=p_value,
        method=f"{method}, df {df:.1f}",
    )


# --- Quantiles ------------------------------------------------------------------------------------


def bootstrap_quantiles(
    values: NDArray[np.float64], quantiles: Sequence[float], *, resamples: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """The sample quantiles of `resamples` bootstrap resamples of `values`: shape (resamples, quantiles).

    Resamples are drawn in chunks of at most `BOOTSTRAP_CHUNK_ELEMENTS` indices, so memory is
    bounded for any sample size.
    """
    size = values.size
    if size == 0:
        raise ValueError("cannot resample an empty sample")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    levels = np.asarray(quantiles, dtype=np.float64)
    index_type = np.int32 if size < 2**31 else np.int64
    per_chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // size)
    result = np.empty((resamples, levels.size), dtype=np.float64)
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        indices = rng.integers(0, size, size=(count, size), dtype=index_type)
        result[start : start + count] = np.quantile(values[indices], levels, axis=1).T
    return result


def bootstrap_quantile_difference(
    a: ArrayLike,
    b: ArrayLike,
    quantiles: Sequence[float],
    *,
    rng: np.random.Generator,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
) -> tuple[Estimate, ...]:
    """q(B) - q(A) for each of `quantiles`, with percentile bootstrap intervals; NaN values are ignored.

    Both groups are resampled once for all the quantiles, so p50 and p95 of one measure share
    their resamples.
    """
    alpha = _check_confidence(confidence)
    values_a, values_b = _finite(a), _finite(b)
    return _bootstrap_difference(
        values_a,
        values_b,
        quantiles,
        method=f"percentile bootstrap, {resamples} resamples",
        alpha=alpha,
        resample_a=lambda levels: bootstrap_quantiles(values_a, levels, resamples=resamples, rng=rng),
        resample_b=lambda levels: bootstrap_quantiles(values_b, levels, resamples=resamples, rng=rng),
    )


def _bootstrap_difference(
    values_a: NDArray[np.float64],
    values_b: NDArray[np.float64],
    quantiles: Sequence[float],
    *,
    method: str,
    alpha: float,
    resample_a: Callable[[list[float]], NDArray[np.float64]],
    resample_b: Callable[[list[float]], NDArray[np.float64]],
) -> tuple[Estimate, ...]:
    """q(B) - q(A) per quantile with percentile intervals from the resamples (B's drawn first);
    resamples that gave NaN (a session bootstrap that drew no session) are left out."""
    if values_a.size == 0 or values_b.size == 0:
        return tuple(_undefined(method) for _ in quantiles)
    levels = list(quantiles)
    deltas = np.quantile(values_b, levels) - np.quantile(values_a, levels)
    if np.ptp(values_a) == 0 and np.ptp(values_b) == 0:
        # Two constant groups: every resample repeats the point difference, which says nothing.
        return tuple(
            Estimate(delta=float(delta), low=float(delta), high=float(delta), p_value=math.nan, method=method)
            for delta in deltas
        )
    drawn_b = resample_b(levels)
    resampled = drawn_b - resample_a(levels)
    lows, highs = np.nanquantile(resampled, [alpha / 2, 1 - alpha / 2], axis=0)
    valid = np.isfinite(resampled)
    counted = np.maximum(np.sum(valid, axis=0), 1)
    at_most_zero = np.sum((resampled <= 0) & valid, axis=0) / counted
    at_least_zero = np.sum((resampled >= 0) & valid, axis=0) / counted
    p_values = np.minimum(1.0, 2 * np.minimum(at_most_zero, at_least_zero))
    return tuple(
        Estimate(delta=float(delta), low=float(low), high=float(high), p_value=float(p_value), method=method)
        for delta, low, high, p_value in zip(deltas, lows, highs, p_values, strict=True)
    )


# --- Calls that come in sessions ------------------------------------------------------------------
#
# Calls of one session share a model, a feature, a user and a growing context: they are not
# independent, and the variant is assigned per session. Treating them as independent calls makes
# intervals too narrow (on loadgen's traffic half of the null readouts claimed a difference). When
# a group has sessions of more than one call, the session is the unit of resampling and of variance:
# a cluster-robust (delta-method) interval for means and rates, and a session bootstrap (Poisson
# weights per session) for quantiles.


def cluster_codes(labels: NDArray[Any]) -> NDArray[np.int64]:
    """Integer cluster codes for `labels` (session ids); '' is a cluster of one call each."""
    codes = np.empty(labels.size, dtype=np.int64)
    named = labels != ""
    _, inverse = np.unique(labels[named], return_inverse=True)
    codes[named] = inverse
    first_single = int(inverse.max()) + 1 if inverse.size else 0
    codes[~named] = first_single + np.arange(int(np.count_nonzero(~named)))
    return codes


def clustered(codes: NDArray[np.int64]) -> bool:
    """Whether some cluster holds more than one value."""
    return codes.size > 0 and np.unique(codes).size < codes.size


def _cluster_mean(values: NDArray[np.float64], codes: NDArray[np.int64]) -> tuple[float, float, int]:
    """The per-value mean, its cluster-robust variance and the number of clusters."""
    _, dense = np.unique(codes, return_inverse=True)
    totals = np.bincount(dense, weights=values)
    sizes = np.bincount(dense).astype(np.float64)
    clusters = totals.size
    mean = float(totals.sum() / sizes.sum())
    if clusters < 2:
        return mean, math.nan, clusters
    residuals = totals - mean * sizes
    variance = clusters / (clusters - 1) * float(np.sum(residuals**2)) / float(sizes.sum()) ** 2
    return mean, variance, clusters


def cluster_mean_difference(
    a: ArrayLike,
    a_codes: NDArray[np.int64],
    b: ArrayLike,
    b_codes: NDArray[np.int64],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Estimate:
    """mean(B) - mean(A) over values that come in clusters (sessions), with a cluster-robust interval.

    Each group's mean is the ratio of its cluster totals to its cluster sizes; its variance, by the
    delta method, is C/(C-1) * sum_c (y_c - m n_c)^2 / (sum_c n_c)^2 over its C clusters. The
    interval is Student t with Welch-Satterthwaite degrees of freedom on the clusters (C - 1 each).
    Works for rates too (values 0 and 1).
    """
    alpha = _check_confidence(confidence)
    values_a, values_b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    method = "cluster-robust t (sessions)"
    if values_a.size == 0 or values_b.size == 0:
        return _undefined(method)
    mean_a, variance_a, clusters_a = _cluster_mean(values_a, a_codes)
    mean_b, variance_b, clusters_b = _cluster_mean(values_b, b_codes)
    delta = mean_b - mean_a
    variance = variance_a + variance_b
    if not math.isfinite(variance) or variance <= 0:
        return _undefined(method, delta)
    df = variance**2 / (variance_a**2 / (clusters_a - 1) + variance_b**2 / (clusters_b - 1))
    error = math.sqrt(variance)
    margin = student_t_quantile(1 - alpha / 2, df) * error
    p_value = min(1.0, 2 * student_t_upper_tail(abs(delta) / error, df))
    return Estimate(delta, delta - margin, delta + margin, p_value, f"{method}, df {df:.1f}")


def cluster_bootstrap_quantiles(
    values: NDArray[np.float64],
    codes: NDArray[np.int64],
    quantiles: Sequence[float],
    *,
    resamples: int,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Quantiles of `resamples` session-bootstrap resamples: shape (resamples, quantiles).

    Each cluster gets a Poisson(1) weight per resample (the Poisson bootstrap: the large-sample
    equivalent of drawing clusters with replacement, without gathering them), each value its
    cluster's weight; a resample's quantile is the weighted lower quantile. In chunks of at most
    `BOOTSTRAP_CHUNK_ELEMENTS` weights. A resample whose weights are all zero gives NaN.
    """
    order = np.argsort(values, kind="stable")
    sorted_values, sorted_codes = values[order], codes[order]
    _, dense = np.unique(sorted_codes, return_inverse=True)
    clusters = int(dense.max()) + 1
    levels = np.asarray(quantiles, dtype=np.float64)
    per_chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // max(values.size, clusters))
    result = np.empty((resamples, levels.size), dtype=np.float64)
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        weights = rng.poisson(1.0, size=(count, clusters)).astype(np.float64)[:, dense]
        cumulative = np.cumsum(weights, axis=1)
        totals = cumulative[:, -1:]
        for column, level in enumerate(levels):
            positions = np.argmax(cumulative >= level * totals, axis=1)
            chosen = sorted_values[positions]
            result[start : start + count, column] = np.where(totals[:, 0] > 0, chosen, math.nan)
    return result


def cluster_bootstrap_quantile_difference(
    a: ArrayLike,
    a_codes: NDArray[np.int64],
    b: ArrayLike,
    b_codes: NDArray[np.int64],
    quantiles: Sequence[float],
    *,
    rng: np.random.Generator,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
) -> tuple[Estimate, ...]:
    """q(B) - q(A) for each of `quantiles` with a percentile session bootstrap (values come in clusters)."""
    alpha = _check_confidence(confidence)
    values_a, values_b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return _bootstrap_difference(
        values_a,
        values_b,
        quantiles,
        method=f"session bootstrap, {resamples} resamples",
        alpha=alpha,
        resample_a=lambda levels: cluster_bootstrap_quantiles(
            values_a, a_codes, levels, resamples=resamples, rng=rng
        ),
        resample_b=lambda levels: cluster_bootstrap_quantiles(
            values_b, b_codes, levels, resamples=resamples, rng=rng
        ),
    )


# --- Minimum sample sizes -------------------------------------------------------------------------


def minimum_for_quantile(quantile: float) -> int:
    """Values a group needs for a verdict on this quantile: `MIN_TAIL_FOR_QUANTILE` beyond it, at least."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie strictly between 0 and 1, not {quantile}")
    # The small slack keeps 10 / 0.05 at 200 despite 1 - 0.95 being a hair above 0.05.
    beyond = math.ceil(MIN_TAIL_FOR_QUANTILE / min(quantile, 1 - quantile) - 1e-9)
    return max(MIN_SAMPLES, beyond)


def sample_shortfall(
    size_a: int, size_b: int, *, minimum: int = MIN_SAMPLES, unit: str = "calls"
) -> str | None:
    """Why two groups of these sizes are too small for a verdict, or None when they are not."""
    if min(size_a, size_b) >= minimum:
        return None
    return f"needs {minimum} {unit} per group (A has {size_a}, B has {size_b})"


def rate_shortfall(successes_a: int, trials_a: int, successes_b: int, trials_b: int) -> str | None:
    """Why two rates are too thin for a verdict, or None when they are not."""
    too_few = sample_shortfall(trials_a, trials_b)
    if too_few is not None:
        return too_few
    events = successes_a + successes_b
    non_events = trials_a + trials_b - events
    if min(events, non_events) >= MIN_EVENTS_FOR_RATE:
        return None
    return (
        f"needs {MIN_EVENTS_FOR_RATE} of each outcome over both groups (has {events} yes and {non_events} no)"
    )


# --- Multiple comparisons and verdicts ------------------------------------------------------------


def holm_adjust(p_values: Sequence[float]) -> tuple[float, ...]:
    """Holm's step-down adjusted p-values, in the order given; a family of none gives none."""
    count = len(p_values)
    if any(not 0 <= p <= 1 for p in p_values):
        raise ValueError(f"p-values must lie in [0, 1]: {list(p_values)}")
    adjusted = [0.0] * count
    running = 0.0
    # Ties keep their given order (a stable sort), so the result is deterministic.
    for rank, position in enumerate(sorted(range(count), key=lambda index: p_values[index])):
        running = max(running, min(1.0, (count - rank) * p_values[position]))
        adjusted[position] = running
    return tuple(adjusted)


def judge(delta: float, adjusted_p_value: float, *, alpha: float, direction: Direction) -> Verdict:
    """B's verdict on one measure, once its p-value has been adjusted for the whole readout."""
    if not adjusted_p_value < alpha or delta == 0 or not math.isfinite(delta):
        return Verdict.NO_DIFFERENCE
    higher = delta > 0
    return Verdict.BETTER if higher == (direction is Direction.HIGHER_IS_BETTER) else Verdict.WORSE
