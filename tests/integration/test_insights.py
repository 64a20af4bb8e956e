"""The insights on the real pipeline: `onfinish reprice` through Kafka and the sink, drift alerts."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from onfinish.insights import repricing
from onfinish.insights.publisher import RecordPublisher
from onfinish.processors.pricing import PriceCatalog, compute_cost
from onfinish.schemas.models import Alert
from tests.conftest import REPO
from tests.insights.test_repricing import catalog_text
from tests.integration.pipeline import Run

TOTALS = (
    "SELECT (SELECT sum(cost_usd) FROM current_events), (SELECT sum(cost_usd) FROM windows_1m FINAL), "
    "(SELECT sum(cost_usd) FROM model_hourly), (SELECT sum(calls) FROM model_hourly)"
)


def _reprice(catalog: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "onfinish", "reprice", "--catalog", str(catalog), "--since", "1d"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_reprice_moves_every_total_to_the_new_prices_once(run: Run, tmp_path: Path) -> None:
    report = run.send(300, 4, seed=91)
    stored = run.reconcile(report)
    assert stored.lost == 0
    before = run.query.query(TOTALS).rows[0]
    assert before[1] == pytest.approx(before[0], rel=1e-9), "windows hold what the events hold"

    catalog = tmp_path / "prices-2026-12.toml"
    catalog.write_text(catalog_text("2026-12-01", "3"))
    calls = repricing.stored_calls(run.query, *repricing.period(timedelta(days=1), datetime.now(UTC)))
    expected = float(sum(compute_cost(PriceCatalog.load(catalog), call).total_usd for call in calls))
    assert expected > before[0] * 1.5

    printed = _reprice(catalog)
    assert "catalog:2026-12-01" in printed and "ClickHouse holds all" in printed
    after = run.query.query(TOTALS).rows[0]
    assert after[:3] == pytest.approx((expected, expected, expected), rel=1e-9)
    assert after[3] == before[3], "no call counted twice"

    _reprice(catalog)  # again: nothing changes
    assert run.query.query(TOTALS).rows[0] == pytest.approx(after, rel=1e-9)


def test_insight_alerts_reach_the_alerts_table(run: Run) -> None:
    publisher = RecordPublisher(run.demo.kafka, run.demo.registry)
    alert = Alert(
        alert_id="drift-test-1",
        rule="version_drift",
        rules_version=1,
        severity="warning",
        subject_kind="model_version",
        subject="openai/gpt-4o:2026-09->2026-10",
        observed=0.81,
        threshold=0.95,
        at=datetime.now(UTC),
        message="2026-10 is worse than 2026-09: success rate -14 points",
        raw_partition=0,
    )
    assert publisher.publish_alerts([alert, alert]) == 2
    deadline = time.monotonic() + 60
    while run.value("SELECT count() FROM alerts FINAL WHERE rule = 'version_drift'") < 1:
        assert time.monotonic() < deadline, "the alert did not reach ClickHouse"
        time.sleep(0.5)
    time.sleep(2)
    assert run.value("SELECT count() FROM alerts FINAL WHERE rule = 'version_drift'") == 1
    assert run.value("SELECT subject FROM alerts FINAL WHERE alert_id = 'drift-test-1'") == alert.subject


def test_the_insights_worker_raises_a_budget_alert_on_the_real_pipeline(run: Run, tmp_path: Path) -> None:
    """`onfinish watch`'s round on the pipeline's ClickHouse, through Kafka to the alerts table."""
    from onfinish.insights.watch import InsightSettings, Watch

    budgets = tmp_path / "budgets.toml"
    budgets.write_text(
        'version = 1\n\n[[budget]]\nname = "tiny_environment_daily"\nscope = "environment"\nsubject = "*"\n'
        'period = "day"\nlimit_usd = 0.0001\nseverity = "critical"\n'
    )
    report = run.send(200, 3, seed=92)
    assert run.reconcile(report).lost == 0
    publisher = RecordPublisher(run.demo.kafka, run.demo.registry)
    watch = Watch(run.query, publisher, InsightSettings(budgets=budgets, history_minutes=60))
    sent = watch.tick()
    assert {a.rule for a in sent} >= {"tiny_environment_daily"}
    deadline = time.monotonic() + 60
    query = "SELECT count() FROM alerts FINAL WHERE rule = 'tiny_environment_daily'"
    while run.value(query) < 1:
        assert time.monotonic() < deadline, "the budget alert did not reach ClickHouse"
        time.sleep(0.5)
    assert all(a.rule != "tiny_environment_daily" for a in watch.tick()), "an alert is sent once"
