"""The two-group readout: variant A against variant B, or a model version against the one before it.

`compare` takes two groups of calls (`Calls`, one row per onFinish event, as the query layer reads
them) and measures each group on the catalog `MEASURES`: success rate, latency and time to first
token (p50, p95, mean latency), cost per call and per session, quality, regeneration and edit rates.
For each measure it states B - A with a confidence interval, the method, and B's verdict ("better",
"worse", "no difference", "not enough data"); the statistics, their minimum sample sizes and the
Holm adjustment of the verdicts are in `onfinish.insights.stats`. The readout then gets one
overall verdict, chosen by a fixed rule (`Outcome`), and renders as a terminal table or as JSON.

Sample units. Rates, latency, cost per call and quality count calls; TTFT counts streamed calls
(those with a TTFT); quality counts scored calls. Cost per session sums each session's priced calls
and counts sessions, so its interval treats sessions, not calls, as independent; a call without a
session id is a session of its own, so that sessions x cost per session is still the total cost.
Missing values (NaN latency, TTFT, cost or quality) leave the call out of that measure only.

Nothing here raises on thin data: empty groups, groups without a streamed call, constant values or
a single session give NaN values and the verdict "not enough data", with the reason in the note.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from onfinish.insights.stats import (
    ADJUSTMENT,
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    MIN_EVENTS_FOR_RATE,
    MIN_SAMPLES,
    MIN_TAIL_FOR_QUANTILE,
    Direction,
    Estimate,
    Verdict,
    bootstrap_quantile_difference,
    cluster_bootstrap_quantile_difference,
    cluster_codes,
    cluster_mean_difference,
    clustered,
    holm_adjust,
    judge,
    minimum_for_quantile,
    newcombe_difference,
    rate_shortfall,
    sample_shortfall,
    welch_difference,
)

# --- Calls ----------------------------------------------------------------------------------------


def _column(values: ArrayLike, dtype: type[np.generic]) -> NDArray[Any]:
    array = np.array(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"a column must be one-dimensional, not of shape {array.shape}")
    array.setflags(write=False)
    return array


def _session_column(values: ArrayLike) -> NDArray[np.str_]:
    array = np.asarray(values)
    if array.dtype == object:
        array = np.array(["" if value is None else str(value) for value in array.ravel()], dtype=np.str_)
    return _column(array, np.str_)


@dataclass(frozen=True, eq=False)
class Calls:
    """One group of calls, as parallel read-only columns (one entry per call).

    `ttft_ms` is NaN for calls that were not streamed, `quality` NaN for unscored calls and
    `cost_usd` NaN for unpriced ones; `session_id` is "" for a call outside any session.
    """

    ok: NDArray[np.bool_]
    latency_ms: NDArray[np.float64]
    ttft_ms: NDArray[np.float64]
    cost_usd: NDArray[np.float64]
    quality: NDArray[np.float64]
    regenerated: NDArray[np.bool_]
    edited: NDArray[np.bool_]
    session_id: NDArray[np.str_]

    def __post_init__(self) -> None:
        columns: dict[str, NDArray[Any]] = {
            "ok": _column(self.ok, np.bool_),
            "latency_ms": _column(self.latency_ms, np.float64),
            "ttft_ms": _column(self.ttft_ms, np.float64),
            "cost_usd": _column(self.cost_usd, np.float64),
            "quality": _column(self.quality, np.float64),
            "regenerated": _column(self.regenerated, np.bool_),
            "edited": _column(self.edited, np.bool_),
            "session_id": _session_column(self.session_id),
        }
        lengths = {name: column.size for name, column in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the columns of Calls must have one length each: {lengths}")
        for name, column in columns.items():
            object.__setattr__(self, name, column)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> Calls:
        """Calls from row dicts: `ok`, `latency_ms`, `cost_usd`, `regenerated`, `edited`, and the optional
        `ttft_ms`, `quality` and `session_id` (absent or None for a call without one)."""
        listed = list(rows)

        def optional(key: str) -> list[Any]:
            return [row.get(key) for row in listed]

        return cls(
            ok=np.array([bool(row["ok"]) for row in listed], dtype=np.bool_),
            latency_ms=np.array([row["latency_ms"] for row in listed], dtype=np.float64),
            ttft_ms=np.array(optional("ttft_ms"), dtype=np.float64),
            cost_usd=np.array([row["cost_usd"] for row in listed], dtype=np.float64),
            quality=np.array(optional("quality"), dtype=np.float64),
            regenerated=np.array([bool(row["regenerated"]) for row in listed], dtype=np.bool_),
            edited=np.array([bool(row["edited"]) for row in listed], dtype=np.bool_),
            session_id=np.array(optional("session_id"), dtype=object),
        )

    @classmethod
    def empty(cls) -> Calls:
        """A group without a call."""
        return cls.from_rows([])

    def __len__(self) -> int:
        return int(self.ok.size)

    @property
    def sessions(self) -> int:
        """Distinct sessions, a call without a session id counting as a session of its own."""
        named = self.session_id != ""
        return int(np.unique(self.session_id[named]).size + np.count_nonzero(~named))

    def session_costs(self) -> NDArray[np.float64]:
        """Each session's total cost over its priced calls; sessions without a priced call are left out."""
        priced = np.isfinite(self.cost_usd)
        session_id, cost = self.session_id[priced], self.cost_usd[priced]
        named = session_id != ""
        _, session_index = np.unique(session_id[named], return_inverse=True)
        totals = np.bincount(session_index, weights=cost[named]).astype(np.float64)
        return np.concatenate([totals, cost[~named]])


# --- Measures -------------------------------------------------------------------------------------


class Unit(StrEnum):
    """How a measure's values read."""

    MILLISECONDS = "ms"
    USD = "USD"
    RATE = "rate"  # a share of calls, 0..1, shown in percent and its differences in points
    SCORE = "score"  # 0..1


class Statistic(StrEnum):
    """What is estimated, which decides the interval's method."""

    RATE = "rate"
    MEAN = "mean"
    QUANTILE = "quantile"


@dataclass(frozen=True)
class Measure:
    """One line of the readout: what is measured on which column, and which way is better."""

    key: str
    label: str
    unit: Unit
    direction: Direction
    statistic: Statistic
    source: str  # a column of Calls, or "session_cost_usd"
    sample: str = "calls"  # the unit the minimum sample sizes count
    quantile: float = math.nan

    @property
    def relative(self) -> bool:
        """Whether B - A also reads as a percentage of A (ratio scales, not rates or scores)."""
        return self.unit in (Unit.MILLISECONDS, Unit.USD)


_LOWER, _HIGHER = Direction.LOWER_IS_BETTER, Direction.HIGHER_IS_BETTER
_RATE, _MEAN, _QUANTILE = Statistic.RATE, Statistic.MEAN, Statistic.QUANTILE
_MS = Unit.MILLISECONDS

MEASURES: Final[tuple[Measure, ...]] = (
    Measure("success_rate", "success rate", Unit.RATE, _HIGHER, _RATE, "ok"),
    Measure("latency_p50_ms", "latency p50", _MS, _LOWER, _QUANTILE, "latency_ms", quantile=0.5),
    Measure("latency_p95_ms", "latency p95", _MS, _LOWER, _QUANTILE, "latency_ms", quantile=0.95),
    Measure("latency_mean_ms", "latency mean", _MS, _LOWER, _MEAN, "latency_ms"),
    Measure("ttft_p50_ms", "TTFT p50", _MS, _LOWER, _QUANTILE, "ttft_ms", "streamed calls", 0.5),
    Measure("ttft_p95_ms", "TTFT p95", _MS, _LOWER, _QUANTILE, "ttft_ms", "streamed calls", 0.95),
    Measure("cost_per_call_usd", "cost per call", Unit.USD, _LOWER, _MEAN, "cost_usd", "priced calls"),
    Measure(
        "cost_per_session_usd", "cost per session", Unit.USD, _LOWER, _MEAN, "session_cost_usd", "sessions"
    ),
    Measure("quality", "quality", Unit.SCORE, _HIGHER, _MEAN, "quality", "scored calls"),
    Measure("regeneration_rate", "regeneration rate", Unit.RATE, _LOWER, _RATE, "regenerated"),
    Measure("edit_rate", "edit rate", Unit.RATE, _LOWER, _RATE, "edited"),
)


def _samples(calls: Calls) -> dict[str, NDArray[Any]]:
    """Each measure's source column, missing values dropped from the numeric ones."""

    def finite(values: NDArray[np.float64]) -> NDArray[np.float64]:
        return values[np.isfinite(values)]

    return {
        "ok": calls.ok,
        "regenerated": calls.regenerated,
        "edited": calls.edited,
        "latency_ms": finite(calls.latency_ms),
        "ttft_ms": finite(calls.ttft_ms),
        "cost_usd": finite(calls.cost_usd),
        "quality": finite(calls.quality),
        "session_cost_usd": calls.session_costs(),
    }


def _sessions(calls: Calls) -> dict[str, NDArray[np.int64]]:
    """The session (cluster code) of each value of each call-level column, aligned with `_samples`."""
    codes = cluster_codes(calls.session_id)
    return {
        "ok": codes,
        "regenerated": codes,
        "edited": codes,
        "latency_ms": codes[np.isfinite(calls.latency_ms)],
        "ttft_ms": codes[np.isfinite(calls.ttft_ms)],
        "cost_usd": codes[np.isfinite(calls.cost_usd)],
        "quality": codes[np.isfinite(calls.quality)],
    }


def _point_value(measure: Measure, sample: NDArray[Any]) -> float:
    if sample.size == 0:
        return math.nan
    if measure.statistic is Statistic.QUANTILE:
        return float(np.quantile(sample, measure.quantile))
    return float(np.mean(sample))


# --- The readout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSummary:
    """One group's traffic and its value on each measure (NaN where it has none)."""

    name: str
    calls: int
    sessions: int
    values: Mapping[str, float]


@dataclass(frozen=True)
class Difference:
    """B - A on one measure, with its interval, method and B's verdict.

    `relative_delta` is (B - A) / A on ratio scales (latency, cost) when A > 0, else None.
    `p_value` is the measure's own, `adjusted_p_value` Holm's over the readout (NaN when the
    measure was not tested); `note` says why a measure has "not enough data".
    """

    measure: str
    label: str
    unit: Unit
    direction: Direction
    a_value: float
    b_value: float
    delta: float
    relative_delta: float | None
    ci_low: float
    ci_high: float
    method: str
    p_value: float
    adjusted_p_value: float
    verdict: Verdict
    note: str = ""


class Outcome(StrEnum):
    """The readout's overall verdict on B."""

    BETTER = "better"
    WORSE = "worse"
    MIXED = "mixed"
    NO_DIFFERENCE = "no difference"
    NOT_ENOUGH_DATA = "not enough data"


@dataclass(frozen=True)
class Readout:
    """Two groups compared on every measure, and the overall verdict."""

    a: GroupSummary
    b: GroupSummary
    differences: tuple[Difference, ...]
    confidence: float
    resamples: int
    seed: int
    outcome: Outcome
    verdict: str
    adjustment: str = ADJUSTMENT

    @property
    def tested(self) -> int:
        """How many measures had enough data to be tested: the size of the Holm family."""
        return sum(1 for difference in self.differences if difference.verdict is not Verdict.NOT_ENOUGH_DATA)

    @property
    def claims_difference(self) -> bool:
        """Whether the readout says B differs from A on any measure."""
        return self.outcome in (Outcome.BETTER, Outcome.WORSE, Outcome.MIXED)

    def difference(self, measure: str) -> Difference:
        """The line for one measure, by key (see `MEASURES`)."""
        for difference in self.differences:
            if difference.measure == measure:
                return difference
        raise KeyError(measure)


def _estimates(
    samples_a: Mapping[str, NDArray[Any]],
    samples_b: Mapping[str, NDArray[Any]],
    *,
    sessions_a: Mapping[str, NDArray[np.int64]],
    sessions_b: Mapping[str, NDArray[np.int64]],
    confidence: float,
    seed: int,
    resamples: int,
) -> dict[str, Estimate]:
    """Each measure's interval; the quantiles of one column share one bootstrap. Columns whose calls
    come in sessions of more than one call take the session as the unit (stats.py explains why)."""
    estimates: dict[str, Estimate] = {}
    for position, measure in enumerate(MEASURES):
        if measure.key in estimates:
            continue
        sample_a, sample_b = samples_a[measure.source], samples_b[measure.source]
        codes_a, codes_b = sessions_a.get(measure.source), sessions_b.get(measure.source)
        in_sessions = (
            codes_a is not None and codes_b is not None and (clustered(codes_a) or clustered(codes_b))
        )
        if in_sessions and measure.statistic is not Statistic.QUANTILE:
            assert codes_a is not None and codes_b is not None
            estimates[measure.key] = cluster_mean_difference(
                sample_a.astype(np.float64),
                codes_a,
                sample_b.astype(np.float64),
                codes_b,
                confidence=confidence,
            )
        elif measure.statistic is Statistic.RATE:
            estimates[measure.key] = newcombe_difference(
                int(np.count_nonzero(sample_a)),
                sample_a.size,
                int(np.count_nonzero(sample_b)),
                sample_b.size,
                confidence=confidence,
            )
        elif measure.statistic is Statistic.MEAN:
            estimates[measure.key] = welch_difference(sample_a, sample_b, confidence=confidence)
        else:
            siblings = [
                other
                for other in MEASURES
                if other.statistic is Statistic.QUANTILE and other.source == measure.source
            ]
            # One stream per column, named by its position in the catalog, so a measure's interval
            # does not change when other measures are added or skipped.
            rng = np.random.default_rng([seed, position])
            levels = [other.quantile for other in siblings]
            if in_sessions:
                assert codes_a is not None and codes_b is not None
                found = cluster_bootstrap_quantile_difference(
                    sample_a,
                    codes_a,
                    sample_b,
                    codes_b,
                    levels,
                    rng=rng,
                    confidence=confidence,
                    resamples=resamples,
                )
            else:
                found = bootstrap_quantile_difference(
                    sample_a, sample_b, levels, rng=rng, confidence=confidence, resamples=resamples
                )
            estimates.update(zip((other.key for other in siblings), found, strict=True))
    return estimates


def _shortfall(measure: Measure, sample_a: NDArray[Any], sample_b: NDArray[Any]) -> str | None:
    if measure.statistic is Statistic.RATE:
        return rate_shortfall(
            int(np.count_nonzero(sample_a)), sample_a.size, int(np.count_nonzero(sample_b)), sample_b.size
        )
    minimum = (
        minimum_for_quantile(measure.quantile) if measure.statistic is Statistic.QUANTILE else MIN_SAMPLES
    )
    return sample_shortfall(sample_a.size, sample_b.size, minimum=minimum, unit=measure.sample)


def compare(
    a: Calls,
    b: Calls,
    *,
    a_name: str,
    b_name: str,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
) -> Readout:
    """Compare group B against baseline A on every measure; verdicts are B's.

    Deterministic for a given `seed` (which only the bootstrap uses). Raises ValueError for a
    confidence outside (0, 1), a negative seed or fewer than one resample, never for thin data.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence}")
    if seed < 0:
        raise ValueError(f"seed must not be negative, not {seed}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    alpha = 1 - confidence
    samples_a, samples_b = _samples(a), _samples(b)
    estimates = _estimates(
        samples_a,
        samples_b,
        sessions_a=_sessions(a),
        sessions_b=_sessions(b),
        confidence=confidence,
        seed=seed,
        resamples=resamples,
    )

    notes: dict[str, str] = {}
    for measure in MEASURES:
        shortfall = _shortfall(measure, samples_a[measure.source], samples_b[measure.source])
        if shortfall is None and not estimates[measure.key].testable:
            shortfall = "no variation in either group"
        if shortfall is not None:
            notes[measure.key] = shortfall
    tested = [measure.key for measure in MEASURES if measure.key not in notes]
    adjusted = dict(zip(tested, holm_adjust([estimates[key].p_value for key in tested]), strict=True))

    values_a = {m.key: _point_value(m, samples_a[m.source]) for m in MEASURES}
    values_b = {m.key: _point_value(m, samples_b[m.source]) for m in MEASURES}
    differences = []
    for measure in MEASURES:
        estimate = estimates[measure.key]
        a_value, b_value = values_a[measure.key], values_b[measure.key]
        delta = b_value - a_value
        adjusted_p_value = adjusted.get(measure.key, math.nan)
        differences.append(
            Difference(
                measure=measure.key,
                label=measure.label,
                unit=measure.unit,
                direction=measure.direction,
                a_value=a_value,
                b_value=b_value,
                delta=delta,
                relative_delta=delta / a_value if measure.relative and a_value > 0 else None,
                ci_low=estimate.low,
                ci_high=estimate.high,
                method=estimate.method,
                p_value=estimate.p_value,
                adjusted_p_value=adjusted_p_value,
                verdict=(
                    Verdict.NOT_ENOUGH_DATA
                    if measure.key in notes
                    else judge(delta, adjusted_p_value, alpha=alpha, direction=measure.direction)
                ),
                note=notes.get(measure.key, ""),
            )
        )
    outcome, verdict = overall_verdict(differences, a_name=a_name, b_name=b_name)
    return Readout(
        a=GroupSummary(a_name, len(a), a.sessions, MappingProxyType(values_a)),
        b=GroupSummary(b_name, len(b), b.sessions, MappingProxyType(values_b)),
        differences=tuple(differences),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        outcome=outcome,
        verdict=verdict,
    )


def overall_verdict(differences: Iterable[Difference], *, a_name: str, b_name: str) -> tuple[Outcome, str]:
    """The readout's outcome and its one-line statement, by a fixed rule.

    Any "worse" and any "better" make it mixed; otherwise any of one kind decides it. The measure
    quoted first is the strongest (smallest adjusted p-value, then catalog order). With neither,
    it is "no difference found" if some measure could be tested, else "not enough data".
    """
    listed = list(differences)
    order = {difference.measure: position for position, difference in enumerate(listed)}

    def strongest(verdict: Verdict) -> list[Difference]:
        found = [difference for difference in listed if difference.verdict is verdict]
        return sorted(found, key=lambda d: (d.adjusted_p_value, d.p_value, order[d.measure]))

    worse, better = strongest(Verdict.WORSE), strongest(Verdict.BETTER)
    if worse and better:
        return Outcome.MIXED, (
            f"{b_name} is mixed against {a_name}: worse on {describe(worse[0])}{_more(worse)}; "
            f"better on {describe(better[0])}{_more(better)}"
        )
    if worse or better:
        outcome = Outcome.WORSE if worse else Outcome.BETTER
        found = worse or better
        return outcome, f"{b_name} is {outcome} than {a_name}: {describe(found[0])}{_more(found)}"
    lacking = [difference.label for difference in listed if difference.verdict is Verdict.NOT_ENOUGH_DATA]
    if len(lacking) == len(listed):
        return Outcome.NOT_ENOUGH_DATA, "not enough data"
    if lacking:
        return Outcome.NO_DIFFERENCE, f"no difference found (not enough data for {', '.join(lacking)})"
    return Outcome.NO_DIFFERENCE, "no difference found"


def _more(found: list[Difference]) -> str:
    extra = len(found) - 1
    if extra == 0:
        return ""
    return f" (and {extra} more measure{'s' if extra > 1 else ''})"


# --- Presentation ---------------------------------------------------------------------------------


def _decimals(reference: float, unit: Unit) -> int:
    """Decimals that show about three significant digits of `reference` (already in display units)."""
    if unit is Unit.SCORE:
        return 3
    if not math.isfinite(reference) or reference == 0:
        return 1 if unit is Unit.RATE else 0
    decimals = max(0, 2 - math.floor(math.log10(abs(reference))))
    return min(decimals, 2) if unit is Unit.RATE else decimals


def _scaled(value: float, unit: Unit) -> float:
    return 100 * value if unit is Unit.RATE else value


def _number(value: float, decimals: int, *, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "-"
    text = f"{value:{'+' if signed else ''},.{decimals}f}"
    # A difference that rounds to nothing reads +0, never -0.
    return text.replace("-", "+") if signed and float(text.replace(",", "")) == 0 else text


def format_value(value: float, unit: Unit) -> str:
    """One group's value, with its unit: "1,240 ms", "95.1%", "0.00213 USD", "0.812"."""
    if not math.isfinite(value):
        return "-"
    scaled = _scaled(value, unit)
    text = _number(scaled, _decimals(scaled, unit))
    return {Unit.MILLISECONDS: f"{text} ms", Unit.USD: f"{text} USD", Unit.RATE: f"{text}%"}.get(unit, text)


def _delta_decimals(difference: Difference) -> int:
    """Decimals for a difference and its interval: three significant digits of the widest of them,
    but no more than two decimals past the values' own (a difference of 1e-19 is a zero)."""
    d = difference
    widest = max((abs(v) for v in (d.delta, d.ci_low, d.ci_high) if math.isfinite(v)), default=0.0)
    scale = max((abs(v) for v in (d.a_value, d.b_value) if math.isfinite(v)), default=0.0)
    reference = max(widest, scale / 100) if widest > 0 else scale
    return _decimals(_scaled(reference, d.unit), d.unit)


def format_delta(difference: Difference) -> str:
    """B - A with its unit and, on ratio scales, relative to A: "+180 ms (+15.2%)", "-4.1 pp"."""
    if not math.isfinite(difference.delta):
        return "-"
    unit = difference.unit
    text = _number(_scaled(difference.delta, unit), _delta_decimals(difference), signed=True)
    text = {Unit.MILLISECONDS: f"{text} ms", Unit.USD: f"{text} USD", Unit.RATE: f"{text} pp"}.get(unit, text)
    if difference.relative_delta is not None and math.isfinite(difference.relative_delta):
        text += f" ({100 * difference.relative_delta:+.1f}%)"
    return text


def format_interval(difference: Difference) -> str:
    """The interval in the delta's units, without them: "[120, 240]"."""
    if not (math.isfinite(difference.ci_low) and math.isfinite(difference.ci_high)):
        return "-"
    decimals = _delta_decimals(difference)
    low = _number(_scaled(difference.ci_low, difference.unit), decimals, signed=True)
    high = _number(_scaled(difference.ci_high, difference.unit), decimals, signed=True)
    return f"[{low}, {high}]"


def describe(difference: Difference) -> str:
    """A measure's difference in a phrase: "latency p95 +180 ms (+15.2%) [120, 240]"."""
    return f"{difference.label} {format_delta(difference)} {format_interval(difference)}"


def _percent(share: float) -> str:
    return f"{100 * share:g}%"


def minimum_sample_sizes() -> dict[str, int]:
    """The floors below which a measure reads "not enough data" (see onfinish.insights.stats)."""
    return {
        "per_group": MIN_SAMPLES,
        "events_per_rate": MIN_EVENTS_FOR_RATE,
        "beyond_quantile": MIN_TAIL_FOR_QUANTILE,
        "p50": minimum_for_quantile(0.5),
        "p95": minimum_for_quantile(0.95),
    }


def _traffic(group: GroupSummary) -> str:
    calls = f"{group.calls:,} call{'' if group.calls == 1 else 's'}"
    return f"{calls}, {group.sessions:,} session{'' if group.sessions == 1 else 's'}"


def render_text(readout: Readout) -> str:
    """The readout as a plain-text table for a terminal, with its methods and limits stated."""
    a, b = readout.a, readout.b
    confidence = _percent(readout.confidence)
    header = ("measure", f"A: {a.name}", f"B: {b.name}", "B - A", f"{confidence} CI", "verdict", "method")
    rows = [header] + [
        (
            d.label,
            format_value(d.a_value, d.unit),
            format_value(d.b_value, d.unit),
            format_delta(d),
            format_interval(d),
            str(d.verdict),
            d.method,
        )
        for d in readout.differences
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    right_aligned = {1, 2, 3}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    minimums = minimum_sample_sizes()
    lines = [
        f"Readout: B = {b.name} against A = {a.name}",
        f"  A {a.name}: {_traffic(a)}",
        f"  B {b.name}: {_traffic(b)}",
        f"Verdict: {readout.verdict}",
        "",
        line(header),
        "  ".join("-" * width for width in widths),
        *(line(row) for row in rows[1:]),
        "",
        f"Intervals: {confidence} confidence for each measure. Verdicts are B's, Holm-adjusted over the "
        f"{readout.tested} tested measures, so two identical groups get a false 'better' or 'worse' "
        f"on some measure at most about {_percent(1 - readout.confidence)} of the time.",
        f"Not enough data below: {minimums['per_group']} calls (sessions, streamed or scored calls, as "
        f"the measure counts them) per group; {minimums['events_per_rate']} of each outcome over both "
        f"groups for a rate; {minimums['beyond_quantile']} calls beyond a quantile per group "
        f"(p50: {minimums['p50']}, p95: {minimums['p95']}).",
    ]
    notes = [f"  {d.label}: {d.note}" for d in readout.differences if d.note]
    if notes:
        lines += ["Notes:", *notes]
    return "\n".join(lines) + "\n"


def _json_number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _group_json(group: GroupSummary) -> dict[str, Any]:
    return {
        "name": group.name,
        "calls": group.calls,
        "sessions": group.sessions,
        "values": {key: _json_number(value) for key, value in group.values.items()},
    }


def to_json(readout: Readout) -> dict[str, Any]:
    """The readout as plain JSON types; NaN and infinities become None."""
    return {
        "a": _group_json(readout.a),
        "b": _group_json(readout.b),
        "confidence": readout.confidence,
        "adjustment": readout.adjustment,
        "tested_measures": readout.tested,
        "resamples": readout.resamples,
        "seed": readout.seed,
        "outcome": str(readout.outcome),
        "verdict": readout.verdict,
        "minimum_sample_sizes": minimum_sample_sizes(),
        "differences": [
            {
                "measure": d.measure,
                "label": d.label,
                "unit": str(d.unit),
                "direction": str(d.direction),
                "a_value": _json_number(d.a_value),
                "b_value": _json_number(d.b_value),
                "delta": _json_number(d.delta),
                "relative_delta": _json_number(d.relative_delta),
                "ci_low": _json_number(d.ci_low),
                "ci_high": _json_number(d.ci_high),
                "method": d.method,
                "p_value": _json_number(d.p_value),
                "adjusted_p_value": _json_number(d.adjusted_p_value),
                "verdict": str(d.verdict),
                "note": d.note,
            }
            for d in readout.differences
        ],
    }
