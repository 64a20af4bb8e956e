"""The insights worker: alert conditions, anomalies, budgets and drift, raised as alert episodes.

`onfinish watch` runs `Watch.tick` every `interval_s`:

1. **Alert conditions** (onfinish/alerting, when alerting is enabled). One round per minute
   boundary once the minute before it has settled (`ONFINISH_ALERTING_SETTLE_S`): every rate and
   percentile condition over its window of whole minutes, merged across the raw partitions.
2. **Anomalies.** Every 1-minute window that has closed (the processors' allowed lateness and the
   sink's batching have passed) is summed per model and feature over the raw partitions (calls,
   errors, cost; p95 latency and TTFT from the merged histograms) and fed, in time order, to the
   streaming baseline of anomalies.py: one round per minute.
3. **Budgets.** Spend so far in the current day and month per feature, user and environment (at
   current prices, from current_events), with the last hour's, against the budgets file.
4. **Drift.** Every `drift_interval_s`, each model's newest version against the previous one.

Every finding goes through one episode tracker (onfinish/alerting/episodes.py): an episode fires
once its rule has held for the rule's `for` duration, stays one while it holds, and resolves once
it has stopped holding for the cooldown. Its firing and resolved records go to onfinish.alerts
(Alert v3, with one episode id), and then to Alertmanager through the notifier.

At start the worker rebuilds what it knew: it reads back the episodes published before (open,
and recently resolved) once the sink has stored every record on onfinish.alerts, replays the
last minutes of conditions and the anomaly history quietly, keeps the published episodes' ids,
fires what the replay found open and nobody published, and posts the open ones (and the recently
resolved) to Alertmanager again. A restart therefore neither fires an open episode twice nor
loses its resolution; an episode that began and ended while no worker ran is left to the tables.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from onfinish.alerting.alertmanager import AlertmanagerClient
from onfinish.alerting.conditions import ConditionBook, load_conditions
from onfinish.alerting.episodes import EpisodeTracker, Finding, Labels, RuleInfo, Timing, Transition
from onfinish.alerting.evaluation import FAMILY as CONDITIONS
from onfinish.alerting.evaluation import ConditionRounds
from onfinish.alerting.notifier import Notifier
from onfinish.alerting.records import AlertSink, episode_record
from onfinish.alerting.settings import AlertingSettings
from onfinish.alerting.store import Published, StoredEpisodes
from onfinish.errors import ConfigurationError
from onfinish.insights.anomalies import (
    AnomalyDetector,
    AnomalyRuleBook,
    Judgement,
    MinuteMetrics,
    load_anomaly_rules,
)
from onfinish.insights.budgets import BudgetBook, BudgetBreach, Spend, evaluate, load_budgets, period_bounds
from onfinish.insights.readouts import DRIFT_RULE, drift, drift_alert
from onfinish.query.client import Querier, records, timestamp
from onfinish.query.sql import sql_timestamp
from onfinish.schemas.histogram_grid import DEFAULT_GRID
from onfinish.schemas.models import Alert
from onfinish.settings import OnfinishSettings
from onfinish.sinks.tables import REPRICING_PARTITION

log = logging.getLogger(__name__)
MINUTE = timedelta(minutes=1)
SCOPES = {"feature": "feature_id", "user": "user_id", "environment": "environment"}


class InsightSettings(OnfinishSettings):
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


@runtime_checkable
class AlertTopic(Protocol):
    """A sink that can say where onfinish.alerts ends (RecordPublisher), for the restore's wait."""

    def alert_ends(self) -> Mapping[int, int]: ...


class PublishedEpisodes(Protocol):
    def read(self, now: datetime, resolved_within: timedelta) -> Published: ...


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


ANOMALIES, BUDGETS, DRIFT = "anomaly", "budget", "drift"


def anomaly_finding(judgement: Judgement, rules_version: int) -> Finding:
    """An anomaly rule's breach of one minute of a series (at: the minute's start)."""
    rule, minute = judgement.rule, judgement.minute
    return Finding(
        family=ANOMALIES,
        rule=rule.name,
        rules_version=rules_version,
        severity=rule.severity,
        subject_kind="series",
        subject=f"{minute.provider}/{minute.model_id}/{minute.feature_id or '-'}"[:256],
        observed=judgement.observed,
        threshold=judgement.threshold,
        message=judgement.message[:1000],
        at=minute.minute.astimezone(UTC),
        timing=Timing(timedelta(minutes=rule.for_minutes), timedelta(minutes=rule.cooldown_minutes)),
        baseline=judgement.baseline,
        direction=rule.direction,
        labels=Labels(
            provider=minute.provider, model_id=minute.model_id, feature_id=minute.feature_id or None
        ),
    )


def budget_finding(breach: BudgetBreach, rules_version: int, now: datetime) -> Finding:
    """A budget exceeded or projected to be, by one subject in one period."""
    return Finding(
        family=BUDGETS,
        rule=breach.budget,
        rules_version=rules_version,
        severity=breach.severity,
        subject_kind="budget",
        subject=f"{breach.scope}:{breach.subject}:{breach.period_start:%Y-%m-%d}"[:256],
        observed=breach.spent_usd if breach.kind == "exceeded" else breach.projected_usd,
        threshold=breach.limit_usd,
        message=breach.message[:1000],
        at=now,
        labels=Labels(
            feature_id=breach.subject if breach.scope == "feature" else None,
            environment=breach.subject if breach.scope == "environment" else None,
        ),
    )


def drift_finding(alert: Alert) -> Finding:
    """A model version found worse than the one before (from the drift readout's alert)."""
    return Finding(
        family=DRIFT,
        rule=alert.rule,
        rules_version=alert.rules_version,
        severity=alert.severity,
        subject_kind=alert.subject_kind,
        subject=alert.subject,
        observed=alert.observed,
        threshold=alert.threshold,
        message=alert.message,
        at=alert.at,
        labels=Labels(provider=alert.provider, model_id=alert.model_id),
    )


def rule_index(
    conditions: ConditionBook | None, anomalies: AnomalyRuleBook, budgets: BudgetBook
) -> dict[str, RuleInfo]:
    """Every rule name the worker raises episodes for, with its family and timing; names must be
    unique across the files, since a name is an episode's `rule` and Alertmanager's alertname."""
    index: dict[str, RuleInfo] = {}
    owners: dict[str, str] = {}

    def add(name: str, owner: str, info: RuleInfo) -> None:
        if name in owners:
            raise ConfigurationError(
                f"rule name {name!r} is used by both the {owners[name]} and the {owner}: rename one"
            )
        owners[name] = owner
        index[name] = info

    for condition in conditions.rule if conditions else ():
        add(
            condition.name,
            "alert conditions",
            RuleInfo(CONDITIONS, Timing(condition.for_duration, condition.cooldown)),
        )
    for rule in anomalies.rule:
        timing = Timing(timedelta(minutes=rule.for_minutes), timedelta(minutes=rule.cooldown_minutes))
        add(rule.name, "anomaly rules", RuleInfo(ANOMALIES, timing, rule.direction))
    for budget in budgets.budget:
        add(budget.name, "budgets", RuleInfo(BUDGETS, Timing()))
    add(DRIFT_RULE, "drift readouts", RuleInfo(DRIFT, Timing()))
    return index


@dataclass
class Watch:
    """The worker's state: baselines, condition rounds, episodes, and when drift last ran."""

    querier: Querier
    publisher: AlertSink
    settings: InsightSettings = field(default_factory=InsightSettings)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    alerting: AlertingSettings = field(default_factory=AlertingSettings)
    notifier: Notifier | None = None  # built from `alerting` when it is enabled and none is given
    published: PublishedEpisodes | None = None  # read back at start; the sink's alert_episodes by default

    def __post_init__(self) -> None:
        self.rules = load_anomaly_rules(self.settings.anomaly_rules)
        self.budgets = load_budgets(self.settings.budgets)
        self.detector = AnomalyDetector(self.rules)
        self.conditions: ConditionRounds | None = None
        book = None
        if self.alerting.enabled:
            book = load_conditions(self.alerting.rules)
            self.conditions = ConditionRounds(book, self.querier, self.alerting.settle_s)
            if self.notifier is None:
                client = AlertmanagerClient(
                    self.alerting.alertmanager_url,
                    timeout_s=self.alerting.timeout_s,
                    token=self.alerting.alertmanager_token,
                )
                self.notifier = Notifier(client, self.alerting, self.clock)
        self.tracker = EpisodeTracker(rules=rule_index(book, self.rules, self.budgets))
        if self.published is None:
            ends = self.publisher.alert_ends if isinstance(self.publisher, AlertTopic) else None
            self.published = StoredEpisodes(self.querier, ends, self.alerting.restore_wait_s)
        self.judged_until: datetime | None = None  # minutes before this were fed to the detector
        self.drift_checked = 0.0
        self.started = False

    def _settled(self, now: datetime) -> datetime:
        """The end of the last minute that is final now."""
        moment = now - timedelta(seconds=self.settings.settle_s)
        return moment.replace(second=0, microsecond=0)

    def tick(self) -> list[Alert]:
        """One round of everything due: returns the episode records published (and notified)."""
        now = self.clock()
        transitions = self._start(now) if not self.started else []
        transitions += self._conditions(now) + self._anomalies(now) + self._budgets(now)
        if time.monotonic() - self.drift_checked >= self.settings.drift_interval_s or not self.drift_checked:
            self.drift_checked = time.monotonic()
            transitions += self._drift(now)
        published = self._publish(transitions)
        if published:
            log.info(
                "alert episodes published",
                extra={"records": len(published), "open": len(self.tracker.open_episodes())},
            )
        return published

    def _publish(self, transitions: Iterable[Transition]) -> list[Alert]:
        """To onfinish.alerts first (the durable record), then to the notifier."""
        published = [episode_record(transition) for transition in transitions]
        if published:
            self.publisher.publish_alerts(published)
            if self.notifier is not None:
                self.notifier.hand(published)
        return published

    def _start(self, now: datetime) -> list[Transition]:
        """Rebuild the state a running worker had (module docstring); the catch-up transitions."""
        assert self.published is not None
        horizon = max(
            timedelta(seconds=self.alerting.resend_resolved_s),
            MINUTE * self.settings.history_minutes,
            MINUTE * (self.conditions.replay_minutes if self.conditions else 0),
        )
        published = self.published.read(now, horizon)  # may fail: nothing has changed yet then
        replayed = self._conditions(now) + self._anomalies(now)
        resolved = (e.episode_id for e in published.resolved)
        catch_up = self.tracker.reconcile(published.open, resolved, now, replayed)
        self.started = True
        if self.notifier is not None:
            # At least once: what a predecessor may not have delivered is posted again.
            again = [Transition("firing", episode) for episode in self.tracker.open_episodes()]
            recent = now - timedelta(seconds=self.alerting.resend_resolved_s)
            again += [
                Transition("resolved", e)
                for e in published.resolved
                if e.resolved_at is not None and e.resolved_at >= recent
            ]
            self.notifier.hand(episode_record(t) for t in again)
        log.info(
            "alert episodes restored",
            extra={
                "open": len(published.open),
                "resolved_recently": len(published.resolved),
                "caught_up": len(catch_up),
            },
        )
        return catch_up

    def _conditions(self, now: datetime) -> list[Transition]:
        if self.conditions is None:
            return []
        transitions = []
        for at, findings in self.conditions.rounds(now):
            transitions += self.tracker.round(CONDITIONS, at, findings)
        return transitions

    def _anomalies(self, now: datetime) -> list[Transition]:
        end = self._settled(now)
        start = self.judged_until or end - MINUTE * self.settings.history_minutes
        if start >= end:
            return []
        by_minute: dict[datetime, list[MinuteMetrics]] = {}
        for minute in minutes(self.querier, start, end):
            by_minute.setdefault(minute.minute, []).append(minute)
        transitions = []
        at = start
        while at < end:  # a round for every minute, so that a quiet series ends its episode
            findings = [
                anomaly_finding(judgement, self.rules.version)
                for minute in by_minute.get(at, [])
                for judgement in self.detector.judge(minute)
                if judgement.breached
            ]
            transitions += self.tracker.round(ANOMALIES, at, findings)
            at += MINUTE
        self.judged_until = end
        return transitions

    def _budgets(self, now: datetime) -> list[Transition]:
        breaches = evaluate(self.budgets, spends(self.querier, self.budgets, now), now)
        findings = [budget_finding(breach, self.budgets.version, now) for breach in breaches]
        return self.tracker.round(BUDGETS, now, findings)

    def _drift(self, now: datetime) -> list[Transition]:
        findings = []
        for dimension in ("model_version", "prompt_template_id"):
            for found in drift(self.querier, dimension=dimension, seconds=self.settings.drift_since_s):
                if found.worse:
                    findings.append(drift_finding(drift_alert(found, at=now)))
        return self.tracker.round(DRIFT, now, findings)

    def run(self, stop: threading.Event) -> None:
        if self.notifier is not None:
            self.notifier.start()
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except Exception as exc:  # ClickHouse or Kafka away: the next round tries again
                    log.warning("insights round failed; retrying", extra={"error": str(exc)[:300]})
                stop.wait(self.settings.interval_s)
        finally:
            if self.notifier is not None:
                self.notifier.stop()
