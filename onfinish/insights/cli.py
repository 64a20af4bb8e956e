"""The analysts' and deciders' commands: report, compare, drift, reprice, watch and budgets."""

from __future__ import annotations

import json
import time
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from onfinish.cli.console import analyst_querier, console, errors, fail_cleanly, parse_since
from onfinish.settings import KafkaSettings, RegistrySettings

if TYPE_CHECKING:
    pass

app = typer.Typer()


class GroupByOption(StrEnum):
    model = "model"
    feature = "feature"
    variant = "variant"
    environment = "environment"


class ReportFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command()
def report(
    since: Annotated[
        str, typer.Option(metavar="PERIOD", help="How far back to look: 30m, 1h, 7d (units s, m, h, d, w).")
    ] = "1h",
    by: Annotated[GroupByOption, typer.Option(help="The dimension to group calls by.")] = GroupByOption.model,
    output: Annotated[
        ReportFormat,
        typer.Option(
            "--format", help="table for people; json (everything) or csv (the per-group table) for tools."
        ),
    ] = ReportFormat.table,
) -> None:
    """Report LLM traffic, reliability, latency, cost and quality per model, feature, variant or environment.

    Per group over the period: calls, success and error rate, latency and time-to-first-token
    p50/p95/p99, cost in USD, cache-hit and fallback rates and the mean quality score; then the
    costliest sessions, the latest alerts and the totals (events stored, dead letters by reason).

    The numbers come from ClickHouse, read with FINAL so nothing counts twice: per-group figures
    from the 1-minute windows (percentiles from their merged latency histograms), sessions,
    alerts, events and dlq from their tables. With the embedded ClickHouse the queries go to the
    read-only endpoint of `onfinish sink` (ONFINISH_SINK_QUERY_PORT), which must be running; with
    ONFINISH_CLICKHOUSE_DSN=http(s)://... straight to that server.

    Example: onfinish report --since 24h --by feature --format csv > features.csv
    """
    from onfinish.insights import report as reports

    period = parse_since(since)
    querier = analyst_querier()
    result = fail_cleanly(lambda: reports.report(querier, since=period, by=by.value))
    if output is ReportFormat.json:
        typer.echo(reports.to_json(result))
    elif output is ReportFormat.csv:
        typer.echo(reports.to_csv(result), nl=False)
    else:
        reports.render_table(result, console)


class ReadoutFormat(StrEnum):
    text = "text"
    json = "json"


class DriftDimensionOption(StrEnum):
    model_version = "model_version"
    prompt_template_id = "prompt_template_id"


@app.command()
def compare(
    a: Annotated[str, typer.Option("--a", help="The baseline group: its value of --by.")],
    b: Annotated[str, typer.Option("--b", help="The group judged against it.")],
    by: Annotated[
        str, typer.Option(help="The dimension the groups differ in: variant_id, model_id, model_version, ...")
    ] = "variant_id",
    feature: Annotated[str | None, typer.Option(help="Only calls of this feature_id.")] = None,
    model: Annotated[str | None, typer.Option(help="Only calls of this model_id.")] = None,
    since: Annotated[
        str, typer.Option(metavar="PERIOD", help="How far back to look: 30m, 1h, 7d (units s, m, h, d, w).")
    ] = "7d",
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    output: Annotated[ReadoutFormat, typer.Option("--format", help="text for people, json for tools.")] = (
        ReadoutFormat.text
    ),
) -> None:
    """Compare two variants (or models, versions, prompt templates) on every measure, with a verdict.

    Per group: calls, sessions, success rate, latency and TTFT p50/p95, latency mean, cost per
    call and per session, quality score, regeneration and edit rates. Per measure: B - A with a
    95% confidence interval (Newcombe for rates, Welch for means, bootstrap for percentiles,
    sessions as the unit for cost per session) and a verdict (better, worse, no difference, not
    enough data), Holm-adjusted over the measures so that "any difference" stays a 5% false alarm.
    The minimum sample sizes are printed with the readout. Calls are read from ClickHouse with
    their latest feedback and price (the current_events view).

    Example: onfinish compare --by variant_id --a control --b concise --feature support-chat --since 7d
    """
    from onfinish.insights import compare as readouts_text
    from onfinish.insights.readouts import readout
    from onfinish.query.sql import seconds_of

    within = {k: v for k, v in (("feature_id", feature), ("model_id", model)) if v is not None}
    seconds = seconds_of(parse_since(since))
    querier = analyst_querier()
    result = fail_cleanly(
        lambda: readout(querier, by=by, a=a, b=b, seconds=seconds, within=within, seed=seed)
    )
    if output is ReadoutFormat.json:
        typer.echo(json.dumps(readouts_text.to_json(result), indent=2))
    else:
        typer.echo(readouts_text.render_text(result))


@app.command()
def drift(
    by: Annotated[
        DriftDimensionOption, typer.Option(help="What a new version is: model_version or prompt_template_id.")
    ] = DriftDimensionOption.model_version,
    since: Annotated[
        str, typer.Option(metavar="PERIOD", help="How far back to look: 30m, 1h, 7d (units s, m, h, d, w).")
    ] = "7d",
    alert: Annotated[
        bool, typer.Option("--alert", help="Send an alert to onfinish.alerts for every version found worse.")
    ] = False,
    output: Annotated[ReadoutFormat, typer.Option("--format", help="text for people, json for tools.")] = (
        ReadoutFormat.text
    ),
) -> None:
    """List model-version drift: per model, the newest version against the one before it.

    For every model with two or more versions (or prompt templates) in the period, the newest by
    first appearance is compared with the previous one on the same measures as `onfinish compare`.
    A comparison whose readout says the new version is worse is a drift; with --alert each becomes
    an alert on onfinish.alerts (rule version_drift), raised once per model and pair of versions.

    Example: onfinish drift --since 14d --alert
    """
    from onfinish.insights import readouts
    from onfinish.query.sql import seconds_of

    seconds = seconds_of(parse_since(since))
    querier = analyst_querier()
    found = fail_cleanly(lambda: readouts.drift(querier, dimension=by.value, seconds=seconds))
    if output is ReadoutFormat.json:
        typer.echo(json.dumps(readouts.to_json(found), indent=2))
    elif not found:
        console.print(f"No model has two {by.value}s in the period.")
    else:
        for item in found:
            mark = "[red]worse[/red]" if item.worse else "ok"
            console.print(
                f"{item.current.provider}/{item.current.model_id}: "
                f"{item.previous.version} ({item.previous.calls} calls) -> "
                f"{item.current.version} ({item.current.calls} calls): {mark}; {item.readout.verdict}",
                highlight=False,
            )
    worse = [item for item in found if item.worse]
    if alert and worse:
        from onfinish.insights.publisher import RecordPublisher

        publisher = RecordPublisher(KafkaSettings(), RegistrySettings())
        sent = fail_cleanly(lambda: publisher.publish_alerts(readouts.drift_alert(item) for item in worse))
        console.print(f"{sent} drift alerts sent to onfinish.alerts.")


@app.command()
def reprice(
    catalog: Annotated[
        str,
        typer.Option(
            metavar="CATALOG", help="A price-catalog file (.toml), or the packaged catalog's version."
        ),
    ],
    since: Annotated[
        str, typer.Option(metavar="PERIOD", help="Re-price calls that finished this far back: 7d, 30d, ...")
    ] = "30d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change; send nothing.")] = False,
    wait_s: Annotated[
        float,
        typer.Option("--wait", metavar="SECONDS", help="How long to wait for ClickHouse to hold it."),
    ] = 180.0,
) -> None:
    """Apply a price-catalog version to stored calls, so every view and total reflects the new prices.

    Each call that finished in the period is priced again from its tokens (input, cached input,
    output, reasoning) with CATALOG. The corrections go through Kafka to the sink: one per call
    (table event_costs, read by current_events, cost_by_dimension and session_costs) and one per
    minute and dimension set (a windows_1m row with no calls and the cost delta, so model_hourly,
    the report and the dashboard move by the same amount). Events keep the cost they were stored
    with; the catalog version used is on every correction (cost_source).

    Idempotent: corrections are computed against the stored cost and the latest re-pricing of a
    call or minute replaces the earlier one, so running it twice changes nothing, and a later
    catalog replaces an earlier one. The period is whole minutes. Prints how much each model's
    and the whole total change, then waits until ClickHouse holds every correction.

    Example: onfinish reprice --catalog prices-2026-12.toml --since 90d
    """
    from datetime import UTC

    from rich.progress import Progress

    from onfinish.insights import repricing
    from onfinish.schemas.contract import COST_CORRECTION, WINDOW_COST_CORRECTION

    prices = fail_cleanly(lambda: repricing.load_catalog(catalog))
    now = datetime.now(UTC)
    start, end = repricing.period(parse_since(since), now)
    querier = analyst_querier()
    calls = fail_cleanly(lambda: repricing.stored_calls(querier, start, end))
    result = repricing.reprice(calls, prices, repriced_at=now, start=start, end=end)
    for line in repricing.summary_lines(result):
        typer.echo(line)
    if dry_run or not result.corrections:
        return
    from onfinish.insights.publisher import RecordPublisher

    publisher = RecordPublisher(KafkaSettings(), RegistrySettings())
    total = len(result.corrections) + len(result.windows)
    with Progress(console=errors, transient=True) as progress:
        task = progress.add_task("sending corrections", total=total)

        def advance(count: int) -> None:
            progress.advance(task, count)

        fail_cleanly(
            lambda: publisher.publish(
                COST_CORRECTION,
                ((c.event_id.bytes, c) for c in result.corrections),
                progress=advance,
            )
        )
        fail_cleanly(
            lambda: publisher.publish(
                WINDOW_COST_CORRECTION,
                ((w.window_start.isoformat().encode(), w) for w in result.windows),
                progress=advance,
            )
        )
    deadline = time.monotonic() + wait_s
    held = (0, 0)
    while time.monotonic() < deadline:
        held = fail_cleanly(lambda: repricing.applied(querier, result))
        if held == (len(result.corrections), len(result.windows)):
            typer.echo(f"ClickHouse holds all {total} corrections: the new prices are in every view.")
            return
        time.sleep(1.0)
    errors.print(
        f"After {wait_s:.0f}s ClickHouse holds {held[0]} of {len(result.corrections)} call corrections and "
        f"{held[1]} of {len(result.windows)} minute corrections: is `onfinish sink` running?"
    )
    raise typer.Exit(1)


@app.command()
def watch() -> None:
    """Run the insights worker: alert conditions, anomalies, budgets and drift, raised as episodes.

    Every ONFINISH_INSIGHTS_INTERVAL_S: the 1-minute windows that have closed are summed per model
    and feature and judged against a streaming baseline (EWMA with a robust spread; rules in
    onfinish/insights/data/anomaly_rules.v1.toml or ONFINISH_INSIGHTS_ANOMALY_RULES) for error
    rate, p95 latency, p95 TTFT and cost per minute; spend so far today and this month per
    feature, user and environment is projected against the budgets (budgets.v1.toml or
    ONFINISH_INSIGHTS_BUDGETS); and, hourly, each model's newest version is compared with the
    previous one. With alerting enabled, the alert conditions (onfinish/alerting/data, or
    ONFINISH_ALERTING_RULES) are judged per model over whole minutes too. Every finding is an
    episode: fired once, resolved once, on onfinish.alerts and posted to Alertmanager
    (ONFINISH_ALERTING_ALERTMANAGER_URL). At start the anomaly baseline is rebuilt from the last
    day of windows and the open episodes from the alerts table. Ctrl-C or SIGTERM stops it.
    """
    import signal
    import threading

    from onfinish.insights.publisher import RecordPublisher
    from onfinish.insights.watch import InsightSettings, Watch

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = fail_cleanly(
        lambda: Watch(
            analyst_querier(), RecordPublisher(KafkaSettings(), RegistrySettings()), InsightSettings()
        )
    )
    console.print("insights worker: anomalies, budgets, drift (Ctrl-C stops it)")
    try:
        worker.run(stop)
    except KeyboardInterrupt:
        stop.set()


@app.command()
def budgets() -> None:
    """Show each budget's spend so far this day or month, its projection and its limit.

    Budgets are data (onfinish/insights/data/budgets.v1.toml, or ONFINISH_INSIGHTS_BUDGETS): daily
    or monthly, per feature, user (pseudonymised) or environment, `*` for each one separately. The
    projection blends the period's run rate with the last hour's; `onfinish watch` raises an alert
    when it reaches the budget's warn_at share of the limit.
    """
    from datetime import UTC

    from onfinish.insights.budgets import evaluate, load_budgets, project
    from onfinish.insights.watch import InsightSettings, spends

    settings = InsightSettings()
    book = fail_cleanly(lambda: load_budgets(settings.budgets))
    now = datetime.now(UTC)
    found = fail_cleanly(lambda: spends(analyst_querier(), book, now))
    breached = {(b.budget, b.subject) for b in evaluate(book, found, now)}
    table = Table("budget", "subject", "period", "spent", "projected", "limit", "state")
    for budget in book.budget:
        for spend in found:
            if spend.scope != budget.scope or spend.period != budget.period:
                continue
            if budget.subject not in ("*", spend.subject):
                continue
            projection = project(spend, now)
            state = "[red]alert[/red]" if (budget.name, spend.subject) in breached else "ok"
            table.add_row(
                budget.name,
                f"{budget.scope} {spend.subject}",
                budget.period,
                f"${spend.spent_usd:,.2f}",
                f"${projection.projected_usd:,.2f}",
                f"${budget.limit_usd:,.2f}",
                state,
            )
    console.print(table)
