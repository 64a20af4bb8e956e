"""The insights worker: anomalies, budgets and version drift, raised as alerts while traffic flows.

`onfinish watch` runs `Watch.tick` every `interval_s`:

1. **Anomalies.** Every 1-minute window that has closed (the processors' allowed lateness and the
   sink's batching have passed) is summed per model and feature over the raw partitions (calls,
   errors, cost; p95 latency and TTFT from the merged histograms) and fed, in time order, to the
   streaming baseline of anomalies.py. At start the baseline is rebuilt by feeding the last
   `history_minutes` first (deterministic, so a restart judges the next minute as before).
2. **Budgets.** Spend so far in the current day and month per feature, user and environment (at
   current prices, from current_events), with the last hour's, against the budgets file.
3. **Drift.** Every `drift_interval_s`, each model's newest version against the previous one.

Everything found becomes an Alert (v2, with the baseline when there is one) on onfinish.alerts.
Alert ids are deterministic, so re-sending one (after a restart) replaces it in ClickHouse; the
worker also remembers what it sent, to send each once while it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from onfinish.insights.anomalies import Anomaly, AnomalyDetector, MinuteMetrics, load_anomaly_rules
from onfinish.insights.budgets import BudgetBook, BudgetBreach, Spend, evaluate, load_budgets, period_bounds
from onfinish.insights.readouts import drift, drift_alert
from onfinish.query.client import Querier, records, timestamp
from onfinish.query.sql import sql_timestamp
from onfinish.schemas.histogram_grid import DEFAULT_GRID
from onfinish.schemas.models import Alert
from onfinish.sinks.tables import REPRICING_PARTITION

log = logging.getLogger(__name__)
MINUTE = timedelta(minutes=1)
SCOPES = {"feature": "feature_id", "user": "user_id", "environment": "environment"}


class InsightSettings(BaseSettings):
    """The insights worker (`onfinish watch`)."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_INSIGHTS_")

    interval_s: float = Field(
        default=30.0, gt=0, description="How often closed minutes and budgets are checked."
    )
    settle_s: float = Field(
        default=180.0,
        ge=0,
        description="How long after its end a minute is final (processors' lateness plus sink batching).",
    )
    history_minutes: int = Field(
        default=24 * 60, ge=0, description="Minutes fed to the anomaly baseline at start, before judging."
    )
    anomaly_rules: Path | None = Field(
        default=None, description="Anomaly rules file; empty: the packaged anomaly_rules.v1.toml."
    )
    budgets: Path | None = Field(
        default=None, description="Budgets file; empty: the packaged budgets.v1.toml."
    )
    drift_interval_s: float = Field(
        default=3600.0, gt=0, description="How often model versions are compared for drift."
    )
    drift_since_s: int = Field(
        default=7 * 24 * 3600, gt=0, description="How far back drift comparisons look, in seconds."
    )


class AlertSink(Protocol):
    def publish_alerts(self, alerts: Iterable[Alert]) -> int: ...


def minutes_sql(start: datetime, end: datetime) -> str:
    """Per closed minute, model and feature in [start, end): the sums the anomaly rules look at."""
    quantile = DEFAULT_GRID.clickhouse_quantile_expression

    return f"""
SELECT
    minute, provider, model_id, feature_id, calls_total, errors_total, cost_total,
    if(calls_total = 0, NULL, {quantile("latency_histogram", 0.95)}) AS latency_p95_ms,
    if(ttft_n = 0, NULL, {quantile("ttft_histogram", 0.95)}) AS ttft_p95_ms
FROM
(
    SELECT
        window_start AS minute,
        provider,
        model_id,
        feature_id,
        sum(events) AS calls_total,
        sum(errors) AS errors_total,
        sum(cost_usd) AS cost_total,
        sum(ttft_count) AS ttft_n,
        sumForEach(latency_counts) AS latency_histogram,
        sumForEach(ttft_counts) AS ttft_histogram
    FROM windows_1m FINAL
    WHERE window_start >= {sql_timestamp(start)} AND window_start < {sql_timestamp(end)}
        AND raw_partition != {REPRICING_PARTITION}
    GROUP BY minute, provider, model_id, feature_id
)
ORDER BY minute, provider, model_id, feature_id
"""  # noqa: S608 - timestamps formatted here and grid literals


def minutes(q: Querier, start: datetime, end: datetime) -> list[MinuteMetrics]:
    def optional(value: Any) -> float | None:
        return None if value is None else float(value)

    return [
        MinuteMetrics(
            provider=str(row["provider"]),
            model_id=str(row["model_id"]),
            feature_id=str(row["feature_id"]),
            minute=timestamp(row["minute"]),
            calls=int(row["calls_total"]),
            errors=int(row["errors_total"]),
            latency_p95_ms=optional(row["latency_p95_ms"]),
            ttft_p95_ms=optional(row["ttft_p95_ms"]),
            cost_usd=float(row["cost_total"]),
        )
        for row in records(q.query(minutes_sql(start, end)))
    ]


def spends_sql(scope: str, start: datetime, now: datetime) -> str:
    column = SCOPES[scope]

    return f"""
SELECT toString({column}) AS subject, sum(cost_usd) AS spent,
    sumIf(cost_usd, finished_at >= {sql_timestamp(now - timedelta(hours=1))}) AS recent
FROM current_events
WHERE finished_at >= {sql_timestamp(start)} AND finished_at < {sql_timestamp(now)} AND {column} IS NOT NULL
GROUP BY subject
"""  # noqa: S608 - the column comes from SCOPES, the rest are timestamps formatted here


def spends(q: Querier, book: BudgetBook, now: datetime) -> list[Spend]:
    """Spend so far in the current period of every (scope, period) a budget of the book names."""
    wanted = {(budget.scope, budget.period) for budget in book.budget}
    found = []
    for scope, period in sorted(wanted):
        start, _ = period_bounds(period, now)
        recent_seconds = min(3600.0, (now - start).total_seconds())
        for row in records(q.query(spends_sql(scope, start, now))):
            found.append(
                Spend(
                    scope=scope,
                    subject=str(row["subject"]),
                    period=period,
                    period_start=start,
                    spent_usd=float(row["spent"]),
                    recent_usd=float(row["recent"]),
                    recent_seconds=recent_seconds,
                )
            )
    return found


def anomaly_alert(anomaly: Anomaly, rules_version: int) -> Alert:
    return Alert(
        alert_id=anomaly.alert_id,
        rule=anomaly.rule,
        rules_version=rules_version,
        severity=anomaly.severity,
        subject_kind="series",
        subject=f"{anomaly.provider}/{anomaly.model_id}/{anomaly.feature_id or '-'}"[:256],
        observed=anomaly.observed,
        threshold=anomaly.threshold,
        baseline=anomaly.baseline,
        provider=anomaly.provider,
        model_id=anomaly.model_id,
        at=anomaly.minute,
        message=anomaly.message[:1000],
        raw_partition=0,
    )


def budget_alert(breach: BudgetBreach, rules_version: int, now: datetime) -> Alert:
    return Alert(
        alert_id=breach.alert_id,
        rule=breach.budget,
        rules_version=rules_version,
        severity=breach.severity,
        subject_kind="budget",
        subject=f"{breach.scope}:{breach.subject}:{breach.period_start:%Y-%m-%d}"[:256],
        observed=breach.spent_usd if breach.kind == "exceeded" else breach.projected_usd,
        threshold=breach.limit_usd,
        at=now,
        message=breach.message[:1000],
        raw_partition=0,
    )


@dataclass
class Watch:
    """The worker's state: the anomaly baseline, what was judged and sent, when drift last ran."""

    querier: Querier
    publisher: AlertSink
    settings: InsightSettings = field(default_factory=InsightSettings)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def __post_init__(self) -> None:
        self.rules = load_anomaly_rules(self.settings.anomaly_rules)
        self.budgets = load_budgets(self.settings.budgets)
        self.detector = AnomalyDetector(self.rules)
        self.judged_until: datetime | None = None  # minutes before this were fed to the detector
        self.sent: set[str] = set()
        self.drift_checked = 0.0

    def _settled(self, now: datetime) -> datetime:
        """The end of the last minute that is final now."""
        moment = now - timedelta(seconds=self.settings.settle_s)
        return moment.replace(second=0, microsecond=0)

    def tick(self) -> list[Alert]:
        """One round: new closed minutes, budgets, and drift when due. Returns the alerts sent."""
        now = self.clock()
        alerts = self._anomalies(now) + self._budgets(now)
        if time.monotonic() - self.drift_checked >= self.settings.drift_interval_s or not self.drift_checked:
            self.drift_checked = time.monotonic()
            alerts += self._drift(now)
        fresh = [alert for alert in alerts if alert.alert_id not in self.sent]
        if fresh:
            self.publisher.publish_alerts(fresh)
            self.sent.update(alert.alert_id for alert in fresh)
            log.info("alerts sent", extra={"alerts": len(fresh)})
        return fresh

    def _anomalies(self, now: datetime) -> list[Alert]:
        end = self._settled(now)
        start = self.judged_until or end - MINUTE * self.settings.history_minutes
        if start >= end:
            return []
        found: list[Anomaly] = []
        for minute in minutes(self.querier, start, end):
            found += self.detector.observe(minute)
        self.judged_until = end
        return [anomaly_alert(anomaly, self.rules.version) for anomaly in found]

    def _budgets(self, now: datetime) -> list[Alert]:
        breaches = evaluate(self.budgets, spends(self.querier, self.budgets, now), now)
        return [budget_alert(breach, self.budgets.version, now) for breach in breaches]

    def _drift(self, now: datetime) -> list[Alert]:
        alerts = []
        for dimension in ("model_version", "prompt_template_id"):
            for found in drift(self.querier, dimension=dimension, seconds=self.settings.drift_since_s):
                if found.worse:
                    alerts.append(drift_alert(found, at=now))
        return alerts

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # ClickHouse or Kafka away: the next round tries again
                log.warning("insights round failed; retrying", extra={"error": str(exc)[:300]})
            stop.wait(self.settings.interval_s)
