"""Alerts that reach people, on the real pipeline: processors, sink, chDB, `onfinish watch` as a process,
a real Alertmanager (the stack's component, built with Go) and a webhook receiver this test runs.

One timeline, about eight minutes, judged by the packaged alert conditions with their thresholds
as shipped and their timing shortened through a rules file of the test's own (windows of 1 minute
instead of 5, `for` and cooldown of 1 minute instead of 5 and 10; rounds every 2 s, minutes judged
15 s after they end, open episodes re-posted every 10 s):

1. demo-sized normal traffic (300 calls/s for 20 s), then 50 calls/s of normal traffic;
2. a silence on claude-haiku-4's subject, made with `onfinish alerts silence`;
3. from a minute boundary M, three minutes of gpt-4o and claude-haiku-4 with their time to first
   token tripled (ttft_slow_share holds: 47% of calls above 1.5 s against a 20% limit);
4. Alertmanager stopped from M+100 s until the gpt-4o episode has fired (at about M+135 s) and at
   least 60 s have passed, then started again;
5. once the firing notification arrived, `onfinish watch` killed (SIGKILL) and started again while
   the episode is still open; it resolves about two minutes after the slowdown ends;
6. `onfinish alerts test` at the end.

Each test reads its part of what happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from onfinish.alerting.alertmanager import AlertmanagerClient
from onfinish.alerting.conditions import RULES_RESOURCE
from onfinish.alerting.settings import AlertingSettings
from onfinish.alerting.webhook import Notification, WebhookReceiver
from onfinish.demo.local_pipeline import Demo
from onfinish.loadgen.traffic import Effect, TrafficProfile
from onfinish.processors.settings import ProcessorSettings
from onfinish.query.client import QueryClient
from onfinish.settings import StackSettings
from onfinish.sinks.settings import SinkSettings
from onfinish.stack.alertmanager import AlertmanagerServer, local_config
from onfinish.stack.stack import Stack
from tests.conftest import REPO
from tests.integration.pipeline import PORTS

# The timeline runs in the first test's setup: about nine minutes on a loaded two-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

ALERTMANAGER_PORT = 27194
RATE = 50.0
SLOW = ("gpt-4o", "claude-haiku-4")
SILENCED = "anthropic/claude-haiku-4/production"
PLANTED = "openai/gpt-4o/production"


def _shortened_rules(path: Path) -> None:
    """The packaged conditions, thresholds as shipped, windows and timing in single minutes."""
    from importlib.resources import files

    text = files("onfinish.alerting").joinpath(*RULES_RESOURCE).read_text()
    book = tomllib.loads(text)
    lines = [f"version = {book['version']}", ""]
    for rule in book["rule"]:
        rule.update(window_minutes=1, for_minutes=1, cooldown_minutes=1)
        lines.append("[[rule]]")
        for key, value in rule.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {_toml(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {_toml(value)}")
        lines.append("")
    path.write_text("\n".join(lines))


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


@dataclass
class Timeline:
    began: datetime
    degraded_from: datetime  # M
    degraded_until: datetime
    alertmanager_stopped: datetime | None = None
    alertmanager_started: datetime | None = None
    watch_killed: datetime | None = None
    notifications: list[Notification] = field(default_factory=list)
    silenced_state: dict[str, Any] = field(default_factory=dict)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    firing_records: int = 0
    probe: subprocess.CompletedProcess[str] | None = None
    silence: subprocess.CompletedProcess[str] | None = None

    def about(self, model: str, status: str | None = None) -> list[Notification]:
        return [
            n
            for n in self.notifications
            if any(a.get("labels", {}).get("model") == model for a in n.alerts)
            and (status is None or n.status == status)
        ]


class Watcher:
    """`onfinish watch` as a process of its own, logging to one file across restarts."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "onfinish", "watch"],
            env=self.env,
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _sleep_until(moment: datetime) -> None:
    left = (moment - datetime.now(UTC)).total_seconds()
    if left > 0:
        time.sleep(left)


def _wait_for(check: Any, until: datetime, what: str, log: Path) -> None:
    while not check():
        if datetime.now(UTC) > until:
            raise AssertionError(f"{what} by {until:%H:%M:%S}; watch log:\n{log.read_text()[-4000:]}")
        time.sleep(1)


@pytest.fixture(scope="module")
def timeline(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Timeline]:
    tmp = tmp_path_factory.mktemp("alerting")
    unique = f"t{os.urandom(5).hex()}"
    settings = stack.settings
    env = {
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
        "ONFINISH_REGISTRY_URL": settings.registry_url,
        "ONFINISH_KAFKA_TOPIC_PREFIX": unique,
        "ONFINISH_KAFKA_PARTITIONS": str(stack.kafka_settings.partitions),
        "ONFINISH_PROCESSOR_APP_ID": f"{unique}-processors",
        "ONFINISH_PROCESSOR_WEB_PORT": str(PORTS["processor"]),
        "ONFINISH_SINK_GROUP_PREFIX": f"{unique}-sinks",
        "ONFINISH_SINK_WEB_PORT": str(PORTS["sink_web"]),
        "ONFINISH_SINK_QUERY_PORT": str(PORTS["sink_query"]),
        "ONFINISH_CLICKHOUSE_DSN": f"chdb:///{tmp / 'clickhouse'}",
    }
    rules, budgets = tmp / "conditions.toml", tmp / "budgets.toml"
    _shortened_rules(rules)
    budgets.write_text(
        'version = 1\n\n[[budget]]\nname = "never"\nscope = "environment"\nsubject = "*"\n'
        'period = "day"\nlimit_usd = 1000000000.0\n'
    )
    alertmanager_url = f"http://127.0.0.1:{ALERTMANAGER_PORT}"
    watch_env = {
        **os.environ,
        **env,
        "ONFINISH_STACK_HOME": str(tmp / "home"),
        "ONFINISH_INSIGHTS_INTERVAL_S": "2",
        "ONFINISH_INSIGHTS_HISTORY_MINUTES": "10",
        "ONFINISH_INSIGHTS_BUDGETS": str(budgets),
        "ONFINISH_ALERTING_RULES": str(rules),
        "ONFINISH_ALERTING_ALERTMANAGER_URL": alertmanager_url,
        "ONFINISH_ALERTING_SETTLE_S": "15",
        "ONFINISH_ALERTING_RESEND_S": "10",
        "ONFINISH_ALERTING_RETRY_MAX_S": "5",
        "ONFINISH_ALERTING_RESTORE_WAIT_S": "30",
    }
    home = tmp / "home"
    with (
        pytest.MonkeyPatch.context() as patch,
        WebhookReceiver(
            "127.0.0.1", 0, out=StackSettings(home=home).notifications_path
        ).serving() as receiver,
    ):
        for name, value in env.items():
            patch.setenv(name, value)
        config = tmp / "alertmanager.yml"
        config.write_text(json.dumps(local_config(receiver.url)))
        alertmanager = AlertmanagerServer(
            StackSettings(home=tmp / "am", cache_dir=settings.cache_dir, alertmanager_port=ALERTMANAGER_PORT),
            AlertingSettings(alertmanager_config=config),
        )
        alertmanager.start()
        demo = Demo(settings, sink_settings=SinkSettings(), processor_settings=ProcessorSettings())
        demo.ensure_topics()
        watcher = Watcher(watch_env, tmp / "watch.log")
        try:
            demo.start_sink()
            demo.start_processors()
            watcher.start()
            yield _run(demo, watcher, alertmanager, receiver, watch_env, tmp)
        finally:
            watcher.stop()
            demo.stop()
            alertmanager.stop()


def _run(
    demo: Demo,
    watcher: Watcher,
    alertmanager: AlertmanagerServer,
    receiver: WebhookReceiver,
    env: dict[str, str],
    tmp: Path,
) -> Timeline:
    query = QueryClient(demo.query_url, timeout=20)
    client = AlertmanagerClient(alertmanager.settings.alertmanager_url)
    began = datetime.now(UTC)
    demo.send_traffic(300, 20, seed=31)  # demo-sized normal traffic
    boundary = (datetime.now(UTC) + timedelta(seconds=40)).replace(second=0, microsecond=0) + timedelta(
        minutes=1
    )
    line = Timeline(began, boundary, boundary + timedelta(seconds=180))

    def traffic() -> None:
        demo.send_traffic(RATE, (boundary - datetime.now(UTC)).total_seconds(), seed=32)
        slow = tuple(Effect(match=(("model_id", model),), latency_factor=3.0) for model in SLOW)
        demo.send_traffic(RATE, 180, seed=33, profile=TrafficProfile(effects=slow))
        demo.send_traffic(RATE, 170, seed=34)

    sender = threading.Thread(target=traffic, name="loadgen", daemon=True)
    sender.start()
    line.silence = subprocess.run(
        [sys.executable, "-m", "onfinish", "alerts", "silence", SILENCED, "--for", "1h", "--comment", "integration test"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert line.silence.returncode == 0, line.silence.stdout + line.silence.stderr

    def fired() -> bool:
        sql = f"SELECT count() FROM alerts FINAL WHERE state = 'firing' AND subject = '{PLANTED}'"
        return bool(query.query(sql).rows[0][0])

    # Alertmanager away while the episode opens: stopped before it can fire, started once it has
    # fired and at least 60 s have passed.
    _sleep_until(boundary + timedelta(seconds=100))
    assert not fired(), "the episode fired before Alertmanager was stopped: the scenario ran late"
    alertmanager.stop()
    line.alertmanager_stopped = datetime.now(UTC)
    _wait_for(fired, boundary + timedelta(seconds=240), "the gpt-4o episode did not fire", watcher.log)
    _sleep_until(line.alertmanager_stopped + timedelta(seconds=60))
    alertmanager.start()
    line.alertmanager_started = datetime.now(UTC)

    def notified(status: str) -> bool:
        return bool(
            Timeline(began, boundary, boundary, notifications=receiver.received()).about("gpt-4o", status)
        )

    _wait_for(
        lambda: notified("firing"), boundary + timedelta(seconds=300), "no firing notification", watcher.log
    )
    line.silenced_state = next(iter(client.alerts({"subject": SILENCED})), {})
    # The notifier (the watch worker) killed mid-episode, and started again.
    assert datetime.now(UTC) < boundary + timedelta(seconds=230), "too late for a restart mid-episode"
    watcher.kill()
    line.watch_killed = datetime.now(UTC)
    watcher.start()
    _wait_for(
        lambda: notified("resolved"),
        boundary + timedelta(seconds=480),
        "no resolved notification",
        watcher.log,
    )
    time.sleep(25)  # a duplicate, if any, would arrive now (two re-posts, Alertmanager's group interval)
    sender.join(300)
    line.probe = subprocess.run(
        [sys.executable, "-m", "onfinish", "alerts", "test", "--timeout", "60"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    line.notifications = receiver.received()
    rows = query.query(
        "SELECT episode_id, rule, subject, started_at, fired_at, ended_at, resolved_at, open, peak "
        "FROM alert_episodes WHERE rule != 'onfinish_alerts_test'"
    )
    line.episodes = [dict(zip(rows.columns, row, strict=True)) for row in rows.rows]
    # Every firing record of the episode, re-sent ones included (no FINAL): one identity.
    sql = f"SELECT uniqExact(alert_id) FROM alerts WHERE state = 'firing' AND subject = '{PLANTED}'"
    line.firing_records = int(query.query(sql).rows[0][0])
    return line


def _time(value: Any) -> datetime:
    moment = datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def test_normal_traffic_of_the_demos_size_notifies_nobody(timeline: Timeline):
    """Nothing before the slowdown: the demo's burst and two more minutes of normal traffic were
    judged by every condition, and no notification came."""
    before = [
        n for n in timeline.notifications if n.received_at < timeline.degraded_from + timedelta(seconds=60)
    ]
    assert before == []
    assert timeline.about("gpt-4o")  # the receiver and Alertmanager did work: later, they did notify


def test_a_planted_slowdown_is_one_firing_and_one_resolved_notification_for_that_model_only(
    timeline: Timeline,
):
    assert len(timeline.about("gpt-4o", "firing")) == 1, timeline.notifications
    assert len(timeline.about("gpt-4o", "resolved")) == 1, timeline.notifications
    (firing,) = timeline.about("gpt-4o", "firing")
    (alert,) = firing.alerts
    assert alert["labels"]["rule"] == "ttft_slow_share" and alert["labels"]["subject"] == PLANTED
    assert alert["annotations"]["dashboard"].endswith("model=gpt-4o")
    models = {a.get("labels", {}).get("model") for n in timeline.notifications for a in n.alerts}
    assert models <= {"gpt-4o", None}, f"notifications for other models: {models}"  # None: the test episode
    (episode,) = [e for e in timeline.episodes if e["subject"] == PLANTED]
    assert episode["rule"] == "ttft_slow_share" and not episode["open"]
    assert (
        timeline.degraded_from
        <= _time(episode["started_at"])
        <= timeline.degraded_from + timedelta(minutes=2)
    )
    assert (
        timeline.degraded_until
        <= _time(episode["ended_at"])
        <= timeline.degraded_until + timedelta(minutes=2)
    )
    assert episode["peak"] > 0.3


def test_a_silence_stops_the_notification(timeline: Timeline):
    """claude-haiku-4 slowed down as much: its episode reached Alertmanager, which muted it."""
    assert timeline.silence is not None and f"silenced subject={SILENCED}" in timeline.silence.stdout
    assert timeline.about("claude-haiku-4") == []
    status = timeline.silenced_state.get("status", {})
    assert status.get("state") == "suppressed" and status.get("silencedBy"), timeline.silenced_state
    (episode,) = [e for e in timeline.episodes if e["subject"] == SILENCED]
    assert not episode["open"]


def test_alertmanager_away_while_the_episode_opens_gets_the_notification_once_back(timeline: Timeline):
    assert timeline.alertmanager_stopped is not None and timeline.alertmanager_started is not None
    assert timeline.alertmanager_started - timeline.alertmanager_stopped >= timedelta(seconds=60)
    (episode,) = [e for e in timeline.episodes if e["subject"] == PLANTED]
    fired = _time(episode["fired_at"])
    assert timeline.alertmanager_stopped <= fired <= timeline.alertmanager_started, "it fired while away"
    (firing,) = timeline.about("gpt-4o", "firing")
    assert firing.received_at >= timeline.alertmanager_started


def test_a_notifier_restart_mid_episode_neither_duplicates_nor_loses_it(timeline: Timeline):
    assert timeline.watch_killed is not None
    (firing,) = timeline.about("gpt-4o", "firing")
    (resolved,) = timeline.about("gpt-4o", "resolved")
    assert firing.received_at < timeline.watch_killed < resolved.received_at
    assert len([e for e in timeline.episodes if e["subject"] == PLANTED]) == 1, "one episode, one id"
    assert timeline.firing_records == 1
    ids = {a["annotations"]["episode_id"] for n in (firing, resolved) for a in n.alerts}
    assert len(ids) == 1


def test_the_alerts_test_command_reports_where_the_episode_arrived(timeline: Timeline):
    assert timeline.probe is not None
    output = timeline.probe.stdout
    assert timeline.probe.returncode == 0, output + timeline.probe.stderr
    assert "✓ Kafka" in output and "firing record acknowledged" in output
    assert "✓ Alertmanager" in output and "routed to webhook" in output
    assert "✓ webhook receiver (firing)" in output and "✓ webhook receiver (resolved)" in output
    assert "✓ ClickHouse alert_episodes" in output


def test_the_example_configuration_and_its_slack_template_load_in_alertmanager(stack: Stack, tmp_path: Path):
    """deploy/alertmanager as shipped (paths moved to a temporary directory, secrets made up): the
    Alertmanager the stack builds accepts it, templates and all, and names its receivers."""
    deploy = REPO / "deploy" / "alertmanager"
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "slack.tmpl").write_text((deploy / "templates" / "slack.tmpl").read_text())
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "slack_webhook_url").write_text("https://hooks.slack.invalid/services/T0/B0/x\n")
    (tmp_path / "secrets" / "pagerduty_routing_key").write_text("0123456789abcdef0123456789abcdef\n")
    config = tmp_path / "alertmanager.yml"
    config.write_text((deploy / "alertmanager.yml").read_text().replace("/etc/alertmanager/", f"{tmp_path}/"))
    server = AlertmanagerServer(
        StackSettings(
            home=tmp_path / "home",
            cache_dir=stack.settings.cache_dir,
            alertmanager_port=ALERTMANAGER_PORT + 2,
        ),
        AlertingSettings(alertmanager_config=config),
    )
    server.start()
    try:
        client = AlertmanagerClient(server.settings.alertmanager_url)
        assert sorted(client.receivers()) == ["pagerduty", "slack", "webhook"]
        assert "onfinish_alerts_test" in client.status()["config"]["original"]
    finally:
        server.stop()
