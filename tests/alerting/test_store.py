"""The episodes as the sink stores them: the alert_episodes views over firing, re-sent and resolved
records (duplicates and facts among them), and reading them back once the sink has caught up."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from onfinish.alerting.episodes import Transition
from onfinish.alerting.records import episode_record
from onfinish.alerting.store import StoredEpisodes
from onfinish.query.client import ClientQuerier
from onfinish.schemas.contract import ALERT
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.tables import TABLES
from tests.alerting.test_delivery import episode
from tests.chdb import chdb_engine
from tests.sinks.test_tables import decoded_record, insert, read, rows_of

ALERTS = TABLES[ALERT.full_name]
NOW = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with chdb_engine(tmp_path_factory.mktemp("chdb-episodes")) as engine:
        engine.command("CREATE DATABASE IF NOT EXISTS episodes")
        engine.database = "episodes"
        apply_migrations(engine)
        engine.command("SYSTEM STOP MERGES alerts")
        first = episode()
        grown = replace(first, peak=0.7, observed=0.7)
        ended = replace(grown, observed=0.1, ended_at=NOW - timedelta(minutes=2), resolved_at=NOW)
        other = episode(episode_id="e2", subject="openai/gpt-4o-mini/production", peak=0.3)
        records = [
            episode_record(Transition("firing", first)),
            episode_record(Transition("firing", other)),
            episode_record(Transition("update", grown)),  # the same alert_id, a higher peak
            episode_record(Transition("resolved", ended)),
        ]
        datums = [decoded_record(ALERT, r) for r in records]
        insert(engine, ALERTS, rows_of(ALERTS, datums, partition=0, first_offset=0))
        insert(engine, ALERTS, rows_of(ALERTS, datums[:2], partition=0, first_offset=0))  # delivered twice
        fact = records[0].model_copy(update={"alert_id": "f1", "state": "fact", "episode_id": None})
        insert(engine, ALERTS, rows_of(ALERTS, [decoded_record(ALERT, fact)], partition=1, first_offset=0))
        yield engine


def test_each_episode_is_one_row_with_its_start_end_and_peak(client: Client):
    rows = {row["episode_id"]: row for row in read(client, "SELECT * FROM alert_episodes")}
    assert set(rows) == {"e1", "e2"}, "facts are not episodes, duplicates collapse"
    ended, open_ = rows["e1"], rows["e2"]
    assert (ended["open"], ended["peak"], ended["observed"]) == (0, 0.7, 0.1)
    assert ended["started_at"] == NOW - timedelta(minutes=10)
    assert ended["fired_at"] == NOW - timedelta(minutes=5)
    assert (ended["ended_at"], ended["resolved_at"]) == (NOW - timedelta(minutes=2), NOW)
    assert (open_["open"], open_["ended_at"], open_["resolved_at"], open_["peak"]) == (1, None, None, 0.3)
    assert [r["episode_id"] for r in read(client, "SELECT episode_id FROM open_alert_episodes")] == ["e2"]


class Ends:
    def __init__(self, ends: dict[int, int]) -> None:
        self.ends = ends

    def __call__(self) -> dict[int, int]:
        return self.ends


def test_episodes_are_read_back_once_the_sink_holds_the_whole_topic(client: Client):
    store = StoredEpisodes(ClientQuerier(client), Ends({0: 4, 1: 1}), wait_s=5)
    assert store.caught_up()
    published = store.read(NOW, timedelta(hours=1))
    assert [e.episode_id for e in published.open] == ["e2"]
    assert [(e.episode_id, e.peak, e.resolved_at) for e in published.resolved] == [("e1", 0.7, NOW)]
    assert store.read(NOW + timedelta(hours=2), timedelta(hours=1)).resolved == [], (
        "older resolutions left out"
    )


def test_a_sink_behind_the_topic_is_waited_for_and_then_read_anyway(client: Client):
    store = StoredEpisodes(ClientQuerier(client), Ends({0: 9, 1: 1, 2: 0}), wait_s=0.6)
    assert not store.caught_up()
    began = datetime.now(UTC)
    assert [e.episode_id for e in store.read(NOW, timedelta(hours=1)).open] == ["e2"]
    assert datetime.now(UTC) - began >= timedelta(seconds=0.5)
