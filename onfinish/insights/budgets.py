"""Budgets: cost limits per feature, user or environment, alerted when projected to be exceeded.

Budgets are versioned data (``data/budgets.v1.toml`` by default), validated at load. A budget
covers one UTC calendar day or calendar month, and one subject of its scope: a feature_id, a
(pseudonymised, as stored) user_id or an environment, or ``"*"`` for each subject of the scope
separately (every user gets its own $5 a day). The spend itself is queried at the edge; this module
only decides, purely, from a :class:`Spend` and the time.

Projection of end-of-period spend (:func:`project`), with ``e`` the seconds elapsed in the period
and ``R`` the seconds remaining::

    run rate     = spent_usd / e                       (the period so far)
    recent rate  = recent_usd / recent_seconds         (the last hour)
    rate         = (1 - w) * run rate + w * recent rate,   w = RECENT_WEIGHT = 0.5
    projected    = spent_usd + rate * R

The run rate is stable but slow to see a change; the recent rate sees a runaway loop within the
hour but swings with every burst; half of each follows a surge without extrapolating one noisy
hour alone. Where one of the rates is missing the other is used; a finished period projects to
what was spent. Example: $30 spent by 06:00 with $2 in the last hour is run rate $5/h, recent
$2/h, rate $3.50/h, projected $30 + 18 h * $3.50 = $93.

Alerts (:func:`evaluate`), at most one of each kind per budget, subject and period (the
``alert_id`` hashes exactly those):

- ``exceeded``: spent >= limit, always, at any time of the period.
- ``projected``: projected >= warn_at * limit, once at least MIN_ELAPSED_FRACTION (5%: 72 minutes
  of a day, about a day and a half of a month) of the period has passed, since a projection from
  the first minutes extrapolates noise. The gate does not apply when the actual spend has already
  reached warn_at * limit: that is a fact, not an extrapolation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import isfinite
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from onfinish.settings import load_toml_document

BUDGETS_RESOURCE: Final = ("data", "budgets.v1.toml")

Scope = Literal["feature", "user", "environment"]
Period = Literal["day", "month"]
Severity = Literal["info", "warning", "critical"]
BreachKind = Literal["exceeded", "projected"]
ProjectionMethod = Literal["complete", "blended", "run_rate", "recent_rate", "spent"]

EACH_SUBJECT: Final = "*"
RECENT_WEIGHT: Final = 0.5
MIN_ELAPSED_FRACTION: Final = 0.05

_SCOPES: Final = ("feature", "user", "environment")
_PERIODS: Final = ("day", "month")
_PER_PERIOD: Final = {"day": "daily", "month": "monthly"}


class Budget(BaseModel):
    """A spend limit for one subject (or each subject) of a scope over a calendar period."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    scope: Scope
    subject: str = Field(min_length=1)
    period: Period
    limit_usd: float = Field(gt=0.0, allow_inf_nan=False)
    warn_at: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    severity: Severity = "warning"

    def applies_to(self, spend: Spend) -> bool:
        return (
            spend.scope == self.scope
            and spend.period == self.period
            and self.subject in (EACH_SUBJECT, spend.subject)
        )


class BudgetBook(BaseModel):
    """A validated budget file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    budget: list[Budget] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> BudgetBook:
        names = [budget.name for budget in self.budget]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"budget names must be unique, repeated: {duplicates}")
        return self


def load_budgets(path: Path | None = None) -> BudgetBook:
    """Read and validate a budget file; without a path, the example budgets shipped with onfinish."""
    return load_toml_document(BudgetBook, "budgets", "onfinish.insights", BUDGETS_RESOURCE, path)


def period_bounds(period: Period, now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar day or month containing ``now``: [start, end), both aware UTC."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{now} must be timezone-aware")
    utc = now.astimezone(UTC)
    if period == "day":
        start = datetime(utc.year, utc.month, utc.day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    start = datetime(utc.year, utc.month, 1, tzinfo=UTC)
    return start, datetime(utc.year + utc.month // 12, utc.month % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Spend:
    """What one subject of a scope has spent so far in the period starting at ``period_start``.

    ``recent_usd`` is the spend of the last ``recent_seconds`` (an hour, or less at the start of
    the stored history); zero seconds means no recent rate is known.
    """

    scope: Scope
    subject: str
    period: Period
    period_start: datetime
    spent_usd: float
    recent_usd: float = 0.0
    recent_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.scope not in _SCOPES or self.period not in _PERIODS:
            raise ValueError(f"unknown scope {self.scope!r} or period {self.period!r}")
        if period_bounds(self.period, self.period_start)[0] != self.period_start:
            raise ValueError(f"{self.period_start} is not the start of a UTC calendar {self.period}")
        amounts = (self.spent_usd, self.recent_usd, self.recent_seconds)
        if not all(isfinite(amount) and amount >= 0.0 for amount in amounts):
            raise ValueError(f"spend amounts and seconds must be finite and >= 0, got {amounts}")


@dataclass(frozen=True)
class Projection:
    """End-of-period spend as projected now, and how (see the module docstring)."""

    projected_usd: float
    method: ProjectionMethod
    elapsed_fraction: float
    rate_usd_per_hour: float


@dataclass(frozen=True)
class BudgetBreach:
    """A budget exceeded, or projected to be, by one subject in one period."""

    budget: str
    scope: Scope
    subject: str
    period: Period
    period_start: datetime
    spent_usd: float
    projected_usd: float
    limit_usd: float
    severity: Severity
    kind: BreachKind
    message: str
    alert_id: str


def project(spend: Spend, now: datetime) -> Projection:
    """Project the spend's end-of-period total from its run rate and its recent rate."""
    start, end = period_bounds(spend.period, spend.period_start)
    length = (end - start).total_seconds()
    elapsed = min(max((now - start).total_seconds(), 0.0), length)
    remaining = length - elapsed
    if remaining == 0.0:
        return Projection(spend.spent_usd, "complete", 1.0, 0.0)
    run_rate = spend.spent_usd / elapsed if elapsed > 0.0 else None
    recent_rate = spend.recent_usd / spend.recent_seconds if spend.recent_seconds > 0.0 else None
    method: ProjectionMethod
    if run_rate is not None and recent_rate is not None:
        rate, method = (1.0 - RECENT_WEIGHT) * run_rate + RECENT_WEIGHT * recent_rate, "blended"
    elif run_rate is not None:
        rate, method = run_rate, "run_rate"
    elif recent_rate is not None:
        rate, method = recent_rate, "recent_rate"
    else:
        rate, method = 0.0, "spent"
    return Projection(spend.spent_usd + rate * remaining, method, elapsed / length, rate * 3600.0)


def evaluate(
    budgets: BudgetBook | Iterable[Budget], spends: Iterable[Spend], now: datetime
) -> list[BudgetBreach]:
    """The breaches of every budget by every spend it applies to, in budget then spend order.

    A spend of a period already over is evaluated as complete (projected = spent). Call as often as
    convenient: the same breach comes back with the same ``alert_id`` until the period ends.
    """
    book = budgets.budget if isinstance(budgets, BudgetBook) else list(budgets)
    spends = list(spends)
    breaches = []
    for budget in book:
        for spend in spends:
            if not budget.applies_to(spend):
                continue
            projection = project(spend, now)
            warn_line = budget.warn_at * budget.limit_usd
            if spend.spent_usd >= budget.limit_usd:
                breaches.append(_breach(budget, spend, projection, "exceeded"))
            elif projection.projected_usd >= warn_line and (
                projection.elapsed_fraction >= MIN_ELAPSED_FRACTION or spend.spent_usd >= warn_line
            ):
                breaches.append(_breach(budget, spend, projection, "projected"))
    return breaches


def _breach(budget: Budget, spend: Spend, projection: Projection, kind: BreachKind) -> BudgetBreach:
    period_start = spend.period_start.astimezone(UTC)
    key = "\x1f".join((budget.name, spend.subject, period_start.isoformat(), kind))
    budget_words = f"${budget.limit_usd:,.2f} {_PER_PERIOD[budget.period]} budget {budget.name}"
    if kind == "exceeded":
        message = (
            f"The {budget.scope} {spend.subject} has spent ${spend.spent_usd:,.2f} this {budget.period}, "
            f"over its {budget_words}."
        )
    else:
        message = (
            f"The {budget.scope} {spend.subject} is projected to spend ${projection.projected_usd:,.2f} "
            f"this {budget.period} (${spend.spent_usd:,.2f} so far), "
            f"{projection.projected_usd / budget.limit_usd:.0%} of its {budget_words}."
        )
    return BudgetBreach(
        budget=budget.name,
        scope=budget.scope,
        subject=spend.subject,
        period=budget.period,
        period_start=period_start,
        spent_usd=spend.spent_usd,
        projected_usd=projection.projected_usd,
        limit_usd=budget.limit_usd,
        severity=budget.severity,
        kind=kind,
        message=message,
        alert_id=hashlib.sha256(key.encode()).hexdigest()[:32],
    )
