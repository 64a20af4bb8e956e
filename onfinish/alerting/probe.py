"""A synthetic episode sent end to end, and where it arrived: what `onfinish alerts test` runs.

The probe fires one episode of the rule `onfinish_alerts_test` (severity info, a subject of its
own) and resolves it, the way the insights worker does: each record to onfinish.alerts first, then
to Alertmanager. It reports every place the episode reached: Kafka's acknowledgement, Alertmanager
(which receivers it routed it to, or the silence that muted it), the local webhook receiver's
firing and resolved notifications, and the sink's alert_episodes view. A production Alertmanager
should route `rule="onfinish_alerts_test"` to a quiet receiver (deploy/alertmanager does).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from onfinish.alerting.alertmanager import (
    AlertmanagerClient,
    AlertmanagerRefused,
    AlertmanagerUnavailable,
    alertmanager_alert,
)
from onfinish.alerting.episodes import Episode, Labels, Transition
from onfinish.alerting.notifier import LASTS_RESENDS
from onfinish.alerting.records import AlertSink, episode_record
from onfinish.alerting.settings import AlertingSettings
from onfinish.alerting.webhook import read_notifications
from onfinish.errors import OnfinishError
from onfinish.query.client import Querier, records
from onfinish.query.sql import sql_string
from onfinish.schemas.models import Alert

PROBE_RULE = "onfinish_alerts_test"


@dataclass(frozen=True)
class Hop:
    """One place the episode should reach: whether it did (None: not checked) and what was seen."""

    place: str
    reached: bool | None
    detail: str


@dataclass
class ProbeReport:
    subject: str
    episode_id: str
    hops: list[Hop] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        """Kafka and Alertmanager took it; what was checked beyond them got it too."""
        return all(hop.reached is not False for hop in self.hops)


def probe_episode(now: datetime) -> Episode:
    subject = f"alerts-test/{uuid.uuid4().hex[:8]}"
    return Episode(
        episode_id=f"test-{uuid.uuid4().hex[:24]}",
        rule=PROBE_RULE,
        rules_version=1,
        severity="info",
        subject_kind="test",
        subject=subject,
        labels=Labels(),
        started_at=now,
        fired_at=now,
        observed=1.0,
        peak=1.0,
        threshold=0.0,
        message="A test episode sent by `onfinish alerts test`: nothing is wrong.",
    )


def _wait(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.5) -> float | None:
    """Seconds until `check` held, or None if it did not within `timeout_s`."""
    began = time.monotonic()
    while True:
        if check():
            return time.monotonic() - began
        if time.monotonic() - began >= timeout_s:
            return None
        time.sleep(poll_s)


def run_probe(
    publisher: AlertSink,
    client: AlertmanagerClient,
    settings: AlertingSettings,
    *,
    notifications: Path | None,
    querier: Querier | None,
    topic: str,
    timeout_s: float = 30.0,
    progress: Callable[[str], None] = lambda _: None,
) -> ProbeReport:
    """Fire, then resolve, one synthetic episode, and report where it arrived."""
    began = datetime.now(UTC)
    episode = probe_episode(began)
    report = ProbeReport(episode.subject, episode.episode_id)
    firing = episode_record(Transition("firing", episode))
    ended = datetime.now(UTC)
    resolved = episode_record(Transition("resolved", _ended(episode, ended)))

    def post(record: Alert) -> None:
        lasts = timedelta(seconds=LASTS_RESENDS * settings.resend_s)
        client.post_alerts(
            [
                alertmanager_alert(
                    record, now=datetime.now(UTC), lasts=lasts, dashboard_url=settings.dashboard_url
                )
            ]
        )

    progress("publishing the firing record")
    try:
        publisher.publish_alerts([firing])
        report.hops.append(Hop(f"Kafka {topic}", True, "firing record acknowledged"))
    except OnfinishError as exc:
        report.hops.append(Hop(f"Kafka {topic}", False, str(exc)))
    progress("posting it to Alertmanager")
    try:
        post(firing)
        held: list[dict[str, object]] = []

        def listed() -> bool:
            held[:] = client.alerts({"subject": episode.subject})
            return bool(held)

        if _wait(listed, timeout_s) is None:
            report.hops.append(
                Hop(f"Alertmanager {client.url}", False, "accepted the post, but does not list it")
            )
        else:
            report.hops.append(Hop(f"Alertmanager {client.url}", True, _routing(held[0])))
    except (AlertmanagerUnavailable, AlertmanagerRefused) as exc:
        report.hops.append(Hop(f"Alertmanager {client.url}", False, str(exc)))
        return report
    if notifications is not None:
        progress("waiting for the webhook receiver's firing notification")
        report.hops.append(_arrival(notifications, episode.subject, "firing", began, timeout_s))
    progress("resolving it")
    try:
        publisher.publish_alerts([resolved])
        post(resolved)
    except (OnfinishError, AlertmanagerUnavailable, AlertmanagerRefused) as exc:
        report.hops.append(Hop("resolution", False, str(exc)))
        return report
    if notifications is not None:
        progress("waiting for the webhook receiver's resolved notification")
        report.hops.append(_arrival(notifications, episode.subject, "resolved", began, timeout_s))
    if querier is not None:
        progress("waiting for ClickHouse")
        report.hops.append(_stored(querier, episode.episode_id, timeout_s))
    return report


def _ended(episode: Episode, at: datetime) -> Episode:
    return replace(episode, ended_at=at, resolved_at=at)


def _routing(alert: dict[str, object]) -> str:
    status = alert.get("status")
    state = status.get("state", "?") if isinstance(status, dict) else "?"
    silenced = status.get("silencedBy") if isinstance(status, dict) else None
    receivers = alert.get("receivers")
    names = (
        [str(r.get("name")) for r in receivers if isinstance(r, dict)] if isinstance(receivers, list) else []
    )
    detail = f"{state}, routed to {', '.join(names) or 'no receiver'}"
    return detail + (f"; silenced by {', '.join(map(str, silenced))}" if silenced else "")


def _arrival(path: Path, subject: str, status: str, since: datetime, timeout_s: float) -> Hop:
    place = f"webhook receiver ({status})"

    def arrived() -> bool:
        return any(
            n.status == status and any(a.get("labels", {}).get("subject") == subject for a in n.alerts)
            for n in read_notifications(path, since)
        )

    seconds = _wait(arrived, timeout_s)
    if seconds is None:
        return Hop(place, False, f"no {status} notification in {path} within {timeout_s:.0f}s")
    return Hop(place, True, f"{status} notification after {seconds:.1f}s in {path}")


def _stored(querier: Querier, episode_id: str, timeout_s: float) -> Hop:
    sql = f"SELECT open FROM alert_episodes WHERE episode_id = {sql_string(episode_id)}"  # noqa: S608

    def resolved() -> bool:
        rows = records(querier.query(sql))
        return bool(rows) and not rows[0]["open"]

    try:
        seconds = _wait(resolved, timeout_s)
    except OnfinishError as exc:
        return Hop("ClickHouse alert_episodes", None, f"not checked: {exc}")
    if seconds is None:
        return Hop(
            "ClickHouse alert_episodes",
            False,
            f"the episode is not stored as resolved after {timeout_s:.0f}s",
        )
    return Hop("ClickHouse alert_episodes", True, f"stored, fired and resolved, after {seconds:.1f}s")
