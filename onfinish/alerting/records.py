"""Episodes as records on onfinish.alerts, and back from what the sink stored of them.

A firing record's alert_id is ``<episode_id>-firing`` and is sent again (same id, higher peak)
while the episode is open; the resolved record is ``<episode_id>-resolved``. Both are keyed by
rule and subject, so every record of one subject lands on one partition, in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from onfinish.alerting.episodes import Episode, Labels, Transition
from onfinish.schemas.models import MAX_ID_CHARS, MAX_TEXT_CHARS, Alert


class AlertSink(Protocol):
    """Where alert records are published: onfinish.alerts (RecordPublisher), or a list in tests."""

    def publish_alerts(self, alerts: Iterable[Alert]) -> int: ...


def record_key(alert: Alert) -> bytes:
    """The Kafka key of an alert record: an episode's are keyed by rule and subject (DESIGN.md's
    key of onfinish.alerts, one partition per subject, in order); a fact by its own id."""
    if alert.state == "fact":
        return alert.alert_id.encode()
    return f"{alert.rule}|{alert.subject}".encode()


def episode_record(transition: Transition) -> Alert:
    """The record that publishes a transition: a firing record (fired, or its peak grew) or the
    resolved one."""
    episode = transition.episode
    state = "resolved" if transition.kind == "resolved" else "firing"
    at = episode.resolved_at if state == "resolved" else episode.fired_at
    assert at is not None
    labels = episode.labels
    return Alert(
        alert_id=f"{episode.episode_id}-{state}",
        rule=episode.rule,
        rules_version=episode.rules_version,
        severity=episode.severity,
        subject_kind=episode.subject_kind,
        subject=episode.subject[:MAX_ID_CHARS],
        observed=episode.observed,
        threshold=episode.threshold,
        baseline=episode.baseline,
        provider=labels.provider or None,
        model_id=labels.model_id or None,
        at=at,
        message=episode.message[:MAX_TEXT_CHARS],
        raw_partition=0,
        state=state,
        episode_id=episode.episode_id,
        started_at=episode.started_at,
        ended_at=episode.ended_at if state == "resolved" else None,
        peak=episode.peak,
        feature_id=labels.feature_id or None,
        environment=labels.environment or None,
    )


def episode_of(alert: Alert) -> Episode:
    """The episode a firing or resolved record describes."""
    if alert.episode_id is None or alert.started_at is None:
        raise ValueError(f"alert {alert.alert_id} is a fact, not an episode's record")
    return Episode(
        episode_id=alert.episode_id,
        rule=alert.rule,
        rules_version=alert.rules_version,
        severity=alert.severity,
        subject_kind=alert.subject_kind,
        subject=alert.subject,
        labels=Labels(alert.provider, alert.model_id, alert.feature_id, alert.environment),
        started_at=alert.started_at,
        fired_at=alert.at if alert.state == "firing" else alert.started_at,
        observed=alert.observed,
        peak=alert.peak if alert.peak is not None else alert.observed,
        threshold=alert.threshold,
        message=alert.message,
        baseline=alert.baseline,
        ended_at=alert.ended_at,
        resolved_at=alert.at if alert.state == "resolved" else None,
    )


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def episode_from_row(row: Mapping[str, Any]) -> Episode:
    """An episode from a row of the alert_episodes view (sinks/migrations/0006_alert_episodes.sql)."""
    started = _time(row["started_at"])
    fired = _time(row["fired_at"]) or started
    assert started is not None and fired is not None
    return Episode(
        episode_id=str(row["episode_id"]),
        rule=str(row["rule"]),
        rules_version=int(row["rules_version"]),
        severity=str(row["severity"]),
        subject_kind=str(row["subject_kind"]),
        subject=str(row["subject"]),
        labels=Labels(
            _text(row["provider"]),
            _text(row["model_id"]),
            _text(row["feature_id"]),
            _text(row["environment"]),
        ),
        started_at=started,
        fired_at=fired,
        observed=float(row["observed"]),
        peak=float(row["peak"]) if row["peak"] is not None else float(row["observed"]),
        threshold=float(row["threshold"]),
        message=str(row["message"]),
        baseline=float(row["baseline"]) if row.get("baseline") is not None else None,
        ended_at=_time(row["ended_at"]),
        resolved_at=_time(row["resolved_at"]),
    )
