"""Budgets: calendar periods, projection arithmetic, when each kind of alert fires, the budget file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from onfinish.errors import ConfigurationError
from onfinish.insights.budgets import (
    Budget,
    BudgetBook,
    Scope,
    Spend,
    evaluate,
    load_budgets,
    period_bounds,
    project,
)

DAY = datetime(2026, 3, 2, tzinfo=UTC)
MONTH = datetime(2026, 3, 1, tzinfo=UTC)


def at(hours: float, start: datetime = DAY) -> datetime:
    return start + timedelta(hours=hours)


def daily(
    subject: str, spent: float, recent: float = 0.0, seconds: float = 3600.0, scope: Scope = "user"
) -> Spend:
    return Spend(scope, subject, "day", DAY, spent, recent, seconds)


def budget(**fields: object) -> Budget:
    values: dict[str, object] = {
        "name": "b",
        "scope": "user",
        "subject": "*",
        "period": "day",
        "limit_usd": 5.0,
    }
    return Budget.model_validate(values | fields)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", datetime(2026, 3, 2, 23, 59, 59, tzinfo=UTC), DAY, datetime(2026, 3, 3, tzinfo=UTC)),
        # 01:30 in UTC+2 is still the previous UTC day.
        (
            "day",
            datetime(2026, 3, 2, 1, 30, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 3, 1, tzinfo=UTC),
            DAY,
        ),
        (
            "month",
            datetime(2028, 2, 29, 12, tzinfo=UTC),
            datetime(2028, 2, 1, tzinfo=UTC),
            datetime(2028, 3, 1, tzinfo=UTC),
        ),
        (
            "month",
            datetime(2027, 2, 14, tzinfo=UTC),
            datetime(2027, 2, 1, tzinfo=UTC),
            datetime(2027, 3, 1, tzinfo=UTC),
        ),
        (
            "month",
            datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        ),
        (
            "month",
            datetime(2027, 1, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
            datetime(2027, 2, 1, tzinfo=UTC),
        ),
    ],
)
def test_periods_are_utc_calendar_days_and_months(period, now: datetime, start: datetime, end: datetime):
    assert period_bounds(period, now) == (start, end)


def test_february_of_a_leap_year_has_29_days():
    start, end = period_bounds("month", datetime(2028, 2, 10, tzinfo=UTC))
    assert end - start == timedelta(days=29)


def test_naive_times_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        period_bounds("day", datetime(2026, 3, 2))


def test_the_worked_example_projects_93_dollars():
    # $30 by 06:00: run rate $5/h, last hour $2/h, blended $3.50/h over the 18 h left: 30 + 63.
    projection = project(daily("u_1", 30.0, 2.0), at(6))
    assert projection.method == "blended"
    assert projection.rate_usd_per_hour == pytest.approx(3.5)
    assert projection.projected_usd == pytest.approx(93.0)
    assert projection.elapsed_fraction == pytest.approx(0.25)


def test_projection_falls_back_to_the_rate_it_has():
    assert project(daily("u_1", 30.0, seconds=0.0), at(6)).projected_usd == pytest.approx(120.0)
    assert project(daily("u_1", 30.0, seconds=0.0), at(6)).method == "run_rate"
    # A partial recent window (the first 30 minutes of history): $1 in 1800 s is $2/h.
    assert project(daily("u_1", 30.0, 1.0, 1800.0), at(6)).projected_usd == pytest.approx(93.0)
    at_start = project(daily("u_1", 0.0, 1.0), DAY)
    assert at_start.method == "recent_rate"
    assert at_start.projected_usd == pytest.approx(24.0)
    assert project(daily("u_1", 0.0, seconds=0.0), DAY).method == "spent"


def test_a_monthly_projection_uses_the_month_length():
    # Feb 2028 (29 days): $290 by the end of the 10th day is $29/day run rate, last hour $1.
    spend = Spend("feature", "chat", "month", datetime(2028, 2, 1, tzinfo=UTC), 290.0, 1.0, 3600.0)
    projection = project(spend, datetime(2028, 2, 11, tzinfo=UTC))
    hourly = 0.5 * 290.0 / 240.0 + 0.5 * 1.0
    assert projection.projected_usd == pytest.approx(290.0 + hourly * 19 * 24)
    assert projection.elapsed_fraction == pytest.approx(10 / 29)


def test_a_finished_period_projects_to_what_was_spent():
    projection = project(daily("u_1", 3.0, 3.0), at(30))
    assert (projection.method, projection.projected_usd, projection.elapsed_fraction) == (
        "complete",
        3.0,
        1.0,
    )


def test_early_in_the_period_a_projection_does_not_alert():
    # 30 minutes in: $0.50 projects to $24 against $5, but 2% of the day is too early to say.
    early = daily("u_1", 0.5, 0.5, 1800.0)
    assert evaluate([budget()], [early], at(0.5)) == []
    # Past 5% of the day (72 minutes) the same pace alerts.
    (breach,) = evaluate([budget()], [daily("u_1", 1.5, 1.0)], at(1.5))
    assert breach.kind == "projected" and breach.projected_usd == pytest.approx(1.5 + 22.5 * 1.0)


def test_spend_already_over_the_limit_always_alerts():
    (breach,) = evaluate([budget()], [daily("u_1", 5.5, 5.5, 600.0)], at(0.2))
    assert (breach.kind, breach.spent_usd, breach.limit_usd) == ("exceeded", 5.5, 5.0)
    assert breach.message == "The user u_1 has spent $5.50 this day, over its $5.00 daily budget b."
    # Also once the day is over.
    assert [b.kind for b in evaluate([budget()], [daily("u_1", 5.5)], at(30))] == ["exceeded"]


def test_spend_past_the_warning_line_alerts_before_the_gate():
    (breach,) = evaluate([budget(warn_at=0.8)], [daily("u_1", 4.2, 4.2, 900.0)], at(0.25))
    assert breach.kind == "projected"


def test_a_modest_pace_does_not_alert():
    assert evaluate([budget()], [daily("u_1", 1.0, 0.1)], at(12)) == []


def test_each_subject_gets_its_own_budget_under_a_star():
    spends = [
        daily("u_a", 6.0),
        daily("u_b", 0.1),
        daily("u_c", 3.0, 0.5),
        daily("staging", 9.0, scope="environment"),
    ]
    breaches = evaluate([budget()], spends, at(12))
    assert [(b.subject, b.kind) for b in breaches] == [("u_a", "exceeded"), ("u_c", "projected")]
    # An exact subject applies to that subject only.
    assert [b.subject for b in evaluate([budget(subject="u_b", limit_usd=0.05)], spends, at(12))] == ["u_b"]


def test_budgets_apply_to_spends_of_their_own_period_only():
    monthly = Spend("user", "u_a", "month", MONTH, 6.0)
    assert evaluate([budget()], [monthly], at(12)) == []
    assert [b.budget for b in evaluate([budget(period="month", name="m")], [monthly], at(12))] == ["m"]


def test_the_projected_message_states_the_amounts():
    (breach,) = evaluate([budget(limit_usd=80.0)], [daily("u_1", 30.0, 2.0)], at(6))
    assert breach.message == (
        "The user u_1 is projected to spend $93.00 this day ($30.00 so far), 116% of its $80.00 daily budget b."
    )


def test_alert_ids_are_one_per_budget_subject_period_and_kind():
    first = evaluate([budget()], [daily("u_1", 2.0, 1.0)], at(6))
    later = evaluate([budget()], [daily("u_1", 4.0, 1.0)], at(9))
    exceeded = evaluate([budget()], [daily("u_1", 6.0, 1.0)], at(12))
    tomorrow = Spend("user", "u_1", "day", DAY + timedelta(days=1), 2.0, 1.0, 3600.0)
    next_day = evaluate([budget()], [tomorrow], at(30))
    other_user = evaluate([budget()], [daily("u_2", 2.0, 1.0)], at(6))
    assert first[0].alert_id == later[0].alert_id
    ids = {first[0].alert_id, exceeded[0].alert_id, next_day[0].alert_id, other_user[0].alert_id}
    assert len(ids) == 4 and all(len(i) == 32 for i in ids)


def test_spends_must_start_at_a_period_start():
    with pytest.raises(ValueError, match="not the start of a UTC calendar day"):
        Spend("user", "u_1", "day", at(1), 1.0)
    with pytest.raises(ValueError, match="not the start of a UTC calendar month"):
        Spend("user", "u_1", "month", DAY, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        Spend("user", "u_1", "day", DAY, -1.0)


def test_the_packaged_example_budgets_load_and_evaluate():
    book = load_budgets()
    assert book.version == 1
    assert {(b.name, b.scope, b.subject, b.period) for b in book.budget} == {
        ("each_user_daily", "user", "*", "day"),
        ("production_daily", "environment", "production", "day"),
        ("support_chat_monthly", "feature", "support_chat", "month"),
    }
    spends = [
        daily("production", 200.0, 30.0, scope="environment"),  # 200 + 16 h * (25 + 30) / 2 = 640
        daily("u_1", 1.0, 0.1),
        Spend("feature", "support_chat", "month", MONTH, 100.0, 1.0, 3600.0),
    ]
    (breach,) = evaluate(book, spends, at(8, DAY))
    assert (breach.budget, breach.severity, breach.kind) == ("production_daily", "critical", "projected")
    assert breach.projected_usd == pytest.approx(200.0 + 16 * (200.0 / 8 + 30.0) / 2)


BUDGET = 'name = "x"\nscope = "user"\nsubject = "*"\nperiod = "day"\nlimit_usd = 5.0\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            BUDGET.replace('"user"', '"team"'),
            r"budget\.0\.scope: Input should be 'feature', 'user' or 'environment'",
        ),
        (BUDGET.replace('"day"', '"week"'), r"budget\.0\.period"),
        (BUDGET.replace("5.0", "0.0"), r"budget\.0\.limit_usd: Input should be greater than 0"),
        (BUDGET + "warn_at = 1.5\n", r"budget\.0\.warn_at: Input should be less than or equal to 1"),
        (BUDGET.replace('"*"', '""'), r"budget\.0\.subject"),
        (BUDGET + "limit = 3\n", r"budget\.0\.limit: Extra inputs are not permitted"),
        (BUDGET + "[[budget]]\n" + BUDGET, r"budget names must be unique, repeated: \['x'\]"),
    ],
)
def test_invalid_budget_files_are_refused_naming_the_problem(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "budgets.toml"
    path.write_text("version = 1\n[[budget]]\n" + text)
    with pytest.raises(ConfigurationError, match=problem):
        load_budgets(path)


def test_unreadable_budget_files_are_refused(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_budgets(tmp_path / "missing.toml")
    path = tmp_path / "budgets.toml"
    path.write_text("version = 1\n[[budget\n")
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_budgets(path)


def test_a_book_can_be_built_in_code():
    book = BudgetBook(version=1, budget=[budget()])
    assert evaluate(book, [daily("u_1", 9.0)], at(1))[0].kind == "exceeded"
