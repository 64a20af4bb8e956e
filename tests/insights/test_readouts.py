"""Readouts and drift on stored calls: a planted effect is found, none where none was planted."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import timedelta

import pytest
from clickhouse_connect.driver.client import Client

from onfinish.errors import ConfigurationError
from onfinish.insights.compare import Outcome
from onfinish.insights.readouts import DRIFT_RULE, drift, drift_alert, readout
from onfinish.insights.stats import Verdict
from onfinish.query.client import ClientQuerier
from onfinish.schemas.contract import ENRICHED_EVENT
from onfinish.schemas.models import EnrichedEvent, Status
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.tables import TABLES
from tests.chdb import chdb_engine
from tests.sinks.test_tables import decoded_record, enriched_events, insert, rows_of

EVENTS = TABLES[ENRICHED_EVENT.full_name]
EVER = 10 * 365 * 24 * 3600  # the synthetic calls are dated NOW of test_tables, in 2026


def _store(client: Client, events: list[EnrichedEvent]) -> None:
    insert(client, EVENTS, rows_of(EVENTS, [decoded_record(ENRICHED_EVENT, e) for e in events]))


def _variant(events: list[EnrichedEvent], rng: random.Random, slower_b: float) -> list[EnrichedEvent]:
    """Each call randomly A, B or C; B's latency scaled by `slower_b`, C drawn like A."""
    out = []
    for event in events:
        variant = rng.choice("ABC")
        latency = event.latency_ms * (slower_b if variant == "B" else 1.0)
        out.append(event.model_copy(update={"variant_id": variant, "latency_ms": latency}))
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with chdb_engine(tmp_path_factory.mktemp("chdb-readouts")) as engine:
        engine.command("CREATE DATABASE IF NOT EXISTS readouts")
        engine.database = "readouts"
        apply_migrations(engine)
        rng = random.Random(7)
        events = enriched_events(6000, seed=21)
        _store(engine, _variant(events[:4500], rng, slower_b=1.3))
        # One model gets a second version later on, with three times the errors.
        drifted = []
        for index, event in enumerate(events[4500:]):
            newer = index % 2 == 1
            status = Status.error if newer and rng.random() < 0.45 else event.status
            drifted.append(
                event.model_copy(
                    update={
                        "model_id": "drift-model",
                        "provider": "openai",
                        "model_version": "2026-10" if newer else "2026-09",
                        "status": status,
                        "finished_at": event.finished_at + timedelta(hours=1 if newer else 0),
                        "variant_id": None,
                    }
                )
            )
        _store(engine, drifted)
        yield engine


def test_the_readout_finds_the_planted_slowdown_of_b(client: Client) -> None:
    result = readout(ClientQuerier(client), by="variant_id", a="A", b="B", seconds=EVER, seed=1)
    assert result.a.calls > 1000 and result.b.calls > 1000
    assert result.outcome is Outcome.WORSE
    for measure in ("latency_mean_ms", "latency_p50_ms"):
        difference = result.difference(measure)
        assert difference.verdict is Verdict.WORSE, difference
        assert difference.ci_low > 0
    assert result.difference("success_rate").verdict is not Verdict.WORSE


def test_the_readout_finds_nothing_between_groups_drawn_alike(client: Client) -> None:
    result = readout(ClientQuerier(client), by="variant_id", a="A", b="C", seconds=EVER, seed=1)
    assert not result.claims_difference, result.verdict


def test_a_readout_within_a_feature_reads_only_that_feature(client: Client) -> None:
    q = ClientQuerier(client)
    (feature,) = q.query(
        "SELECT feature_id FROM events WHERE feature_id IS NOT NULL GROUP BY feature_id "
        "ORDER BY count() DESC LIMIT 1"
    ).rows[0]
    within = readout(q, by="variant_id", a="A", b="B", seconds=EVER, within={"feature_id": feature})
    everything = readout(q, by="variant_id", a="A", b="B", seconds=EVER)
    assert 0 < within.a.calls < everything.a.calls


def test_dimensions_outside_the_list_are_refused(client: Client) -> None:
    with pytest.raises(ConfigurationError, match="cannot compare by"):
        readout(ClientQuerier(client), by="error_message", a="x", b="y", seconds=EVER)


def test_drift_compares_the_newest_version_with_the_previous_and_flags_it(client: Client) -> None:
    (found,) = drift(ClientQuerier(client), seconds=EVER, seed=3)
    assert (found.previous.version, found.current.version) == ("2026-09", "2026-10")
    assert found.current.model_id == "drift-model"
    assert found.readout.difference("success_rate").verdict is Verdict.WORSE
    assert found.worse
    alert = drift_alert(found)
    assert alert.rule == DRIFT_RULE and alert.subject_kind == "model_version"
    assert alert.observed < alert.threshold  # the success rate fell
    assert drift_alert(found).alert_id == alert.alert_id, "raised once per model and version pair"


def test_prompt_templates_drift_only_against_earlier_versions_of_the_same_template(client: Client) -> None:
    """Every model serves several templates at once: none of them replaced another. Only a newer
    version of one template (summarise@v3, then summarise@v4) is a drift."""
    q = ClientQuerier(client)
    assert drift(q, dimension="prompt_template_id", seconds=EVER, seed=3) == []
    rng = random.Random(9)
    versions = []
    for index, event in enumerate(enriched_events(1200, seed=22)):
        newer = index % 2 == 1
        versions.append(
            event.model_copy(
                update={
                    "model_id": "template-model",
                    "provider": "openai",
                    "model_version": None,
                    "variant_id": None,
                    "prompt_template_id": "summarise@v4" if newer else "summarise@v3",
                    "status": Status.error if newer and rng.random() < 0.45 else event.status,
                    "finished_at": event.finished_at + timedelta(hours=1 if newer else 0),
                }
            )
        )
    _store(client, versions)
    (found,) = drift(q, dimension="prompt_template_id", seconds=EVER, seed=3)
    assert (found.previous.version, found.current.version) == ("summarise@v3", "summarise@v4")
    assert found.worse


def test_the_compare_and_drift_commands_print_the_readouts(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from onfinish import cli
    from onfinish.query import client as query_client

    monkeypatch.setattr(query_client, "querier", lambda *_: ClientQuerier(client))
    runner = CliRunner()
    text = runner.invoke(cli.app, ["compare", "--a", "A", "--b", "B", "--since", "3650d"])
    assert text.exit_code == 0, text.output
    assert "B is worse than A: latency" in text.output
    assert "Holm" in text.output

    as_json = runner.invoke(
        cli.app, ["compare", "--a", "A", "--b", "C", "--since", "3650d", "--format", "json"]
    )
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["outcome"] == Outcome.NO_DIFFERENCE.value

    listed = runner.invoke(cli.app, ["drift", "--since", "3650d"])
    assert listed.exit_code == 0, listed.output
    assert "openai/drift-model: 2026-09" in " ".join(listed.output.split())
    assert "worse" in listed.output

    refused = runner.invoke(cli.app, ["compare", "--by", "user_id", "--a", "x", "--b", "y"])
    assert refused.exit_code != 0 and "cannot compare by" in refused.output
