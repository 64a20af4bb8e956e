"""The insights worker on stored windows and events: a planted latency spike is one episode, with its
baseline, fired once and resolved once, across a restart too; a user over budget is raised once; a
quiet series raises nothing."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from onfinish.alerting.episodes import Episode
from onfinish.alerting.notifier import Notifier
from onfinish.alerting.records import episode_of
from onfinish.alerting.settings import AlertingSettings
from onfinish.alerting.store import Published
from onfinish.insights.watch import InsightSettings, Watch
from onfinish.processors.windows import WindowKey, WindowState
from onfinish.query.client import ClientQuerier
from onfinish.schemas.contract import ENRICHED_EVENT, WINDOW_SNAPSHOT
from onfinish.schemas.models import Alert, EnrichedEvent, Status
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.tables import TABLES
from tests.chdb import chdb_engine
from tests.sinks.test_tables import decoded, decoded_record, enriched_events, insert, rows_of

EVENTS = TABLES[ENRICHED_EVENT.full_name]
WINDOWS = TABLES[WINDOW_SNAPSHOT.full_name]
BASE = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
MINUTES, PER_MINUTE, SPIKE = 90, 20, range(70, 73)


class Collected:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def publish_alerts(self, alerts: Iterable[Alert]) -> int:
        batch = list(alerts)
        self.alerts += batch
        return len(batch)


def _traffic() -> list[EnrichedEvent]:
    """90 minutes of one model and feature, p95 latency near 900 ms, three minutes at three times it;
    a quiet second feature; every call by one user at $0.004."""
    rng = random.Random(5)
    templates = enriched_events(200, seed=9)
    events = []
    for minute in range(MINUTES):
        for j in range(PER_MINUTE):
            for feature in ("chat", "search"):
                spike = 3.0 if feature == "chat" and minute in SPIKE else 1.0
                latency = rng.lognormvariate(math.log(800), 0.08) * spike
                finished = BASE + timedelta(minutes=minute, seconds=j)
                events.append(
                    templates[(minute * PER_MINUTE + j) % 200].model_copy(
                        update={
                            "event_id": uuid.UUID(int=rng.getrandbits(128), version=4),
                            "request_id": f"req-{minute}-{j}-{feature}",
                            "provider": "openai",
                            "model_id": "gpt-4o",
                            "model_version": None,
                            "prompt_template_id": None,
                            "feature_id": feature,
                            "status": Status.success,
                            "finished_at": finished,
                            "started_at": finished - timedelta(milliseconds=latency),
                            "latency_ms": latency,
                            "user_id": "u1",
                            "cost_usd": 0.004,
                        }
                    )
                )
    return events


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with chdb_engine(tmp_path_factory.mktemp("chdb-watch")) as engine:
        engine.command("CREATE DATABASE IF NOT EXISTS watch")
        engine.database = "watch"
        apply_migrations(engine)
        events = _traffic()
        insert(engine, EVENTS, rows_of(EVENTS, [decoded_record(ENRICHED_EVENT, e) for e in events]))
        states: dict[WindowKey, WindowState] = {}
        for offset, event in enumerate(events):
            states.setdefault(WindowKey.of(event), WindowState()).apply(event, offset)
        datums = [decoded(WINDOW_SNAPSHOT, s.datum(k, 0, BASE)) for k, s in states.items()]
        insert(engine, WINDOWS, [WINDOWS.to_row(d, 0, i) for i, d in enumerate(datums)])
        yield engine


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Remembered:
    """Episodes as a restarted worker reads them back: from what an earlier worker published."""

    def __init__(self, published: list[Alert]) -> None:
        self.published = published

    def read(self, now: datetime, resolved_within: timedelta) -> Published:
        episodes: dict[str, Episode] = {}
        for alert in self.published:
            if alert.episode_id is not None:
                episodes[alert.episode_id] = episode_of(alert)
        return Published(
            [e for e in episodes.values() if e.open], [e for e in episodes.values() if not e.open]
        )


def _watch(client: Client, clock: Clock, remembered: list[Alert] | None = None) -> tuple[Watch, Collected]:
    collected = Collected()
    watch = Watch(
        ClientQuerier(client),
        collected,
        InsightSettings(settle_s=180),
        clock=clock,
        alerting=AlertingSettings(enabled=False),  # the anomalies, budgets and drift alone
        published=Remembered(remembered or []),
    )
    return watch, collected


def _series(collected: Collected) -> list[Alert]:
    return [a for a in collected.alerts if a.subject_kind == "series"]


def test_a_latency_spike_is_one_episode_with_its_baseline(client: Client) -> None:
    """Running since minute 60: the spike (minutes 70-72) fires once at its first minute with its
    baseline, and resolves with the same episode id after the cooldown (5 minutes back within)."""
    clock = Clock(BASE + timedelta(minutes=60, seconds=181))
    watch, collected = _watch(client, clock)
    watch.tick()
    assert _series(collected) == []  # minutes 0-59: the baseline, replayed quietly at start
    clock.now = BASE + timedelta(minutes=MINUTES, seconds=181)
    watch.tick()
    *firings, resolved = _series(collected)
    firing = firings[0]
    # Sent again, same alert_id, when a later minute of the spike is worse (its peak grows).
    assert {a.alert_id for a in firings} == {firing.alert_id} and firing.alert_id.endswith("-firing")
    assert (firing.state, firing.rule, firing.subject, firing.at) == (
        "firing",
        "latency_p95_high",
        "openai/gpt-4o/chat",
        BASE + timedelta(minutes=SPIKE.start),
    )
    assert firing.baseline is not None and 700 < firing.baseline < 1100
    assert firing.observed > 2 * firing.baseline and firing.threshold < firing.observed
    assert resolved.state == "resolved" and resolved.episode_id == firing.episode_id
    assert resolved.started_at == BASE + timedelta(minutes=SPIKE.start)
    assert resolved.ended_at == BASE + timedelta(minutes=SPIKE.stop)  # the first minute back within
    assert resolved.at == BASE + timedelta(minutes=SPIKE.stop + 5)  # after the 5-minute cooldown
    assert resolved.peak is not None and resolved.peak == max(a.observed for a in firings)

    sent = len(_series(collected))
    watch.tick()  # nothing new has closed, nothing is sent twice
    assert len(_series(collected)) == sent


def test_a_restart_mid_episode_neither_fires_again_nor_loses_the_resolution(client: Client) -> None:
    clock = Clock(BASE + timedelta(minutes=60, seconds=181))
    first, before = _watch(client, clock)
    first.tick()
    clock.now = BASE + timedelta(minutes=SPIKE.start + 1, seconds=181)  # the spike's first minute judged
    first.tick()
    firing = _series(before)[0]
    assert {a.state for a in _series(before)} == {"firing"}

    clock.now = BASE + timedelta(minutes=MINUTES, seconds=181)
    second, after = _watch(client, clock, remembered=before.alerts)  # a new worker, same history
    second.tick()
    (resolved,) = _series(after)
    assert resolved.state == "resolved" and resolved.episode_id == firing.episode_id
    assert resolved.at == BASE + timedelta(minutes=SPIKE.stop + 5)


def test_a_restart_after_the_end_raises_nothing_again(client: Client) -> None:
    clock = Clock(BASE + timedelta(minutes=60, seconds=181))
    first, before = _watch(client, clock)
    first.tick()
    clock.now = BASE + timedelta(minutes=MINUTES, seconds=181)
    first.tick()
    assert [a.state for a in _series(before)][-1] == "resolved"
    assert (
        len({a.alert_id for a in _series(before)}) == 2
    )  # one firing record (maybe sent again), one resolved
    second, after = _watch(client, clock, remembered=before.alerts)
    assert _series(after) == [] and second.tick() == [] and first.tick() == []


def test_a_user_over_the_daily_budget_is_raised_once(client: Client) -> None:
    watch, collected = _watch(client, Clock(BASE + timedelta(minutes=MINUTES, seconds=181)))
    watch.tick()
    budgets = [a for a in collected.alerts if a.subject_kind == "budget"]
    spent = 2 * MINUTES * PER_MINUTE * 0.004
    assert [(a.rule, a.subject, a.state) for a in budgets] == [
        ("each_user_daily", "user:u1:2026-11-23", "firing")
    ]
    assert budgets[0].observed == pytest.approx(spent) and budgets[0].threshold == 5.0
    watch.tick()
    assert len([a for a in collected.alerts if a.subject_kind == "budget"]) == 1


def test_minutes_that_have_not_settled_are_not_judged(client: Client) -> None:
    """Running since minute 60: at minute 71 plus less than the settling time, the spike's first
    minute is not final yet."""
    clock = Clock(BASE + timedelta(minutes=60, seconds=181))
    watch, collected = _watch(client, clock)
    watch.tick()
    clock.now = BASE + timedelta(minutes=SPIKE.start + 1, seconds=100)
    watch.tick()
    assert not _series(collected)


def test_the_budgets_command_shows_spend_projection_and_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from onfinish import cli
    from onfinish.cli import console as cli_console
    from onfinish.insights import budgets, watch
    from onfinish.query import client as query_client

    def spends(_: object, book: budgets.BudgetBook, now: datetime) -> list[budgets.Spend]:
        start, _end = budgets.period_bounds("day", now)
        return [
            budgets.Spend("user", "u1", "day", start, spent_usd=9.0, recent_usd=0.5, recent_seconds=3600),
            budgets.Spend("user", "u2", "day", start, spent_usd=0.1, recent_usd=0.0, recent_seconds=3600),
        ]

    monkeypatch.setattr(query_client, "querier", lambda *_: None)
    monkeypatch.setattr(watch, "spends", spends)
    monkeypatch.setattr(cli_console.console, "width", 200)
    result = CliRunner().invoke(cli.app, ["budgets"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "each_user_daily" in line]
    assert len(lines) == 2
    assert "user u1" in lines[0] and "$9.00" in lines[0] and "$5.00" in lines[0] and "alert" in lines[0]
    assert "user u2" in lines[1] and "ok" in lines[1]


CONDITIONS = """version = 1

[[rule]]
name = "slow_calls"
metric = "latency_share_above"
above_ms = 1500.0
threshold = 0.5
by = ["provider", "model_id", "feature_id"]
window_minutes = 1
min_calls = 20
for_minutes = 1
cooldown_minutes = 2
message = "{observed:.0%} of {calls} calls above {above_ms:.0f} ms"
"""


def test_a_condition_over_merged_minutes_is_one_episode_posted_to_alertmanager(
    client: Client, tmp_path: Path
) -> None:
    """The spike (minutes 70-72, every chat call three times slower) holds in the rounds at 71, 72
    and 73: it fires at 72 (held for a minute since 71), clears at 74 and resolves at 76, after
    the 2-minute cooldown; the notifier posts the firing, then the resolution, of one episode."""
    from tests.alerting.test_delivery import FakeAlertmanager

    rules = tmp_path / "conditions.toml"
    rules.write_text(CONDITIONS)
    fake = FakeAlertmanager()
    alerting = AlertingSettings(rules=rules, settle_s=20)
    clock = Clock(BASE + timedelta(minutes=60, seconds=181))
    notifier = Notifier(fake, alerting, clock)  # type: ignore[arg-type]
    collected = Collected()
    watch = Watch(
        ClientQuerier(client),
        collected,
        InsightSettings(settle_s=180, anomaly_rules=None),
        clock=clock,
        alerting=alerting,
        notifier=notifier,
        published=Remembered([]),
    )
    watch.tick()
    assert [a for a in collected.alerts if a.rule == "slow_calls"] == []
    clock.now = BASE + timedelta(minutes=MINUTES, seconds=21)
    watch.tick()
    firing, resolved = [a for a in collected.alerts if a.rule == "slow_calls"]
    assert (firing.state, firing.subject, firing.started_at, firing.at) == (
        "firing",
        "openai/gpt-4o/chat",
        BASE + timedelta(minutes=71),
        BASE + timedelta(minutes=72),
    )
    assert firing.observed == 1.0 and (firing.feature_id, firing.model_id) == ("chat", "gpt-4o")
    assert resolved.episode_id == firing.episode_id
    assert (resolved.ended_at, resolved.at) == (BASE + timedelta(minutes=74), BASE + timedelta(minutes=76))
    notifier.deliver()
    (post,) = fake.posts
    (alert,) = [a for a in post if a["labels"]["rule"] == "slow_calls"]  # the resolution replaced the firing
    assert (
        alert["endsAt"] == "2026-11-23T02:14:00Z" and alert["annotations"]["episode_id"] == firing.episode_id
    )
