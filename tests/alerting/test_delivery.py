"""Delivery: an episode as an Alertmanager alert, the notifier's at-least-once posting (against a
fake Alertmanager), the webhook receiver, and the records an episode travels as."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from onfinish.alerting.alertmanager import (
    AlertmanagerRefused,
    AlertmanagerUnavailable,
    alertmanager_alert,
    dashboard_link,
    labels_of,
)
from onfinish.alerting.episodes import Episode, Labels, Transition
from onfinish.alerting.notifier import Notifier
from onfinish.alerting.records import episode_of, episode_record, record_key
from onfinish.alerting.settings import AlertingSettings
from onfinish.alerting.webhook import WebhookReceiver, read_notifications
from onfinish.schemas.models import Alert

NOW = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)


def episode(**overrides: Any) -> Episode:
    fields: dict[str, Any] = {
        "episode_id": "e1",
        "rule": "ttft_slow_share",
        "rules_version": 1,
        "severity": "warning",
        "subject_kind": "series",
        "subject": "openai/gpt-4o/production",
        "labels": Labels(provider="openai", model_id="gpt-4o", environment="production"),
        "started_at": NOW - timedelta(minutes=10),
        "fired_at": NOW - timedelta(minutes=5),
        "observed": 0.45,
        "peak": 0.5,
        "threshold": 0.2,
        "message": "45% of 300 calls in 5 minutes had a time to first token above 1500 ms (limit 20%)",
    }
    fields.update(overrides)
    return Episode(**fields)


def firing(**overrides: Any) -> Alert:
    return episode_record(Transition("firing", episode(**overrides)))


def resolved(**overrides: Any) -> Alert:
    ended = {"ended_at": NOW - timedelta(minutes=1), "resolved_at": NOW}
    return episode_record(Transition("resolved", episode(**{**ended, **overrides})))


# --- records --------------------------------------------------------------------------------------


def test_an_episode_travels_as_a_firing_then_a_resolved_record_under_one_id():
    fired, ended = firing(), resolved()
    assert (fired.alert_id, fired.state, fired.at) == ("e1-firing", "firing", NOW - timedelta(minutes=5))
    assert (ended.alert_id, ended.state, ended.at) == ("e1-resolved", "resolved", NOW)
    assert fired.episode_id == ended.episode_id == "e1"
    assert fired.ended_at is None and ended.ended_at == NOW - timedelta(minutes=1)
    assert (fired.model_id, fired.feature_id, fired.environment) == ("gpt-4o", None, "production")
    assert record_key(fired) == record_key(ended) == b"ttft_slow_share|openai/gpt-4o/production"
    back = episode_of(ended)
    assert (back.episode_id, back.started_at, back.peak, back.resolved_at) == (
        "e1",
        NOW - timedelta(minutes=10),
        0.5,
        NOW,
    )


def test_facts_are_keyed_by_their_own_id():
    fact = Alert(
        alert_id="f1", rule="ttft_high", rules_version=2, severity="warning", subject_kind="request",
        subject="r1", observed=2100.0, threshold=1500.0, at=NOW, message="m", raw_partition=3,
    )  # fmt: skip
    assert fact.state == "fact" and record_key(fact) == b"f1"
    with pytest.raises(ValueError, match="facts have none"):
        fact.model_copy(update={"episode_id": "e1"}).model_validate(fact.model_dump() | {"episode_id": "e1"})


# --- the Alertmanager alert -----------------------------------------------------------------------


def test_a_firing_episode_is_an_alertmanager_alert_with_its_labels_and_annotations():
    alert = alertmanager_alert(
        firing(), now=NOW, lasts=timedelta(minutes=4), dashboard_url="http://dash:8124/"
    )
    assert alert["labels"] == {
        "alertname": "ttft_slow_share",
        "rule": "ttft_slow_share",
        "severity": "warning",
        "subject": "openai/gpt-4o/production",
        "model": "gpt-4o",
        "environment": "production",
        "source": "onfinish",
    }
    annotations = alert["annotations"]
    assert annotations["message"].startswith("45% of 300 calls")
    assert (annotations["observed"], annotations["threshold"], annotations["peak"]) == ("0.45", "0.2", "0.5")
    assert annotations["episode_id"] == "e1"
    assert annotations["dashboard"] == "http://dash:8124/?since=30&model=gpt-4o"
    assert alert["generatorURL"] == annotations["dashboard"]
    assert alert["startsAt"] == "2026-12-01T10:20:00Z"
    assert alert["endsAt"] == "2026-12-01T10:34:00Z"  # it lasts 4 minutes unless posted again


def test_a_resolved_episode_ends_when_its_condition_cleared():
    alert = alertmanager_alert(resolved(), now=NOW, lasts=timedelta(minutes=4), dashboard_url="http://d")
    assert alert["endsAt"] == "2026-12-01T10:29:00Z"


def test_facts_never_reach_alertmanager():
    fact = firing().model_copy(update={"state": "fact", "episode_id": None})
    with pytest.raises(ValueError, match="only episodes"):
        alertmanager_alert(fact, now=NOW, lasts=timedelta(minutes=4), dashboard_url="http://d")


def test_empty_labels_are_left_out_and_the_link_covers_the_episode():
    budget = firing(
        labels=Labels(), subject="user:u1:2026-12-01", subject_kind="budget", rule="each_user_daily"
    )
    assert set(labels_of(budget)) == {"alertname", "rule", "severity", "subject", "source"}
    assert dashboard_link("http://d", None, NOW - timedelta(hours=3), NOW) == "http://d/?since=360"
    assert dashboard_link("http://d", "m", NOW - timedelta(days=30), NOW) == "http://d/?since=10080&model=m"


# --- the notifier -----------------------------------------------------------------------------------


class FakeAlertmanager:
    """Alertmanager as the notifier sees it: it accepts posts, or is away, or refuses them."""

    def __init__(self) -> None:
        self.away = False
        self.refuse = False
        self.posts: list[list[dict[str, Any]]] = []
        self.url = "http://fake"

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        if self.away:
            raise AlertmanagerUnavailable("connection refused")
        if self.refuse:
            raise AlertmanagerRefused("400: invalid label")
        self.posts.append(alerts)


def _notifier(fake: FakeAlertmanager, **settings: Any) -> Notifier:
    fields = {"resend_s": 60.0, "retry_max_s": 0.2} | settings
    return Notifier(fake, AlertingSettings(**fields), clock=lambda: NOW)  # type: ignore[arg-type]


def _states(post: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (a["annotations"]["episode_id"], "resolved" if a["endsAt"] < "2026-12-01T10:30" else "firing")
        for a in post
    ]


def test_what_alertmanager_did_not_accept_is_kept_until_it_does():
    fake = FakeAlertmanager()
    notifier = _notifier(fake)
    fake.away = True
    notifier.hand([firing()])
    with pytest.raises(AlertmanagerUnavailable):
        notifier.deliver()
    assert notifier.pending == 1 and fake.posts == []
    fake.away = False
    assert notifier.deliver() == 1
    assert notifier.pending == 0 and _states(fake.posts[0]) == [("e1", "firing")]


def test_a_resolution_handed_over_while_away_replaces_its_firing():
    fake = FakeAlertmanager()
    notifier = _notifier(fake)
    fake.away = True
    notifier.hand([firing(), firing(episode_id="e2", subject="b")])
    notifier.hand([resolved()])
    fake.away = False
    notifier.deliver()
    assert sorted(_states(fake.posts[0])) == [("e1", "resolved"), ("e2", "firing")]
    assert notifier.open == 1


def test_open_episodes_are_posted_again_when_due_and_resolved_ones_are_not():
    fake = FakeAlertmanager()
    notifier = _notifier(fake, resend_s=0.05)
    notifier.hand([firing(), firing(episode_id="e2", subject="b")])
    notifier.deliver()
    notifier.hand([resolved(episode_id="e2", subject="b")])
    notifier.deliver()
    time.sleep(0.06)
    assert notifier.deliver() == 1
    assert _states(fake.posts[-1]) == [("e1", "firing")]
    assert notifier.deliver() == 0  # not due again yet, nothing pending


def test_facts_handed_over_are_ignored():
    fake = FakeAlertmanager()
    notifier = _notifier(fake)
    notifier.hand([firing().model_copy(update={"state": "fact", "episode_id": None})])
    assert notifier.pending == 0 and notifier.deliver() == 0


def test_alerts_alertmanager_refuses_are_logged_and_let_go(caplog: pytest.LogCaptureFixture):
    fake = FakeAlertmanager()
    notifier = _notifier(fake)
    fake.refuse = True
    notifier.hand([firing()])
    notifier.deliver()
    assert notifier.pending == 0 and "Alertmanager refused" in caplog.text


def test_the_thread_retries_with_backoff_until_alertmanager_is_back():
    fake = FakeAlertmanager()
    notifier = _notifier(fake, retry_max_s=0.2)
    fake.away = True
    notifier.start()
    try:
        notifier.hand([firing()])
        time.sleep(1.0)
        assert fake.posts == [] and notifier.failed_attempts >= 2
        fake.away = False
        deadline = time.monotonic() + 5
        while not fake.posts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _states(fake.posts[0]) == [("e1", "firing")]
    finally:
        notifier.stop()


def test_stopping_makes_one_last_attempt_for_what_is_pending():
    fake = FakeAlertmanager()
    notifier = _notifier(fake)
    notifier.hand([resolved()])
    notifier.stop()
    assert _states(fake.posts[0]) == [("e1", "resolved")]


# --- the webhook receiver ---------------------------------------------------------------------------


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _announce_too_much(url: str) -> int:
    """A POST whose headers announce more than the receiver takes: refused before any is read."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("Content-Length", str(1024 * 1024 + 1))
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_webhook_receiver_keeps_each_notification_as_a_line(tmp_path: Path):
    out = tmp_path / "notifications.jsonl"
    document = {
        "version": "4",
        "status": "firing",
        "receiver": "webhook",
        "groupLabels": {"rule": "ttft_slow_share", "subject": "openai/gpt-4o/production"},
        "alerts": [
            {
                "status": "firing",
                "labels": {"rule": "ttft_slow_share", "subject": "openai/gpt-4o/production"},
                "annotations": {"message": "45% slow"},
            }
        ],
    }
    with WebhookReceiver("127.0.0.1", 0, out).serving() as receiver:
        assert _post(receiver.url, json.dumps(document).encode()) == 200
        assert _post(receiver.url, b"not json") == 400
        assert _announce_too_much(receiver.url) == 413
        (received,) = receiver.received()
    (stored,) = read_notifications(out)
    assert stored.status == received.status == "firing"
    assert stored.group_labels == {"rule": "ttft_slow_share", "subject": "openai/gpt-4o/production"}
    assert "FIRING   ttft_slow_share on openai/gpt-4o/production: 45% slow" in stored.line()
    assert read_notifications(out, since=stored.received_at + timedelta(seconds=1)) == []
    assert read_notifications(tmp_path / "absent.jsonl") == []
