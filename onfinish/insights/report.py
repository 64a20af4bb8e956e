"""The analyst's report: traffic, reliability, latency, cost and quality per group, read from ClickHouse.

Everything here reads the sink tables with FINAL (a duplicate or an older snapshot never counts)
through a `Querier` (onfinish/query/client.py): with the embedded ClickHouse (chDB) the sink worker
owns the data directory, so queries go to its read-only endpoint; with a ClickHouse server, straight
to it through clickhouse-connect. Percentiles come from the minute histograms of `windows_1m`
summed bucket by bucket (`sumForEach`), with the SQL twin of `quantile_from_counts`, as the views do.
Rates are computed in Python from the sums, so an empty group gives None rather than a division by
zero.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

from onfinish.errors import ConfigurationError
from onfinish.query.client import Querier, records, timestamp
from onfinish.query.sql import describe_period, seconds_of
from onfinish.schemas.histogram_grid import DEFAULT_GRID

if TYPE_CHECKING:
    from rich.console import Console


GroupBy = Literal["model", "feature", "variant", "environment"]
GROUP_BY: tuple[str, ...] = get_args(GroupBy)

# The windows_1m column each grouping reads; calls outside any feature or experiment read as ''.
DIMENSION_COLUMNS: dict[str, str] = {
    "model": "model_id",
    "feature": "feature_id",
    "variant": "variant_id",
    "environment": "environment",
}
TOP_SESSIONS = 10
LATEST_ALERTS = 20
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


# --- The report's queries ----------------------------------------------------------------------------


def groups_sql(by: GroupBy, seconds: int) -> str:
    """Per group: sums of the latest minute snapshots of the period, and percentiles from their histograms."""
    if by not in DIMENSION_COLUMNS:
        raise ConfigurationError(f"cannot group by {by!r}; choose from {', '.join(GROUP_BY)}")
    column = DIMENSION_COLUMNS[by]
    quantile = DEFAULT_GRID.clickhouse_quantile_expression
    percentiles = ",\n    ".join(
        f"{quantile(f'{name}_histogram', q)} AS {name}_{label}"
        for name in ("latency", "ttft")
        for label, q in QUANTILES.items()
    )
    # Inner aggregates are named apart from the columns they read, so no alias shadows a column.
    return f"""
SELECT
    group_key, calls_total, errors_total, cost_total, cache_hits_total, fallbacks_total, quality_total,
    {percentiles}
FROM
(
    SELECT
        {column} AS group_key,
        sum(events) AS calls_total,
        sum(errors) AS errors_total,
        sum(cost_usd) AS cost_total,
        sum(cache_hits) AS cache_hits_total,
        sum(fallbacks) AS fallbacks_total,
        sum(quality_sum) AS quality_total,
        sumForEach(latency_counts) AS latency_histogram,
        sumForEach(ttft_counts) AS ttft_histogram
    FROM windows_1m FINAL
    WHERE window_start >= now() - toIntervalSecond({int(seconds)})
    GROUP BY group_key
    HAVING calls_total > 0
)
ORDER BY calls_total DESC, group_key
"""  # noqa: S608 - the column comes from DIMENSION_COLUMNS, the rest are numbers and grid literals


def top_sessions_sql(seconds: int, limit: int = TOP_SESSIONS) -> str:
    return f"""
SELECT session_id, user_id, service, environment, turns, cost_usd, errors, first_at, last_at, closed
FROM sessions FINAL
WHERE last_at >= now() - toIntervalSecond({int(seconds)})
ORDER BY cost_usd DESC, session_id
LIMIT {int(limit)}
"""  # noqa: S608 - numbers only


def alerts_sql(seconds: int, limit: int = LATEST_ALERTS) -> str:
    return f"""
SELECT at, rule, severity, subject_kind, subject, observed, threshold, message
FROM alerts FINAL
WHERE at >= now() - toIntervalSecond({int(seconds)})
ORDER BY at DESC, alert_id
LIMIT {int(limit)}
"""  # noqa: S608 - numbers only


def events_total_sql(seconds: int) -> str:
    return f"""
SELECT count() AS events_total
FROM events FINAL
WHERE finished_at >= now() - toIntervalSecond({int(seconds)})
"""  # noqa: S608 - numbers only


def dead_letters_by_reason_sql(seconds: int) -> str:
    return f"""
SELECT reason, count() AS letters
FROM dlq FINAL
WHERE received_at >= now() - toIntervalSecond({int(seconds)})
GROUP BY reason
ORDER BY letters DESC, reason
"""  # noqa: S608 - numbers only


# --- The report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupRow:
    """One group's numbers over the period, from the 1-minute windows."""

    group: str
    calls: int
    errors: int
    success_rate: float
    error_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None
    cost_usd: float
    cache_hit_rate: float
    fallback_rate: float
    quality_mean: float


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    user_id: str | None
    service: str
    environment: str
    turns: int
    cost_usd: float
    errors: int
    first_at: datetime
    last_at: datetime
    closed: bool


@dataclass(frozen=True)
class AlertRow:
    at: datetime
    rule: str
    severity: str
    subject_kind: str
    subject: str
    observed: float
    threshold: float
    message: str


@dataclass(frozen=True)
class Totals:
    events: int
    """Events stored (each once) that finished within the period."""
    dead_letters: dict[str, int]
    """Dead letters received within the period, by reason."""


@dataclass(frozen=True)
class Report:
    since: timedelta
    by: str
    groups: list[GroupRow]
    top_sessions: list[SessionRow]
    alerts: list[AlertRow]
    totals: Totals


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _group_row(row: Mapping[str, Any]) -> GroupRow:
    calls, errors = int(row["calls_total"]), int(row["errors_total"])
    return GroupRow(
        group=str(row["group_key"]),
        calls=calls,
        errors=errors,
        success_rate=(calls - errors) / calls,
        error_rate=errors / calls,
        latency_p50_ms=_optional_float(row["latency_p50"]),
        latency_p95_ms=_optional_float(row["latency_p95"]),
        latency_p99_ms=_optional_float(row["latency_p99"]),
        ttft_p50_ms=_optional_float(row["ttft_p50"]),
        ttft_p95_ms=_optional_float(row["ttft_p95"]),
        ttft_p99_ms=_optional_float(row["ttft_p99"]),
        cost_usd=float(row["cost_total"]),
        cache_hit_rate=int(row["cache_hits_total"]) / calls,
        fallback_rate=int(row["fallbacks_total"]) / calls,
        quality_mean=float(row["quality_total"]) / calls,
    )


def _session_row(row: Mapping[str, Any]) -> SessionRow:
    return SessionRow(
        session_id=str(row["session_id"]),
        user_id=None if row["user_id"] is None else str(row["user_id"]),
        service=str(row["service"]),
        environment=str(row["environment"]),
        turns=int(row["turns"]),
        cost_usd=float(row["cost_usd"]),
        errors=int(row["errors"]),
        first_at=timestamp(row["first_at"]),
        last_at=timestamp(row["last_at"]),
        closed=bool(row["closed"]),
    )


def _alert_row(row: Mapping[str, Any]) -> AlertRow:
    return AlertRow(
        at=timestamp(row["at"]),
        rule=str(row["rule"]),
        severity=str(row["severity"]),
        subject_kind=str(row["subject_kind"]),
        subject=str(row["subject"]),
        observed=float(row["observed"]),
        threshold=float(row["threshold"]),
        message=str(row["message"]),
    )


def report(q: Querier, *, since: timedelta, by: GroupBy) -> Report:
    """The report over the last `since`, grouped `by` a dimension of the 1-minute windows."""
    seconds = seconds_of(since)
    groups = [_group_row(row) for row in records(q.query(groups_sql(by, seconds)))]
    sessions = [_session_row(row) for row in records(q.query(top_sessions_sql(seconds)))]
    alerts = [_alert_row(row) for row in records(q.query(alerts_sql(seconds)))]
    events = records(q.query(events_total_sql(seconds)))
    letters = records(q.query(dead_letters_by_reason_sql(seconds)))
    totals = Totals(
        events=int(events[0]["events_total"]) if events else 0,
        dead_letters={str(row["reason"]): int(row["letters"]) for row in letters},
    )
    return Report(since, by, groups, sessions, alerts, totals)


# --- Rendering -----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _share(value: float) -> str:
    return f"{value:.1%}"


def render_table(report: Report, console: Console) -> None:
    """The report as rich tables: groups, top sessions, latest alerts and totals."""
    from rich.table import Table

    period = describe_period(report.since)
    if not report.groups:
        console.print(f"No traffic in the 1-minute windows of the last {period}.")
    else:
        table = Table(title=f"LLM calls of the last {period} by {report.by}")
        headers = (
            report.by, "calls", "success", "error rate", "latency p50/p95/p99 ms", "TTFT p50/p95/p99 ms",
            "cost USD", "cache hit", "fallback", "quality",
        )  # fmt: skip
        for index, header in enumerate(headers):
            table.add_column(header, justify="left" if index == 0 else "right", overflow="fold")
        for g in report.groups:
            table.add_row(
                g.group or "(none)",
                f"{g.calls:,}",
                _share(g.success_rate),
                _share(g.error_rate),
                " / ".join(map(_ms, (g.latency_p50_ms, g.latency_p95_ms, g.latency_p99_ms))),
                " / ".join(map(_ms, (g.ttft_p50_ms, g.ttft_p95_ms, g.ttft_p99_ms))),
                f"{g.cost_usd:,.4f}",
                _share(g.cache_hit_rate),
                _share(g.fallback_rate),
                f"{g.quality_mean:.3f}",
            )
        console.print(table)
    if report.top_sessions:
        sessions = Table(title=f"Costliest sessions active in the last {period}")
        for header in ("session", "user", "service", "turns", "errors", "cost USD", "last call", "closed"):
            sessions.add_column(header, overflow="fold")
        for s in report.top_sessions:
            sessions.add_row(
                s.session_id,
                s.user_id or "-",
                s.service,
                str(s.turns),
                str(s.errors),
                f"{s.cost_usd:,.4f}",
                s.last_at.strftime("%Y-%m-%d %H:%M:%S"),
                "yes" if s.closed else "no",
            )
        console.print(sessions)
    if report.alerts:
        alerts = Table(title=f"Alerts of the last {period}, latest first")
        for header in ("at", "severity", "rule", "subject", "observed", "threshold", "message"):
            alerts.add_column(header, overflow="fold")
        for a in report.alerts:
            alerts.add_row(
                a.at.strftime("%Y-%m-%d %H:%M:%S"),
                a.severity,
                a.rule,
                f"{a.subject_kind} {a.subject}",
                f"{a.observed:g}",
                f"{a.threshold:g}",
                a.message,
            )
        console.print(alerts)
    letters = sum(report.totals.dead_letters.values())
    by_reason = ", ".join(f"{reason} {count:,}" for reason, count in report.totals.dead_letters.items())
    console.print(
        f"Events stored in the last {period}: {report.totals.events:,}; dead letters: {letters:,}"
        + (f" ({by_reason})" if by_reason else ""),
        highlight=False,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def to_json(report: Report) -> str:
    """The whole report as one JSON document; `since` in seconds, datetimes ISO 8601 in UTC."""
    document = _jsonable(asdict(report))
    document["since_s"] = document.pop("since")
    return json.dumps(document, ensure_ascii=False, allow_nan=False, indent=2)


def to_csv(report: Report) -> str:
    """The per-group table as CSV with a header row (empty cells for undefined percentiles)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = [field.name for field in fields(GroupRow)]
    writer.writerow(names)
    for row in report.groups:
        writer.writerow([_cell(getattr(row, name)) for name in names])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    """Floats with every digit (repr), so a CSV reader gets back the same number; None as empty."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)
