"""`onfinish alerts`: the alert episodes, Alertmanager's silences, and an end-to-end test.

The episodes are read from ClickHouse (alert_episodes, through the sink's read-only endpoint or a
server); silences and the test talk to Alertmanager at ONFINISH_ALERTING_ALERTMANAGER_URL.
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from onfinish.cli.console import analyst_querier, console, fail_cleanly, parse_since
from onfinish.errors import OnfinishError

if TYPE_CHECKING:
    from onfinish.alerting.probe import ProbeReport
    from onfinish.alerting.settings import AlertingSettings
    from onfinish.query.client import Querier
    from onfinish.settings import KafkaSettings, RegistrySettings, StackSettings

app = typer.Typer(
    help=(
        "Alert episodes and their delivery. `onfinish watch` judges the alert conditions (rates and "
        "percentiles per model over whole minutes), anomalies, budgets and drift; each incident is "
        "one episode, fired once and resolved once on onfinish.alerts, and posted to Prometheus "
        "Alertmanager, which groups, silences and routes it (Slack, PagerDuty, webhooks). Per-call "
        "breaches are kept as facts in the alerts table and never notified. See docs/alerts.md."
    ),
    no_args_is_help=True,
)


class ListFormat(StrEnum):
    table = "table"
    json = "json"


def _duration(text: str) -> timedelta:
    from onfinish.query.sql import parse_period

    try:
        return parse_period(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--for'") from None


def _settings() -> AlertingSettings:
    from onfinish.alerting.settings import AlertingSettings

    return AlertingSettings()


def episodes_sql(since: timedelta, only_open: bool) -> str:
    from onfinish.query.sql import sql_timestamp

    start = sql_timestamp(datetime.now(UTC) - since)
    where = "open" if only_open else f"open OR started_at >= {start} OR resolved_at >= {start}"
    return f"""
SELECT episode_id, rule, severity, subject, model_id, started_at, fired_at, ended_at, resolved_at, open,
    peak, observed, threshold, message
FROM alert_episodes
WHERE {where}
ORDER BY open DESC, started_at DESC, episode_id
LIMIT 500
"""  # noqa: S608 - a timestamp formatted here


def facts_sql(since: timedelta) -> str:
    from onfinish.query.sql import sql_timestamp

    return f"""
SELECT rule, count() AS breaches
FROM alerts FINAL
WHERE state = 'fact' AND at >= {sql_timestamp(datetime.now(UTC) - since)}
GROUP BY rule
ORDER BY breaches DESC, rule
"""  # noqa: S608 - a timestamp formatted here


def _when(value: object) -> str:
    if value is None:
        return ""
    from onfinish.query.client import timestamp

    return f"{timestamp(value):%Y-%m-%d %H:%M:%S}"


def _number(value: object) -> str:
    return "" if value is None else f"{float(str(value)):,.4g}"


@app.command("list")
def list_episodes(
    open_only: Annotated[bool, typer.Option("--open", help="Only the episodes still open (firing).")] = False,
    since: Annotated[
        str, typer.Option(metavar="PERIOD", help="Episodes that started or ended this far back: 1h, 7d, ...")
    ] = "24h",
    output: Annotated[ListFormat, typer.Option("--format", help="table for people, json for tools.")] = (
        ListFormat.table
    ),
) -> None:
    """List alert episodes: open ones first, with when each started, fired and ended, and its peak.

    Per-call and per-session breaches (facts, never notified) are counted below the table.
    """
    from onfinish.query.client import records

    period = parse_since(since)
    querier = analyst_querier()
    rows = fail_cleanly(lambda: records(querier.query(episodes_sql(period, open_only))))
    if output is ListFormat.json:
        typer.echo(json.dumps(rows, default=str, indent=2))
        return
    table = Table(title=f"Alert episodes{' open now' if open_only else f' of the last {since}'}")
    for column in (
        "state",
        "rule",
        "severity",
        "subject",
        "started",
        "ended",
        "peak",
        "threshold",
        "message",
    ):
        table.add_column(column, overflow="fold")
    for row in rows:
        state = "[red]open[/]" if row["open"] else "resolved"
        table.add_row(
            state,
            str(row["rule"]),
            str(row["severity"]),
            str(row["subject"]),
            _when(row["started_at"]),
            _when(row["ended_at"]),
            _number(row["peak"]),
            _number(row["threshold"]),
            str(row["message"]),
        )
    console.print(table)
    if not open_only:
        facts = fail_cleanly(lambda: records(querier.query(facts_sql(period))))
        if facts:
            counted = ", ".join(f"{row['rule']} {row['breaches']}" for row in facts)
            console.print(f"Facts (per call or session, not notified) in the last {since}: {counted}.")


def known_rules(settings: AlertingSettings) -> set[str]:
    """Every rule name an episode can carry: conditions, anomaly rules, budgets, drift, the test."""
    from onfinish.alerting.conditions import load_conditions
    from onfinish.alerting.probe import PROBE_RULE
    from onfinish.insights.anomalies import load_anomaly_rules
    from onfinish.insights.budgets import load_budgets
    from onfinish.insights.readouts import DRIFT_RULE
    from onfinish.insights.watch import InsightSettings

    insights = InsightSettings()
    names = {r.name for r in load_conditions(settings.rules).rule}
    names |= {r.name for r in load_anomaly_rules(insights.anomaly_rules).rule}
    names |= {b.name for b in load_budgets(insights.budgets).budget}
    return names | {DRIFT_RULE, PROBE_RULE}


@app.command("silence")
def silence(
    target: Annotated[
        str,
        typer.Argument(
            metavar="RULE|SUBJECT",
            help="A rule name (ttft_slow_share, each_user_daily) or a subject (openai/gpt-4o/production).",
        ),
    ],
    duration: Annotated[str, typer.Option("--for", metavar="PERIOD", help="How long: 30m, 2h, 1d.")] = "2h",
    comment: Annotated[str, typer.Option(help="Why, for whoever reads the silence later.")] = "",
    created_by: Annotated[
        str | None, typer.Option("--by", help="Who silences it (default: your user).")
    ] = None,
) -> None:
    """Silence a rule or a subject in Alertmanager: its notifications stop; episodes are still recorded.

    A known rule name silences every subject of that rule; anything else is taken as a subject.
    """
    from onfinish.alerting.alertmanager import AlertmanagerClient

    if not comment.strip():
        raise typer.BadParameter("say why (Alertmanager keeps it with the silence)", param_hint="'--comment'")
    period = _duration(duration)
    settings = _settings()
    label = "rule" if target in fail_cleanly(lambda: known_rules(settings)) else "subject"
    client = AlertmanagerClient(
        settings.alertmanager_url, timeout_s=settings.timeout_s, token=settings.alertmanager_token
    )
    now = datetime.now(UTC)
    silence_id = fail_cleanly(
        lambda: client.create_silence(
            {label: target},
            starts_at=now,
            ends_at=now + period,
            created_by=created_by or getpass.getuser(),
            comment=comment,
        )
    )
    console.print(
        f"[green]✓[/] silenced {label}={target} until {now + period:%Y-%m-%d %H:%M} UTC "
        f"(Alertmanager silence {silence_id})"
    )


@app.command("test")
def test(
    timeout: Annotated[float, typer.Option(help="Seconds to wait at each place.", min=1)] = 30.0,
) -> None:
    """Send one synthetic episode end to end (fired, then resolved) and report where it arrived.

    It goes to onfinish.alerts and to Alertmanager like a real one (rule onfinish_alerts_test,
    severity info); the report says whether Kafka acknowledged it, which receivers Alertmanager
    routed it to, whether the local stack's webhook receiver got the firing and the resolved
    notifications, and whether the sink stored the episode. Exits 1 if a place did not get it.
    """
    from onfinish.settings import KafkaSettings, RegistrySettings, StackSettings

    report = fail_cleanly(
        lambda: _probe(KafkaSettings(), RegistrySettings(), StackSettings(), _settings(), None, timeout)
    )
    if not report.delivered:
        raise typer.Exit(1)


def _probe(
    kafka: KafkaSettings,
    registry: RegistrySettings,
    stack: StackSettings,
    settings: AlertingSettings,
    querier: Querier | None,
    timeout_s: float,
) -> ProbeReport:
    from onfinish.alerting.alertmanager import AlertmanagerClient
    from onfinish.alerting.probe import run_probe
    from onfinish.insights.publisher import RecordPublisher
    from onfinish.schemas.contract import ALERT

    if querier is None:
        try:
            from onfinish.query import client as query_client
            from onfinish.settings import ClickHouseSettings
            from onfinish.sinks.settings import SinkSettings

            querier = query_client.querier(ClickHouseSettings(), stack, SinkSettings())
        except OnfinishError:
            querier = None  # nothing serves the episodes: that place is left unchecked
    client = AlertmanagerClient(
        settings.alertmanager_url, timeout_s=settings.timeout_s, token=settings.alertmanager_token
    )
    notifications = stack.notifications_path if stack.notifications_path.parent.exists() else None
    with console.status("sending a test episode") as status:
        report = run_probe(
            RecordPublisher(kafka, registry),
            client,
            settings,
            notifications=notifications,
            querier=querier,
            topic=ALERT.topic(kafka.topic_prefix),
            timeout_s=timeout_s,
            progress=lambda step: status.update(f"sending a test episode: {step}"),
        )
    console.print(f"Test episode {report.episode_id} on {report.subject}:")
    for hop in report.hops:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]-[/]"}[hop.reached]
        console.print(f"  {mark} {hop.place}: {hop.detail}", highlight=False)
    return report


def show_demo_notifications(
    kafka: KafkaSettings, registry: RegistrySettings, stack: StackSettings, query_url: str, since: datetime
) -> None:
    """For `onfinish demo`: a test episode end to end, then every notification the local webhook
    receiver got since the demo began (real episodes need minutes of traffic to fire)."""
    from onfinish.alerting.webhook import read_notifications
    from onfinish.query.client import EndpointQuerier

    settings = _settings()
    if not settings.enabled:
        return
    # The demo's own stack runs the Alertmanager, wherever its settings put it.
    settings = settings.model_copy(update={"alertmanager_url": stack.alertmanager_url})
    fail_cleanly(lambda: _probe(kafka, registry, stack, settings, EndpointQuerier(query_url), 30.0))
    received = read_notifications(stack.notifications_path, since)
    console.print(f"Notifications Alertmanager sent to the webhook receiver during the demo: {len(received)}")
    for notification in received:
        console.print(f"  {notification.line()}", highlight=False)
