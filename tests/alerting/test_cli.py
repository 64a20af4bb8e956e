"""`onfinish alerts` (as the root command reaches it): a silence names a rule or a subject, and says
why; the list shows episodes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from onfinish import cli as onfinish
from onfinish.alerting import cli
from onfinish.alerting.alertmanager import AlertmanagerClient
from onfinish.cli import console as cli_console
from onfinish.query.results import QueryResult

Created = list[dict[str, Any]]


@pytest.fixture
def silences(monkeypatch: pytest.MonkeyPatch) -> Created:
    created: Created = []

    def create_silence(self: AlertmanagerClient, matchers: dict[str, str], **rest: Any) -> str:
        created.append({"url": self.url, "matchers": matchers, **rest})
        return "s-1"

    monkeypatch.setattr(AlertmanagerClient, "create_silence", create_silence)
    monkeypatch.setattr(cli_console.console, "width", 200)
    monkeypatch.setenv("ONFINISH_ALERTING_ALERTMANAGER_URL", "http://am:9093")
    return created


def test_a_known_rule_is_silenced_as_a_rule(silences: Created):
    result = CliRunner().invoke(
        onfinish.app, ["alerts", "silence", "ttft_slow_share", "--for", "2h", "--comment", "deploy"]
    )
    assert result.exit_code == 0, result.output
    (silence,) = silences
    assert silence["url"] == "http://am:9093" and silence["matchers"] == {"rule": "ttft_slow_share"}
    assert silence["ends_at"] - silence["starts_at"] == timedelta(hours=2)
    assert silence["comment"] == "deploy" and silence["created_by"]
    assert "silenced rule=ttft_slow_share" in result.output and "s-1" in result.output


def test_anything_else_is_silenced_as_a_subject(silences: Created):
    result = CliRunner().invoke(
        onfinish.app,
        [
            "alerts",
            "silence",
            "openai/gpt-4o/production",
            "--for",
            "30m",
            "--comment",
            "known",
            "--by",
            "ana",
        ],
    )
    assert result.exit_code == 0, result.output
    assert silences[0]["matchers"] == {"subject": "openai/gpt-4o/production"}
    assert silences[0]["created_by"] == "ana"


def test_a_silence_without_a_reason_or_with_a_bad_period_is_refused(silences: Created):
    assert CliRunner().invoke(onfinish.app, ["alerts", "silence", "ttft_slow_share"]).exit_code == 2
    assert (
        CliRunner()
        .invoke(onfinish.app, ["alerts", "silence", "x", "--for", "soon", "--comment", "c"])
        .exit_code
        == 2
    )
    assert silences == []


COLUMNS = ["episode_id", "rule", "severity", "subject", "model_id", "started_at", "fired_at", "ended_at",
           "resolved_at", "open", "peak", "observed", "threshold", "message"]  # fmt: skip
STARTED = "2026-12-01T10:00:00"


class Rows:
    """A querier answering the episodes and facts queries with fixed rows."""

    def query(self, sql: str) -> QueryResult:
        if "alert_episodes" in sql:
            row = ("e1", "ttft_slow_share", "warning", "openai/gpt-4o/production", "gpt-4o", STARTED, STARTED,
                   None, None, 1, 0.47, 0.45, 0.2, "45% slow")  # fmt: skip
            return QueryResult(COLUMNS, ["String"] * len(COLUMNS), [row])
        return QueryResult(["rule", "breaches"], ["String", "UInt64"], [("ttft_high", 270)])


def test_the_list_shows_open_episodes_and_counts_the_facts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "analyst_querier", Rows)
    monkeypatch.setattr(cli_console.console, "width", 250)
    result = CliRunner().invoke(onfinish.app, ["alerts", "list", "--since", "1h"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "ttft_slow_share" in line)
    assert (
        "open" in row and "openai/gpt-4o/production" in row and "2026-12-01 10:00:00" in row and "0.47" in row
    )
    assert "Facts (per call or session, not notified) in the last 1h: ttft_high 270." in result.output
