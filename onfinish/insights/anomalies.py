"""Anomalies: each 1-minute series against a streaming baseline of its own history.

A series is one (provider, model_id, feature_id). Each rule of the rule book
(``data/anomaly_rules.v1.toml`` by default, validated at load) keeps, per series, a baseline of
one metric (``error_rate``, ``latency_p95_ms``, ``ttft_p95_ms`` or ``cost_per_minute_usd``) and
fires when a minute lands more than ``k = threshold_spreads`` robust spreads away from it.

The baseline, for a minute's value ``x`` (``level`` and ``mad`` as they were before it)::

    spread    = max(C * mad, min_spread_abs, min_spread_rel * |level|)
    breach    = x > level + k * spread        (direction "above")
                x < level - k * spread        (direction "below")
    r         = clip(x - level, -H * spread, +H * spread)           H = 2 (Huber clip)
    level    += alpha * r
    mad      += alpha * (|r| - mad)

``mad`` is an exponentially weighted mean absolute deviation of the (clipped) one-step-ahead
residuals, and ``C = 1 / E[min(|Z|, H)] ≈ 1.28`` (Z standard normal) rescales it so that, on
Gaussian noise, ``spread`` estimates the standard deviation: ``k = 4`` reads as "4 sigma". The
residual is taken against the level *before* the update, so the spread also carries the
uncertainty of the baseline itself.

Why this is robust to the outliers it must detect: absolute deviations weigh an outlier
linearly, not squared as a variance would, and the Huber clip caps what any one minute can do. A
breaching minute (at least ``k > H`` spreads away) moves the level by at most ``alpha * H``
spreads and the spread by a factor of at most ``1 + alpha * (C * H - 1) ≈ 1.16``; a spike of a few
minutes is therefore not absorbed into its own baseline, while a lasting level shift still is,
within about ten minutes, so it ends as one episode instead of alerting forever.

Warm-up: the first ``min_history`` eligible minutes of a series update the baseline without
clipping, with weight ``max(alpha, 1/n)`` (a plain running mean until the EWMA takes over, so the
first value does not dominate) and never alert. A minute is *eligible* for a rule when it has at
least ``min_calls`` calls and a finite value for the metric: rates over a handful of calls are
noise, so other minutes neither update nor alert nor count towards the warm-up, and neither start
nor end a breach episode. Missing minutes are simply not observed: the baseline decays per observed minute,
never by wall clock.

Episodes: consecutive breaching minutes of a rule and series are one anomaly, reported at the
first of them by `observe`; an eligible minute within the baseline ends it, and the next breach
fires again. :attr:`Anomaly.alert_id` is the hash of rule, series and that first minute. The
insights worker uses `judge` instead (every eligible minute's verdict) and leaves the episodes to
onfinish/alerting/episodes.py, with the rule's `for_minutes` and `cooldown_minutes`.

State: the detector keeps its state in memory only and is rebuilt at start by re-feeding recent
history (the stored 1-minute windows) in time order. That is deterministic, and a minute's
influence on the baseline decays as ``(1 - alpha)**n`` over the n eligible minutes after it (below
1% after 44 at ``alpha = 0.1``), so re-feeding ``min_history`` plus a couple of hundred minutes
reproduces a long-running detector's baseline closely.
Minutes not after a series' last observed minute are ignored, so feeding overlapping history twice
is harmless and raises nothing twice.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime
from math import isfinite
from pathlib import Path
from statistics import NormalDist
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from onfinish.settings import load_toml_document

RULES_RESOURCE: Final = ("data", "anomaly_rules.v1.toml")

Metric = Literal["error_rate", "latency_p95_ms", "ttft_p95_ms", "cost_per_minute_usd"]
Direction = Literal["above", "below"]
Severity = Literal["info", "warning", "critical"]

MESSAGE_PLACEHOLDERS: Final = frozenset({"observed", "baseline", "spread", "threshold"})

# Residuals are clipped at HUBER_CLIP spreads before they update the baseline: 2 sigma leaves
# ordinary Gaussian noise almost untouched (under 5% of minutes are clipped at all) and is well
# below any sensible threshold, so a breaching minute is always clipped.
HUBER_CLIP: Final = 2.0
_NORMAL: Final = NormalDist()
# C = 1 / E[min(|Z|, H)]: makes C * mad a consistent estimate of sigma on Gaussian noise.
SPREAD_PER_MAD: Final = 1.0 / (
    2.0 * (_NORMAL.pdf(0.0) - _NORMAL.pdf(HUBER_CLIP)) + 2.0 * HUBER_CLIP * (1.0 - _NORMAL.cdf(HUBER_CLIP))
)


class AnomalyRule(BaseModel):
    """One metric's baseline and the distance from it that counts as an anomaly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    metric: Metric
    direction: Direction = "above"
    alpha: float = Field(default=0.1, gt=0.0, le=1.0, allow_inf_nan=False)
    threshold_spreads: float = Field(default=4.0, gt=HUBER_CLIP, allow_inf_nan=False)
    min_history: int = Field(default=30, ge=1)
    min_calls: int = Field(default=20, ge=1)
    min_spread_abs: float = Field(gt=0.0, allow_inf_nan=False)
    min_spread_rel: float = Field(default=0.05, ge=0.0, allow_inf_nan=False)
    severity: Severity = "warning"
    message: str = Field(min_length=1)
    # The episode's timing (onfinish/alerting/episodes.py): fire at the first breaching minute, and
    # resolve only after this many minutes back within the baseline, so a flapping series is one.
    for_minutes: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    cooldown_minutes: float = Field(default=5.0, ge=0.0, allow_inf_nan=False)

    @field_validator("message")
    @classmethod
    def _known_placeholders(cls, message: str) -> str:
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(message) if name is not None]
        except ValueError as error:
            raise ValueError(f"message template {message!r} is malformed: {error}") from error
        unknown = sorted(set(fields) - MESSAGE_PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"message template has unknown placeholders {unknown}; "
                f"allowed: {sorted(MESSAGE_PLACEHOLDERS)}"
            )
        try:
            message.format(observed=1.0, baseline=1.0, spread=1.0, threshold=1.0)
        except (ValueError, TypeError) as error:
            raise ValueError(f"message template {message!r} does not format numbers: {error}") from error
        return message


class AnomalyRuleBook(BaseModel):
    """A validated anomaly rule file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    rule: list[AnomalyRule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> AnomalyRuleBook:
        names = [rule.name for rule in self.rule]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique, repeated: {duplicates}")
        return self


def load_anomaly_rules(path: Path | None = None) -> AnomalyRuleBook:
    """Read and validate an anomaly rule file; without a path, the rules shipped with onfinish."""
    return load_toml_document(AnomalyRuleBook, "anomaly rules", "onfinish.insights", RULES_RESOURCE, path)


@dataclass(frozen=True)
class SeriesKey:
    """What a baseline is kept for: one model of one provider serving one feature."""

    provider: str
    model_id: str
    feature_id: str


@dataclass(frozen=True)
class MinuteMetrics:
    """One series' 1-minute window, as rolled up from its calls."""

    provider: str
    model_id: str
    feature_id: str
    minute: datetime
    calls: int
    errors: int
    latency_p95_ms: float | None
    ttft_p95_ms: float | None
    cost_usd: float

    def __post_init__(self) -> None:
        if self.minute.tzinfo is None or self.minute.utcoffset() is None:
            raise ValueError(f"minute {self.minute} must be timezone-aware (UTC)")
        if self.calls < 0 or not 0 <= self.errors <= self.calls:
            raise ValueError(f"need 0 <= errors <= calls, got errors={self.errors} calls={self.calls}")

    @property
    def series(self) -> SeriesKey:
        return SeriesKey(self.provider, self.model_id, self.feature_id)

    def value(self, metric: Metric) -> float | None:
        """The minute's value of a metric, or None where the minute has none."""
        if metric == "error_rate":
            return self.errors / self.calls if self.calls else None
        if metric == "latency_p95_ms":
            return self.latency_p95_ms
        if metric == "ttft_p95_ms":
            return self.ttft_p95_ms
        return self.cost_usd


@dataclass(frozen=True)
class Anomaly:
    """A breach of a rule's baseline: the first minute of an episode."""

    rule: str
    severity: Severity
    metric: Metric
    provider: str
    model_id: str
    feature_id: str
    minute: datetime
    observed: float
    baseline: float
    spread: float
    threshold: float
    message: str
    alert_id: str


@dataclass(frozen=True)
class Judgement:
    """One eligible minute of a series against one rule's baseline, as it was before the minute."""

    rule: AnomalyRule
    minute: MinuteMetrics
    observed: float
    breached: bool
    baseline: float
    spread: float
    threshold: float

    @property
    def message(self) -> str:
        return self.rule.message.format(
            observed=self.observed, baseline=self.baseline, spread=self.spread, threshold=self.threshold
        )


@dataclass
class Baseline:
    """One rule's streaming baseline of one series (see the module docstring for the formulas)."""

    rule: AnomalyRule
    level: float = 0.0
    mad: float = 0.0
    observations: int = 0
    in_breach: bool = False

    @property
    def warm(self) -> bool:
        return self.observations >= self.rule.min_history

    @property
    def spread(self) -> float:
        return max(
            SPREAD_PER_MAD * self.mad, self.rule.min_spread_abs, self.rule.min_spread_rel * abs(self.level)
        )

    @property
    def threshold(self) -> float:
        distance = self.rule.threshold_spreads * self.spread
        return self.level + distance if self.rule.direction == "above" else self.level - distance

    def breached_by(self, value: float) -> bool:
        if not self.warm:
            return False
        return value > self.threshold if self.rule.direction == "above" else value < self.threshold

    def update(self, value: float) -> None:
        """Fold one eligible minute into the baseline."""
        if self.observations == 0:
            self.level, self.mad = value, 0.0
        elif not self.warm:
            # Running means until 1/n falls to alpha; the first residual exists at the second minute.
            residual = value - self.level
            self.level += max(self.rule.alpha, 1.0 / (self.observations + 1)) * residual
            self.mad += max(self.rule.alpha, 1.0 / self.observations) * (abs(residual) - self.mad)
        else:
            bound = HUBER_CLIP * self.spread
            residual = min(max(value - self.level, -bound), bound)
            self.level += self.rule.alpha * residual
            self.mad += self.rule.alpha * (abs(residual) - self.mad)
        self.observations += 1


@dataclass
class _SeriesState:
    last_minute: datetime
    baselines: dict[str, Baseline] = field(default_factory=dict)


class AnomalyDetector:
    """Feeds every minute to every rule's baseline of its series; reports new breach episodes.

    Not thread-safe; state lives in memory and is rebuilt by re-feeding history (module docstring).
    """

    def __init__(self, rules: AnomalyRuleBook) -> None:
        self._rules = rules
        self._series: dict[SeriesKey, _SeriesState] = {}

    def observe(self, minute: MinuteMetrics) -> list[Anomaly]:
        """Fold one minute into its series' baselines; the anomalies that start at this minute.

        Minutes of a series must come in increasing time order; one not after the series' last
        observed minute is ignored (returns no anomalies).
        """
        return [
            _anomaly(judgement)
            for judgement, started in self._judge(minute)
            if judgement.breached and started
        ]

    def judge(self, minute: MinuteMetrics) -> list[Judgement]:
        """Fold one minute into its series' baselines; every eligible rule's judgement of it (the
        insights worker turns breaches into episodes). Same ordering rule as `observe`."""
        return [judgement for judgement, _ in self._judge(minute)]

    def _judge(self, minute: MinuteMetrics) -> list[tuple[Judgement, bool]]:
        """The judgements of a minute, each with whether its breach starts a run of breaches."""
        key = minute.series
        state = self._series.get(key)
        if state is None:
            state = self._series[key] = _SeriesState(last_minute=minute.minute)
        elif minute.minute <= state.last_minute:
            return []
        state.last_minute = minute.minute

        judgements = []
        for rule in self._rules.rule:
            value = minute.value(rule.metric)
            if minute.calls < rule.min_calls or value is None or not isfinite(value):
                continue
            baseline = state.baselines.setdefault(rule.name, Baseline(rule))
            breached = baseline.breached_by(value)
            judgement = Judgement(
                rule, minute, value, breached, baseline.level, baseline.spread, baseline.threshold
            )
            judgements.append((judgement, breached and not baseline.in_breach))
            baseline.in_breach = breached
            baseline.update(value)
        return judgements


def _anomaly(judgement: Judgement) -> Anomaly:
    rule, minute = judgement.rule, judgement.minute
    at = minute.minute.astimezone(UTC)
    series = "\x1f".join((rule.name, minute.provider, minute.model_id, minute.feature_id, at.isoformat()))
    return Anomaly(
        rule=rule.name,
        severity=rule.severity,
        metric=rule.metric,
        provider=minute.provider,
        model_id=minute.model_id,
        feature_id=minute.feature_id,
        minute=at,
        observed=judgement.observed,
        baseline=judgement.baseline,
        spread=judgement.spread,
        threshold=judgement.threshold,
        message=judgement.message,
        alert_id=hashlib.sha256(series.encode()).hexdigest()[:32],
    )
