"""The live dashboard's questions: named read-only queries that the query endpoint runs for its page.

The page (``static/dashboard.html`` beside this module) is served by `QueryServer` at ``/`` and asks
``GET /dashboard/data?panel=<name>&since=<minutes>&model=<model>`` every few seconds. The server
renders the named query here and runs it through the same read-only path as any analyst's SQL
(`check_read_only`, then ``readonly=1``), so the dashboard can read nothing an analyst could not.

Only two values reach the SQL from a request, and neither is pasted in as given: the range is a
bounded integer, and a model name must match `MODEL_PATTERN` (letters, digits and ``._:/-``: no
quote, backslash or space can occur) before it is put between quotes. Everything else is fixed text.

Time series read ``windows_1m`` with FINAL (a window's latest snapshot counts once) and take their
percentiles from the minutes' histograms summed bucket by bucket (``sumForEach``), through the grid's
own quantile expression: the numbers are those of the ``model_hourly`` view, minute by minute.
Inner queries name their aggregates apart from the columns they read (``calls_total``, not
``events``) so that no alias shadows a column, as in the views.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from onfinish.errors import OnfinishError
from onfinish.schemas.histogram_grid import DEFAULT_GRID

MODEL_PATTERN = re.compile(r"^[A-Za-z0-9._:/-]+$")
"""What a model filter may be: the characters model ids are made of, and nothing SQL could read."""

MAX_MODEL_CHARS = 200
"""A model id longer than this is not one."""

DEFAULT_SINCE_MINUTES = 60
"""Range the page shows when it asks for none: the last hour."""

MAX_SINCE_MINUTES = 30 * 24 * 60
"""Longest range served (30 days); beyond it a minute-by-minute chart says nothing anyway."""

TOP_SESSIONS = 10
"""Rows of the top-sessions table."""

RECENT_ALERTS = 50
"""Rows of the alerts table."""

PAGE_RESOURCE = "static/dashboard.html"
"""The page, as package data of onfinish.sinks."""


class InvalidDashboardRequest(OnfinishError):
    """A dashboard request named an unknown panel or carried a range or model the server refuses."""


@dataclass(frozen=True, slots=True)
class PanelFilter:
    """What every panel is filtered by: the last `since_minutes` minutes, and one model or all."""

    since_minutes: int = DEFAULT_SINCE_MINUTES
    model: str | None = None

    def __post_init__(self) -> None:
        # bool is an int; a range of True minutes is a caller's mistake, not one minute.
        if isinstance(self.since_minutes, bool) or not isinstance(self.since_minutes, int):
            raise InvalidDashboardRequest(
                f"since must be a whole number of minutes, not {self.since_minutes!r}"
            )
        if not 1 <= self.since_minutes <= MAX_SINCE_MINUTES:
            raise InvalidDashboardRequest(
                f"since must be within 1..{MAX_SINCE_MINUTES} minutes, not {self.since_minutes}"
            )
        if self.model is not None and (
            len(self.model) > MAX_MODEL_CHARS or MODEL_PATTERN.fullmatch(self.model) is None
        ):
            raise InvalidDashboardRequest(
                f"model must match {MODEL_PATTERN.pattern} (at most {MAX_MODEL_CHARS} characters)"
            )

    def recent(self, column: str) -> str:
        """Condition: `column` lies within the range."""
        return f"{column} >= now() - toIntervalMinute({int(self.since_minutes)})"

    def model_is(self, column: str) -> str:
        """Condition: `column` is the chosen model (always true without one)."""
        return "1" if self.model is None else f"{column} = {self._model_literal()}"

    def model_among(self, array_column: str) -> str:
        """Condition: the array `array_column` holds the chosen model (always true without one)."""
        return "1" if self.model is None else f"has({array_column}, {self._model_literal()})"

    def _model_literal(self) -> str:
        # Validated at construction: no quote or backslash can be in it. Escaped all the same, so
        # that this function alone is correct whatever a later change lets through.
        assert self.model is not None
        return "'" + self.model.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_filter(since: str | None, model: str | None) -> PanelFilter:
    """The filter of a request's `since` (minutes, default one hour) and `model` ('' or absent: all)."""
    if since is None or since == "":
        minutes = DEFAULT_SINCE_MINUTES
    elif since.isascii() and since.isdigit() and len(since) <= 6:
        minutes = int(since)
    else:
        raise InvalidDashboardRequest(f"since must be a whole number of minutes, not {since[:20]!r}")
    return PanelFilter(minutes, model or None)


# The readout on the dashboard: what it may split calls by, and how long a group's value may be.
COMPARE_DIMENSIONS = ("variant_id", "model_version", "prompt_template_id", "model_id", "feature_id")
MAX_GROUP_CHARS = 256


@dataclass(frozen=True, slots=True)
class CompareRequest:
    """A variant readout asked for by the dashboard: `by` = `a` against `by` = `b`, within the filter."""

    by: str
    a: str
    b: str
    panel_filter: PanelFilter

    @property
    def within(self) -> dict[str, str]:
        model = self.panel_filter.model
        return {} if model is None or self.by == "model_id" else {"model_id": model}


def parse_compare(params: dict[str, list[str]]) -> CompareRequest:
    """The readout request of `/dashboard/compare?by=&a=&b=&since=&model=`, or InvalidDashboardRequest."""

    def one(name: str) -> str:
        return params.get(name, [""])[-1]

    by = one("by") or "variant_id"
    if by not in COMPARE_DIMENSIONS:
        raise InvalidDashboardRequest(f"by must be one of {', '.join(COMPARE_DIMENSIONS)}, not {by[:40]!r}")
    groups = one("a"), one("b")
    for group in groups:
        if not 1 <= len(group) <= MAX_GROUP_CHARS or not group.isprintable():
            raise InvalidDashboardRequest(
                f"a and b must be printable values of {by}, 1 to {MAX_GROUP_CHARS} characters"
            )
    if groups[0] == groups[1]:
        raise InvalidDashboardRequest("a and b must differ")
    return CompareRequest(by, groups[0], groups[1], parse_filter(one("since") or None, one("model") or None))


def _quantile(counts: str, q: float) -> str:
    return DEFAULT_GRID.clickhouse_quantile_expression(counts, q)


def _windows_where(panel_filter: PanelFilter) -> str:
    return (
        f"FROM windows_1m FINAL\n"
        f"WHERE {panel_filter.recent('window_start')} AND {panel_filter.model_is('model_id')}"
    )


def totals(f: PanelFilter) -> str:
    """One row: calls, errors, error rate, cost and p95 latency over the range (the page's header)."""
    return f"""SELECT
    calls_total AS calls,
    errors_total AS failed,
    if(calls_total = 0, NULL, errors_total / calls_total) AS error_rate,
    cost_total AS usd,
    calls_total / {int(f.since_minutes) * 60} AS events_per_second,
    {_quantile("latency_histogram", 0.95)} AS latency_p95,
    model_count AS models
FROM
(
    SELECT
        sum(events) AS calls_total,
        sum(errors) AS errors_total,
        sum(cost_usd) AS cost_total,
        sumForEach(latency_counts) AS latency_histogram,
        uniqExact(model_id) AS model_count
    {_windows_where(f)}
)"""  # noqa: S608 - numbers, grid literals and a validated model


def events_per_minute(f: PanelFilter) -> str:
    """Per minute and model: calls, and their rate per second."""
    return f"""SELECT
    window_start AS minute,
    model_id,
    sum(events) AS calls,
    sum(events) / 60 AS events_per_second
{_windows_where(f)}
GROUP BY minute, model_id
ORDER BY minute, model_id"""


def _percentiles_by_model(f: PanelFilter, counts_column: str, count_column: str) -> str:
    return f"""SELECT
    minute,
    model_id,
    {_quantile("histogram", 0.5)} AS p50,
    {_quantile("histogram", 0.95)} AS p95,
    {_quantile("histogram", 0.99)} AS p99
FROM
(
    SELECT window_start AS minute, model_id, sumForEach({counts_column}) AS histogram
    {_windows_where(f)}
    GROUP BY minute, model_id
    HAVING sum({count_column}) > 0
)
ORDER BY minute, model_id"""  # noqa: S608 - the columns are this module's, the rest as in totals()


def latency_percentiles_by_model(f: PanelFilter) -> str:
    """Per minute and model: latency p50, p95 and p99 in milliseconds, from the merged histograms."""
    return _percentiles_by_model(f, "latency_counts", "latency_count")


def ttft_percentiles_by_model(f: PanelFilter) -> str:
    """Per minute and model: time-to-first-token p50, p95 and p99 (streamed calls only)."""
    return _percentiles_by_model(f, "ttft_counts", "ttft_count")


def cost_per_hour_by_model(f: PanelFilter) -> str:
    """Per hour and model: cost in USD and calls."""
    return f"""SELECT
    toStartOfHour(window_start) AS hour,
    model_id,
    sum(cost_usd) AS usd,
    sum(events) AS calls
{_windows_where(f)}
GROUP BY hour, model_id
ORDER BY hour, model_id"""


def cost_per_hour_by_feature(f: PanelFilter) -> str:
    """Per hour and feature: cost in USD and calls; calls without a feature read '(none)'."""
    return f"""SELECT
    toStartOfHour(window_start) AS hour,
    if(feature_id = '', '(none)', feature_id) AS feature,
    sum(cost_usd) AS usd,
    sum(events) AS calls
{_windows_where(f)}
GROUP BY hour, feature
ORDER BY hour, feature"""


def error_rate(f: PanelFilter) -> str:
    """Per minute and model: the share of calls that failed (error, timeout or cancelled)."""
    return f"""SELECT
    window_start AS minute,
    model_id,
    sum(errors) / sum(events) AS error_rate,
    sum(errors) AS failed,
    sum(events) AS calls
{_windows_where(f)}
GROUP BY minute, model_id
HAVING sum(events) > 0
ORDER BY minute, model_id"""


def cache_hit_and_fallback_rates(f: PanelFilter) -> str:
    """Per minute: the share of calls answered from a cache, and of calls routed to a fallback model."""
    return f"""SELECT
    window_start AS minute,
    sum(cache_hits) / sum(events) AS cache_hit_rate,
    sum(fallbacks) / sum(events) AS fallback_rate,
    sum(events) AS calls
{_windows_where(f)}
GROUP BY minute
HAVING sum(events) > 0
ORDER BY minute"""


def top_sessions_by_cost(f: PanelFilter) -> str:
    """The costliest sessions active within the range (latest snapshot of each)."""
    return f"""SELECT
    session_id,
    user_id,
    service,
    turns,
    cost_usd,
    errors,
    arrayStringConcat(models, ', ') AS model_list,
    last_at,
    closed
FROM sessions FINAL
WHERE {f.recent("last_at")} AND {f.model_among("models")}
ORDER BY cost_usd DESC, session_id
LIMIT {TOP_SESSIONS}"""  # noqa: S608 - numbers and a validated model


def alerts(f: PanelFilter) -> str:
    """The latest alerts raised within the range, newest first."""
    return f"""SELECT
    at,
    severity,
    rule,
    subject_kind,
    subject,
    model_id,
    observed,
    threshold,
    message
FROM alerts FINAL
WHERE {f.recent("at")} AND {f.model_is("model_id")}
ORDER BY at DESC, alert_id
LIMIT {RECENT_ALERTS}"""  # noqa: S608 - numbers and a validated model


def models(f: PanelFilter) -> str:
    """The models seen within the range, for the page's filter (the model part of `f` is ignored)."""
    # No FINAL: an older snapshot names the same model, and DISTINCT needs no collapsing.
    return f"""SELECT DISTINCT model_id
FROM windows_1m
WHERE {f.recent("window_start")}
ORDER BY model_id"""  # noqa: S608 - numbers only


@dataclass(frozen=True, slots=True)
class DashboardQuery:
    """One panel's question: its title on the page and in Grafana, and its SQL for a filter."""

    title: str
    render: Callable[[PanelFilter], str]


QUERIES: Mapping[str, DashboardQuery] = {
    "totals": DashboardQuery("Totals", totals),
    "events_per_minute": DashboardQuery("Events per second", events_per_minute),
    "latency_percentiles_by_model": DashboardQuery("Latency p50 / p95 / p99", latency_percentiles_by_model),
    "ttft_percentiles_by_model": DashboardQuery(
        "Time to first token p50 / p95 / p99", ttft_percentiles_by_model
    ),
    "cost_per_hour_by_model": DashboardQuery("Cost per hour by model", cost_per_hour_by_model),
    "cost_per_hour_by_feature": DashboardQuery("Cost per hour by feature", cost_per_hour_by_feature),
    "error_rate": DashboardQuery("Error rate", error_rate),
    "cache_hit_and_fallback_rates": DashboardQuery(
        "Cache-hit and fallback rates", cache_hit_and_fallback_rates
    ),
    "top_sessions_by_cost": DashboardQuery("Top sessions by cost", top_sessions_by_cost),
    "alerts": DashboardQuery("Alerts", alerts),
}
"""Every panel of the page, by the name the page asks for."""


def panel_sql(panel: str, panel_filter: PanelFilter) -> str:
    """The SQL of the named panel for this filter; InvalidDashboardRequest for an unknown name."""
    query = QUERIES.get(panel)
    if query is None:
        known = ", ".join(sorted(QUERIES))
        raise InvalidDashboardRequest(f"no such panel: {panel[:40]!r} (panels: {known})")
    return query.render(panel_filter)


@cache
def page() -> bytes:
    """The dashboard page, as shipped in the package."""
    return resources.files("onfinish.query").joinpath(PAGE_RESOURCE).read_bytes()
