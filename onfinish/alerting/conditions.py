"""Alert conditions over populations: a rate or a percentile of a series' calls over a window.

A condition (``data/alert_conditions.v1.toml`` by default, validated at load) looks at one series
at a time: the calls of one combination of its ``by`` dimensions (by default provider, model and
environment) over the last ``window_minutes`` whole minutes, summed across the processors' raw
partitions (``windows_1m`` FINAL: every partition's latest snapshot of every minute). It holds
when the series' value is above ``threshold`` and the population it was computed over has at
least ``min_calls`` calls; a series below ``min_calls`` is not judged (a rate of 3 calls is noise).

Metrics (the population in brackets):

- ``error_rate``: failed calls / calls [calls]
- ``fallback_rate``: calls served by a fallback route / calls [calls]
- ``ttft_share_above``, ``latency_share_above``: share of calls whose time to first token (or
  latency) is above ``above_ms`` [calls with a TTFT, or calls]
- ``ttft_quantile``, ``latency_quantile``: the ``quantile`` of TTFT (or latency), e.g. p95
  [calls with a TTFT, or calls]

Both kinds come from the minutes' mergeable histograms (schemas/histogram_grid.py: a fixed
logarithmic grid with 2% relative accuracy), summed bucket by bucket. A quantile is the
representative of the bucket holding the value of its rank, within 2% of that value. A call counts
as above ``above_ms`` when its bucket's representative is above it: only calls within 2% of the
threshold can land on the wrong side (a TTFT of 1,490 ms or 1,530 ms against 1,500 ms).

Everything here is pure: the minutes come from the edge (onfinish/alerting/evaluation.py).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import compress
from math import isfinite
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from onfinish.schemas.histogram_grid import DEFAULT_GRID, BucketGrid, quantile_from_counts
from onfinish.settings import load_toml_document

RULES_RESOURCE: Final = ("data", "alert_conditions.v1.toml")

Metric = Literal[
    "error_rate",
    "fallback_rate",
    "ttft_share_above",
    "latency_share_above",
    "ttft_quantile",
    "latency_quantile",
]
Dimension = Literal["provider", "model_id", "feature_id", "environment"]
Severity = Literal["info", "warning", "critical"]

DIMENSIONS: Final[tuple[Dimension, ...]] = ("provider", "model_id", "feature_id", "environment")
RATE_METRICS: Final = frozenset({"error_rate", "fallback_rate", "ttft_share_above", "latency_share_above"})
SHARE_METRICS: Final = frozenset({"ttft_share_above", "latency_share_above"})
QUANTILE_METRICS: Final = frozenset({"ttft_quantile", "latency_quantile"})
MESSAGE_PLACEHOLDERS: Final = frozenset(
    {"observed", "threshold", "calls", "window_minutes", "above_ms", "quantile", "subject"}
)
# Longest window a rule may ask for: a day of minutes is what an evaluation may have to read.
MAX_WINDOW_MINUTES: Final = 24 * 60


class ConditionRule(BaseModel):
    """One condition: its metric over a window of a series, the threshold and the episode timing."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    metric: Metric
    threshold: float = Field(ge=0.0, allow_inf_nan=False)
    above_ms: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    quantile: float | None = Field(default=None, gt=0.0, lt=1.0)
    by: tuple[Dimension, ...] = ("provider", "model_id", "environment")
    window_minutes: int = Field(default=5, ge=1, le=MAX_WINDOW_MINUTES)
    min_calls: int = Field(default=50, ge=1)
    for_minutes: float = Field(default=5.0, ge=0.0, allow_inf_nan=False)
    cooldown_minutes: float = Field(default=10.0, ge=0.0, allow_inf_nan=False)
    severity: Severity = "warning"
    only: dict[Dimension, tuple[str, ...]] = Field(default_factory=dict)
    except_: dict[Dimension, tuple[str, ...]] = Field(default_factory=dict, alias="except")
    message: str = Field(min_length=1)

    @field_validator("by")
    @classmethod
    def _series_dimensions(cls, by: tuple[Dimension, ...]) -> tuple[Dimension, ...]:
        if not by:
            raise ValueError("a rule's series needs at least one dimension")
        if len(set(by)) != len(by):
            raise ValueError(f"dimensions repeated in {list(by)}")
        return tuple(d for d in DIMENSIONS if d in by)  # one canonical order: subjects stay stable

    @field_validator("message")
    @classmethod
    def _known_placeholders(cls, message: str) -> str:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(message) if name is not None]
        except ValueError as error:
            raise ValueError(f"message template {message!r} is malformed: {error}") from error
        unknown = sorted(set(names) - MESSAGE_PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"message template has unknown placeholders {unknown}; "
                f"allowed: {sorted(MESSAGE_PLACEHOLDERS)}"
            )
        try:
            message.format(**_example_fields())
        except (ValueError, TypeError) as error:
            raise ValueError(f"message template {message!r} does not format numbers: {error}") from error
        return message

    @model_validator(mode="after")
    def _parameters_fit_the_metric(self) -> ConditionRule:
        if (self.metric in SHARE_METRICS) != (self.above_ms is not None):
            raise ValueError(
                f"above_ms is required by ttft_share_above and latency_share_above, and only by them "
                f"(metric {self.metric}, above_ms {self.above_ms})"
            )
        if (self.metric in QUANTILE_METRICS) != (self.quantile is not None):
            raise ValueError(
                f"quantile is required by ttft_quantile and latency_quantile, and only by them "
                f"(metric {self.metric}, quantile {self.quantile})"
            )
        if self.metric in RATE_METRICS and self.threshold > 1.0:
            raise ValueError(
                f"{self.metric} is a share between 0 and 1; threshold {self.threshold} is above 1"
            )
        return self

    @property
    def for_duration(self) -> timedelta:
        return timedelta(minutes=self.for_minutes)

    @property
    def cooldown(self) -> timedelta:
        return timedelta(minutes=self.cooldown_minutes)

    def selects(self, series: Mapping[str, str]) -> bool:
        """Whether a series (its dimension values) is one this rule judges."""
        return all(series[d] in values for d, values in self.only.items()) and not any(
            series[d] in values for d, values in self.except_.items()
        )


def _example_fields() -> dict[str, object]:
    return {
        "observed": 1.0,
        "threshold": 1.0,
        "calls": 100,
        "window_minutes": 5,
        "above_ms": 1500.0,
        "quantile": 0.95,
        "subject": "openai/gpt-4o/production",
    }


class ConditionBook(BaseModel):
    """A validated file of alert conditions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    rule: tuple[ConditionRule, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ConditionBook:
        names = [rule.name for rule in self.rule]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique, repeated: {duplicates}")
        return self

    @property
    def longest_window(self) -> int:
        return max(rule.window_minutes for rule in self.rule)


def load_conditions(path: Path | None = None) -> ConditionBook:
    """Read and validate a conditions file; without a path, the conditions shipped with onfinish."""
    return load_toml_document(ConditionBook, "alert conditions", "onfinish.alerting", RULES_RESOURCE, path)


# --- what is measured ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesMinute:
    """One minute of one finest series (every dimension), summed across raw partitions."""

    minute: datetime
    provider: str
    model_id: str
    feature_id: str
    environment: str
    calls: int
    errors: int
    fallbacks: int
    ttft_calls: int
    latency_counts: Sequence[int]
    ttft_counts: Sequence[int]

    def dimension(self, name: Dimension) -> str:
        return str(getattr(self, name))

    @property
    def series(self) -> dict[str, str]:
        return {d: self.dimension(d) for d in DIMENSIONS}


@dataclass
class Population:
    """A series' calls over a window: counts and histograms, summed minute by minute."""

    grid: BucketGrid = DEFAULT_GRID
    calls: int = 0
    errors: int = 0
    fallbacks: int = 0
    ttft_calls: int = 0
    latency_counts: list[int] = field(default_factory=list)
    ttft_counts: list[int] = field(default_factory=list)

    def add(self, minute: SeriesMinute) -> None:
        self.calls += minute.calls
        self.errors += minute.errors
        self.fallbacks += minute.fallbacks
        self.ttft_calls += minute.ttft_calls
        self.latency_counts = _summed(self.latency_counts, minute.latency_counts)
        self.ttft_counts = _summed(self.ttft_counts, minute.ttft_counts)

    def size(self, metric: Metric) -> int:
        """How many calls a metric is computed over."""
        return self.ttft_calls if metric.startswith("ttft_") else self.calls

    def value(self, rule: ConditionRule) -> float | None:
        """The rule's metric for this population; None when it has fewer than min_calls calls."""
        size = self.size(rule.metric)
        if size < rule.min_calls or size == 0:
            return None
        metric = rule.metric
        if metric == "error_rate":
            return self.errors / self.calls
        if metric == "fallback_rate":
            return self.fallbacks / self.calls
        counts = self.ttft_counts if metric.startswith("ttft_") else self.latency_counts
        if not counts:
            return None
        if metric in SHARE_METRICS:
            assert rule.above_ms is not None
            return share_above(counts, rule.above_ms, self.grid)
        assert rule.quantile is not None
        return quantile_from_counts(counts, rule.quantile, self.grid)


def _summed(mine: list[int], theirs: Sequence[int]) -> list[int]:
    if not theirs:
        return mine
    if not mine:
        return list(theirs)
    return [a + b for a, b in zip(mine, theirs, strict=True)]


def share_above(counts: Sequence[int], above_ms: float, grid: BucketGrid = DEFAULT_GRID) -> float | None:
    """Share of the counted values whose bucket representative is above `above_ms`; None when empty."""
    if len(counts) != grid.bucket_count:
        raise ValueError(f"expected {grid.bucket_count} counts for this grid, got {len(counts)}")
    total = sum(counts)
    if total == 0:
        return None
    above = sum(compress(counts, (r > above_ms for r in grid.representatives())))
    return above / total


# --- judging a window ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """A rule's verdict on one series at one evaluation: its value and whether the condition holds."""

    rule: ConditionRule
    series: tuple[tuple[str, str], ...]  # (dimension, value) in the rule's `by` order
    at: datetime  # end of the window judged
    value: float
    calls: int

    @property
    def holds(self) -> bool:
        return self.value > self.rule.threshold

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.series)

    @property
    def subject(self) -> str:
        return "/".join(value or "-" for _, value in self.series)

    @property
    def message(self) -> str:
        rule = self.rule
        return rule.message.format(
            observed=self.value,
            threshold=rule.threshold,
            calls=self.calls,
            window_minutes=rule.window_minutes,
            above_ms=rule.above_ms if rule.above_ms is not None else 0.0,
            quantile=rule.quantile if rule.quantile is not None else 0.0,
            subject=self.subject,
        )


def judge(book: ConditionBook, minutes: Iterable[SeriesMinute], at: datetime) -> list[Judgement]:
    """Every rule's judgement of every series with enough calls in the window that ends at `at`.

    A series whose population is below the rule's min_calls gets no judgement (it is not judged,
    which the episodes read as "not holding"). Minutes outside a rule's window are ignored, so the
    caller may pass the longest window's minutes to every rule.
    """
    minutes = list(minutes)
    judgements = []
    for rule in book.rule:
        start = at - timedelta(minutes=rule.window_minutes)
        populations: dict[tuple[tuple[str, str], ...], Population] = {}
        for minute in minutes:
            if not start <= minute.minute < at:
                continue
            series = minute.series
            if not rule.selects(series):
                continue
            series_key: tuple[tuple[str, str], ...] = tuple((d, series[d]) for d in rule.by)
            populations.setdefault(series_key, Population()).add(minute)
        for key in sorted(populations):
            population = populations[key]
            value = population.value(rule)
            if value is not None and isfinite(value):
                judgements.append(Judgement(rule, key, at, value, population.size(rule.metric)))
    return judgements
