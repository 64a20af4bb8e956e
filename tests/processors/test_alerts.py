"""Alert rules: loaded and validated from data, each breach fired once with a stable id."""

from __future__ import annotations

from pathlib import Path

import pytest

from onfinish.errors import ConfigurationError
from onfinish.processors.alerts import (
    RuleBook,
    event_alerts,
    session_alerts,
    window_alerts,
    window_breached,
)
from onfinish.processors.sessions import SessionState
from onfinish.processors.windows import WindowKey, WindowState
from onfinish.schemas.models import Status
from tests.processors.test_windows import T0, _enriched

BOOK = RuleBook.load()
# A window rule of one's own: the packaged rules have none since version 2 (a partition's share of
# a minute is judged by the alert conditions over whole minutes instead).
WINDOWS = RuleBook.model_validate(
    {
        "version": 1,
        "rule": [
            {
                "name": "error_rate_high",
                "kind": "window",
                "metric": "error_rate",
                "threshold": 0.2,
                "min_events": 20,
                "severity": "critical",
                "message": "error rate {observed:.0%} over {events} calls in a minute, above {threshold:.0%}",
            }
        ],
    }
)


def test_the_default_rules_load():
    assert BOOK.version == 2
    assert {r.name for r in BOOK.rule} == {"ttft_high", "session_cost_high"}
    assert BOOK.of_kind("window") == ()


def test_slow_first_token_fires_once_per_call_with_a_stable_id():
    slow = _enriched(1, ttft_ms=2100.0, latency_ms=2500.0)
    (alert,) = event_alerts(BOOK, slow)
    assert (alert.rule, alert.subject, alert.observed, alert.threshold) == ("ttft_high", "r1", 2100.0, 1500.0)
    assert alert.message == "time to first token 2100 ms, above 1500 ms"
    assert event_alerts(BOOK, slow)[0].alert_id == alert.alert_id
    assert event_alerts(BOOK, _enriched(2, ttft_ms=90.0)) == []


def test_session_cost_fires_on_the_call_that_crosses_the_threshold_only():
    state = SessionState()
    fired = []
    before = None
    for offset in range(8):
        state.apply_event(_enriched(offset, session_id="s1", cost_usd=0.1, cost_output_usd=0.1), offset)
        after = state.datum("s1", 0, T0)
        fired += session_alerts(BOOK, before, after)
        before = after
    assert len(fired) == 1 and fired[0].subject == "s1" and abs(fired[0].observed - 0.6) < 1e-9


def test_window_error_rate_needs_enough_calls_and_fires_once():
    state, key = WindowState(), WindowKey.of(_enriched(0))
    fired, before = [], None
    for offset in range(40):
        state.apply(_enriched(0, status=Status.error if offset % 2 else Status.success), offset)
        after = state.summary(key, 0)
        fired += window_alerts(WINDOWS, before, after)
        before = after
    assert len(fired) == 1
    assert fired[0].observed == 0.5 and "over 20 calls" in fired[0].message


def test_the_figures_only_check_agrees_with_the_alerts_at_every_step():
    """The worker names a window (a hash) only when `window_breached` says a rule fires."""
    state, key = WindowState(), WindowKey.of(_enriched(0))
    before = None
    answers = []
    for offset in range(60):
        state.apply(_enriched(0, status=Status.error if offset % 3 == 0 else Status.success), offset)
        after = state.figures()
        alerts = window_alerts(WINDOWS, before, state.summary(key, 0))
        assert window_breached(WINDOWS, before, after) is bool(alerts)
        answers.append(bool(alerts))
        before = after
    assert answers.count(True) == 1, "the error rate (1/3) crosses 20% once, at 20 calls"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'version = 1\n[[rule]]\nname = "x"\nkind = "event"\nmetric = "nope"\nthreshold = 1\nmessage = "m"\n',
            "events have no field 'nope'",
        ),
        (
            'version = 1\n[[rule]]\nname = "x"\nkind = "planet"\nmetric = "ttft_ms"\nthreshold = 1\nmessage = "m"\n',
            "are invalid",
        ),
        (
            'version = 1\n[[rule]]\nname = "x"\nkind = "event"\nmetric = "ttft_ms"\nthreshold = 1\nmessage = "m"\n'
            '[[rule]]\nname = "x"\nkind = "event"\nmetric = "ttft_ms"\nthreshold = 2\nmessage = "m"\n',
            "unique",
        ),
    ],
)
def test_invalid_rule_files_are_refused_at_start(tmp_path: Path, text: str, message: str):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        RuleBook.load(path)
