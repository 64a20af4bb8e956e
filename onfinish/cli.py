"""The `onfinish` command: one entry point with consistent verbs for every user.

Human output goes to the terminal through rich; errors onfinish raises on purpose become one clear
message and exit code 1, never a stack trace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

try:
    import typer
    from rich.console import Console
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - depends on the install
    raise SystemExit("The onfinish command needs the cli extra: pip install 'onfinish[cli]'") from exc


from onfinish import __version__
from onfinish.alerting.cli import app as alerts_app
from onfinish.errors import OnfinishError
from onfinish.logs import LogSettings, configure_logging
from onfinish.settings import ClickHouseSettings, KafkaSettings, RegistrySettings, StackSettings

if TYPE_CHECKING:
    from onfinish.analytics import Querier

console = Console()
errors = Console(stderr=True)
T = TypeVar("T")

app = typer.Typer(
    name="onfinish",
    help=(
        "onfinish turns the onFinish moment of every LLM call into trustworthy analytics: "
        "services produce events to Kafka, processors validate, enrich and redact them, sinks write "
        "them to ClickHouse.\n\n"
        "Start with `onfinish demo`, which brings up the local stack and proves the round trip. "
        "Every setting can be given as an ONFINISH_* environment variable: see `onfinish config`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(
    help=(
        "Run the local stack on this machine, with no Docker: Apache Kafka (KRaft) on 127.0.0.1:9092, "
        "the schema registry on 127.0.0.1:8081 (schemas kept in a local PostgreSQL) and ClickHouse "
        "embedded through chDB. Data lives in ONFINISH_STACK_HOME (default .onfinish/) and survives "
        "down/up; software is cached in ONFINISH_STACK_CACHE_DIR."
    ),
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")
topics_app = typer.Typer(
    help="Kafka topics of the pipeline (onfinish.raw, .enriched, .windows, .sessions, .alerts, .dlq).",
    no_args_is_help=True,
)
app.add_typer(topics_app, name="topics")
schema_app = typer.Typer(
    help=(
        "Govern the event contract (schemas/avro/*.avsc) in the schema registry. Subjects follow "
        "<topic>-<record full name>, so OnFinishEvent and Feedback share onfinish.raw, each under "
        "FULL_TRANSITIVE compatibility."
    ),
    no_args_is_help=True,
)
app.add_typer(schema_app, name="schema")
dlq_app = typer.Typer(
    help=(
        "Look into the dead letters: records a stage refused (undecodable, breaking the contract, "
        "a processing bug), kept with their stage, reason and original bytes in ClickHouse's dlq "
        "table by `onfinish sink`, and send fixed ones back with `replay`.\n\n"
        "Example: `onfinish dlq list --since 7d`, then `onfinish dlq show --reason truncated`."
    ),
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")
app.add_typer(alerts_app, name="alerts")  # onfinish/alerting/cli.py (issue 20)


def _fail_cleanly(action: Callable[[], T]) -> T:
    try:
        return action()
    except OnfinishError as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc


@contextmanager
def _spinner(title: str) -> Iterator[Callable[[str], None]]:
    """A status line that shows the current step of a long operation and how long it has taken."""
    began = time.monotonic()
    with console.status(title) as status:

        def report(step: str) -> None:
            status.update(f"{title}: {step} [dim]({time.monotonic() - began:.0f}s)[/]")

        yield report


def _progress_columns() -> tuple[Any, ...]:
    """A progress bar's columns for sending items: what, the bar, done of total, time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    return (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )


def _stack() -> StackSettings:
    return StackSettings()


@stack_app.command("install")
def stack_install() -> None:
    """Fetch Kafka's jars with Maven and build the schema registry with Go, into the cache.

    Safe to run again: what is already in the cache is kept. `stack up` does this when needed.
    """
    from onfinish.stack.stack import Stack

    stack = Stack(_stack())
    with _spinner("Installing the local stack") as progress:
        _fail_cleanly(lambda: stack.install(progress))
    for step in stack.install_steps():
        console.print(f"[green]✓[/] {step.artefact.name}: {step.artefact.path}")


@stack_app.command("up")
def stack_up() -> None:
    """Install what is missing, start every component, wait until each is healthy, create the topics.

    Running it again while the stack is up is harmless. A port already taken by another program is
    reported with the component that needs it.
    """
    from onfinish.stack.stack import Stack

    stack = Stack(_stack())
    with _spinner("Starting the local stack") as progress:
        report = _fail_cleanly(lambda: stack.up(progress))
    for started in report.started:
        verb = "started" if started.started else "already running"
        console.print(f"[green]✓[/] {started.name} {verb} (pid {started.pid}, {started.seconds:.1f}s)")
    created = [t.name for t in report.topics if t.created]
    console.print(
        f"[green]✓[/] topics: {len(report.topics)} present"
        + (f", created {', '.join(created)}" if created else "")
    )
    for topic in report.topics:
        if topic.note:
            console.print(f"[yellow]![/] {topic.name} {topic.note}")
    console.print(f"[green]✓[/] ClickHouse {report.clickhouse_version} at {report.clickhouse}")
    console.print(f"Stack up in {report.seconds:.1f}s.")


@stack_app.command("down")
def stack_down() -> None:
    """Stop the processes `stack up` started (by their recorded pid, never by name). Data is kept."""
    from onfinish.stack.stack import Stack

    stopped = _fail_cleanly(lambda: Stack(_stack()).down())
    console.print(f"Stopped: {', '.join(stopped)}." if stopped else "Nothing of this stack was running.")


@stack_app.command("status")
def stack_status() -> None:
    """Show each component: whether it runs and answers, its address, pid and log file."""
    from onfinish.stack.stack import Stack

    settings = _stack()
    stack = Stack(settings)
    table = Table(title=f"onfinish stack ({settings.home.resolve()})")
    for column in ("component", "state", "address", "pid", "log"):
        table.add_column(column, overflow="fold")
    all_up = True
    for status in stack.status():
        state = (
            "[green]healthy[/]"
            if status.healthy
            else ("[yellow]running, not answering[/]" if status.running else "[red]stopped[/]")
        )
        all_up = all_up and status.healthy
        table.add_row(status.name, state, status.address, str(status.pid or "-"), str(status.log_path))
    clickhouse = ClickHouseSettings()
    table.add_row(
        "clickhouse",
        "embedded (chDB)" if clickhouse.dsn is None else "server",
        clickhouse.display_dsn(settings),
        "in-process" if clickhouse.dsn is None else "-",
        "-",
    )
    console.print(table)
    if not all_up:
        raise typer.Exit(3)


@topics_app.command("create")
def topics_create() -> None:
    """Create the pipeline's topics on ONFINISH_KAFKA_BOOTSTRAP_SERVERS; existing ones are left as they are.

    Partitions (ONFINISH_KAFKA_PARTITIONS, default 12) are fixed at creation and cap how many
    processor workers can share the work; onfinish.sessions is compacted.
    """
    from onfinish.stack.topics import provision_topics

    results = _fail_cleanly(lambda: provision_topics(KafkaSettings()))
    for topic in results:
        verb = "created" if topic.created else "exists"
        console.print(f"{topic.name}: {verb}, {topic.partitions} partitions {topic.note}".rstrip())


PrefixOption = Annotated[
    str | None,
    typer.Option(
        "--topic-prefix",
        help="Prefix of the topics whose subjects to use (default: ONFINISH_KAFKA_TOPIC_PREFIX).",
    ),
]


def _prefix(prefix: str | None) -> str:
    return prefix or KafkaSettings().topic_prefix


@schema_app.command("register")
def schema_register(topic_prefix: PrefixOption = None) -> None:
    """Register the contract's schemas on ONFINISH_REGISTRY_URL and set FULL_TRANSITIVE on their subjects.

    Registering an unchanged schema again is harmless: it keeps its id and version.
    """
    from onfinish.schemas.governance import register

    registrations = _fail_cleanly(lambda: register(RegistrySettings(), _prefix(topic_prefix)))
    for r in registrations:
        console.print(f"[green]✓[/] {r.subject}: id {r.schema_id}, version {r.version}, {r.compatibility}")


@schema_app.command("check")
def schema_check(
    schema_files: Annotated[list[Path], typer.Argument(help="Changed .avsc files to check.", exists=True)],
    topic_prefix: PrefixOption = None,
) -> None:
    """Check changed schema files against every registered version of their subject (FULL_TRANSITIVE).

    Exits 1 with the registry's reasons when a change would break a producer or a consumer, e.g. a
    removed field or a changed type; a new optional field with a default passes.
    """
    from onfinish.schemas.governance import check

    failed = False
    for schema_file in schema_files:
        result = _fail_cleanly(partial(check, RegistrySettings(), _prefix(topic_prefix), schema_file))
        if not result.versions_checked and result.compatible:
            console.print(f"[green]✓[/] {schema_file}: {result.subject} has no registered version yet")
        elif result.compatible:
            versions = ", ".join(map(str, result.versions_checked))
            console.print(
                f"[green]✓[/] {schema_file}: compatible with versions {versions} of {result.subject}"
            )
        else:
            failed = True
            errors.print(f"[bold red]✗[/] {schema_file}: incompatible with {result.subject}", highlight=False)
            for version, messages in result.incompatible.items():
                for message in messages:
                    errors.print(f"    version {version}: {message}", highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def process(
    workers: Annotated[int, typer.Option(help="Worker processes to run in one consumer group.", min=1)] = 1,
) -> None:
    """Run processor workers: validate, deduplicate, enrich, redact, window and sessionise onfinish.raw.

    Workers share the consumer group ONFINISH_PROCESSOR_APP_ID, so the partitions of onfinish.raw
    (ONFINISH_KAFKA_PARTITIONS) are spread over them; more workers than partitions sit idle. Each
    worker serves /health and /metrics on ONFINISH_PROCESSOR_WEB_PORT (+1 for each further worker).
    SIGTERM or Ctrl-C stops them gracefully: finish the batch, flush, commit, leave the group.
    """
    import os
    import signal
    import subprocess
    import sys

    from onfinish.processors.settings import ProcessorSettings

    base_port = ProcessorSettings().web_port
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "onfinish.processors.worker", "worker"],
            env={**os.environ, "ONFINISH_PROCESSOR_WEB_PORT": str(base_port + index)},
        )
        for index in range(workers)
    ]
    console.print(
        f"{workers} processor worker(s) started: pids {', '.join(str(c.pid) for c in children)}; "
        f"/health on ports {base_port}..{base_port + workers - 1}"
    )

    def stop(signum: int, _: object) -> None:
        for child in children:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [child.wait() for child in children]
    if any(code not in (0, -signal.SIGTERM) for code in codes):
        raise typer.Exit(1)


@app.command()
def sink(
    families: Annotated[
        str, typer.Option(help="Table families to write, comma-separated: events, rollups, dlq.")
    ] = "events,rollups,dlq",
) -> None:
    """Run a sink worker: onfinish.enriched, .windows, .sessions, .alerts and .dlq into ClickHouse.

    Each family (events; rollups = windows, sessions, alerts; dlq) is a consumer group of its own,
    ONFINISH_SINK_GROUP_PREFIX-<family>. Migrations are applied at start. Offsets are committed
    only after ClickHouse accepted the batch, and a batch inserted twice is dropped by ClickHouse.
    With the embedded ClickHouse (no ONFINISH_CLICKHOUSE_DSN) this process owns the data directory
    and serves read-only SQL on ONFINISH_SINK_QUERY_PORT for the CLI, the dashboard and analysts.
    /health and /metrics on ONFINISH_SINK_WEB_PORT. SIGTERM or Ctrl-C: finish the batch, commit, stop.
    """
    from onfinish.sinks.settings import FAMILIES
    from onfinish.sinks.worker import main as run_sink

    chosen = [name.strip() for name in families.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown or not chosen:
        raise OnfinishError(f"unknown table families {unknown}; choose from {', '.join(FAMILIES)}")
    console.print(f"sink worker: {', '.join(chosen)} (Ctrl-C stops it)")
    run_sink(chosen)


@app.command()
def loadgen(
    rate: Annotated[
        float, typer.Option(help="Items per second (events, feedback and malformed records).", min=1)
    ] = 500,
    duration: Annotated[float, typer.Option(help="Seconds to send for.", min=0.1)] = 10,
    sessions: Annotated[int, typer.Option(help="Sessions open at any moment.", min=1)] = 200,
    seed: Annotated[
        int, typer.Option(help="Seed of the traffic model: the same seed sends the same traffic.")
    ] = 1,
    pii_share: Annotated[
        float, typer.Option(help="Share of events with PII or secrets in free text.")
    ] = 0.02,
    malformed_share: Annotated[
        float, typer.Option(help="Share of items that are malformed records.")
    ] = 0.005,
    manifest: Annotated[
        Path | None, typer.Option(help="Write the event ids sent and the PII planted to this JSON file.")
    ] = None,
    plant: Annotated[
        list[str] | None,
        typer.Option(
            metavar="EFFECT",
            help="Plant a difference, e.g. variant_id=B:latency=1.15 or "
            "model_id=gpt-4o:version=gpt-4o-2026-11:errors=0.1:from=5000 (repeatable).",
        ),
    ] = None,
    predraw: Annotated[
        bool,
        typer.Option(
            help="Draw all the traffic before sending (about 5 KB an item, at most 500,000 items), "
            "so that making it up does not take CPU from a pipeline measured on the same machine.",
        ),
    ] = False,
) -> None:
    """Send realistic LLM telemetry through the SDK to ONFINISH_PRODUCER_TOPIC at a steady rate.

    Several providers and models, heavy-tailed latency and TTFT, streaming, errors and retries,
    cache hits and fallbacks, multi-turn sessions, late feedback, a small share of PII in free text
    and of malformed records (sent raw, as a broken producer would). Prints what it sent.

    --plant selects events by their fields (variant_id=B, model_id=gpt-4o, feature_id=...) and
    changes them from the `from`-th event to the `to`-th: latency (a factor on latency and TTFT),
    errors (a share of successful calls made to fail), version (a new model_version rolled out);
    what `onfinish compare`, `drift` and `watch` should then find.
    """
    from rich.progress import Progress

    from onfinish.producers.loadgen import LoadPlan, run_load
    from onfinish.producers.settings import ProducerSettings
    from onfinish.producers.traffic import Effect, TrafficProfile

    effects = tuple(_fail_cleanly(lambda: [Effect.parse(text) for text in plant or []]))
    profile = TrafficProfile(
        sessions=sessions, pii_share=pii_share, malformed_share=malformed_share, effects=effects
    )
    plan = LoadPlan(rate=rate, duration_s=duration, seed=seed, profile=profile, predraw=predraw)
    with Progress(*_progress_columns(), console=console) as bar:
        drawing = bar.add_task(f"drawing {plan.items} items", total=plan.items, visible=predraw)
        task = bar.add_task(f"sending {plan.items} items at {rate:g}/s", total=plan.items)
        report = _fail_cleanly(
            lambda: run_load(
                plan,
                ProducerSettings(),
                KafkaSettings(),
                RegistrySettings(),
                progress=lambda done, _: bar.update(task, completed=done),
                manifest=manifest,
                draw_progress=lambda done, _: bar.update(drawing, completed=done),
            )
        )
    table = Table(
        title=f"loadgen: {report.sent} items sent in {report.send_seconds:.1f}s "
        f"({report.sent / report.send_seconds:,.0f}/s), all acknowledged after {report.seconds:.1f}s"
    )
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("onFinish events", str(report.events))
    for status, count in sorted(report.by_status.items()):
        table.add_row(f"  status {status}", str(count))
    table.add_row("feedback", str(report.feedback))
    for defect, count in sorted(report.malformed.items()):
        table.add_row(f"malformed: {defect}", str(count))
    table.add_row("PII strings planted", str(report.pii_planted))
    table.add_row("models", str(len(report.by_model)))
    for name in ("produced", "replayed", "spooled", "rejected", "dropped"):
        table.add_row(f"SDK {name}", str(report.sdk.get(name, 0)))
    console.print(table)
    if not report.delivered:
        errors.print(
            "[yellow]not every event was acknowledged yet: they stay in the spool and are sent later[/]"
        )
        raise typer.Exit(2)


@app.command()
def demo(
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="A bounded run: stop the workers after the report; exit 1 unless all sent is stored.",
        ),
    ] = False,
    rate: Annotated[float, typer.Option(help="Loadgen items per second.", min=1)] = 300,
    duration: Annotated[float, typer.Option(help="Seconds of traffic.", min=1)] = 20,
    workers: Annotated[int, typer.Option(help="Processor workers.", min=1)] = 1,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the traffic model (default: a new one each run; the same seed sends the same"
            " events again, which the pipeline then drops as duplicates)."
        ),
    ] = None,
) -> None:
    """The whole pipeline on this machine, in a few minutes: stack, workers, traffic, report, dashboard.

    Brings the local stack up (Kafka, the schema registry, embedded ClickHouse), starts a sink worker
    (it applies the migrations and serves read-only SQL and the dashboard) and processor workers,
    sends realistic LLM telemetry through the SDK for --duration seconds (with PII and malformed
    records among it), waits until ClickHouse holds every event and every malformed record's dead
    letter, prints the report and the dashboard's address, and keeps the workers running until
    Ctrl-C. With --once it stops them and exits, 0 when the totals match what was sent.
    Workers' logs are in ONFINISH_STACK_HOME/logs.
    """
    import signal as signals
    from datetime import UTC

    from rich.progress import Progress

    from onfinish import analytics
    from onfinish.alerting.cli import show_demo_notifications
    from onfinish.demo import Demo
    from onfinish.stack.stack import Stack

    demo_began = datetime.now(UTC)
    stack_settings = _stack()
    stack = Stack(stack_settings)
    console.rule("onfinish demo")
    began = time.monotonic()
    with _spinner("Starting the local stack") as progress:
        up = _fail_cleanly(lambda: stack.up(progress))
    console.print(
        f"[green]✓[/] stack up [dim]({up.seconds:.1f}s)[/]: Kafka, schema registry, ClickHouse embedded"
    )
    run = Demo(stack_settings, workers=workers)

    def step(title: str, action: Callable[[], T]) -> T:
        started = time.monotonic()
        with console.status(title):
            result = _fail_cleanly(action)
        console.print(f"[green]✓[/] {title} [dim]({time.monotonic() - started:.1f}s)[/]")
        return result

    try:
        step("topics ready", run.ensure_topics)
        step("sink worker started: migrations applied, read-only SQL served", run.start_sink)
        step(f"{workers} processor worker(s) started and assigned partitions", run.start_processors)
        baseline = _fail_cleanly(run.stored)
        items = max(1, round(rate * duration))
        with Progress(*_progress_columns(), console=console) as bar:
            task = bar.add_task(f"sending {items} items at {rate:g}/s", total=items)
            sent = _fail_cleanly(
                lambda: run.send_traffic(
                    rate,
                    duration,
                    seed if seed is not None else time.time_ns() % 2**31,
                    progress=lambda done, _: bar.update(task, completed=done),
                )
            )
        malformed = sum(sent.malformed.values())
        console.print(
            f"[green]✓[/] sent {sent.events} events, {sent.feedback} feedback, {malformed} malformed records"
            f" ({sent.pii_planted} with planted PII)"
        )
        drained = step("everything sent is stored in ClickHouse", lambda: run.wait_drained(sent, baseline))
        stored_events = drained.events - baseline.events
        letters = drained.dead_letters - baseline.dead_letters
        console.print(
            f"  events sent {sent.events}, stored {stored_events}; "
            f"malformed sent {malformed}, dead-lettered {letters}"
        )
        querier = _fail_cleanly(
            lambda: analytics.EndpointQuerier(run.query_url)  # the sink this demo started
        )
        report_ = _fail_cleanly(lambda: analytics.report(querier, since=timedelta(hours=1), by="model"))
        analytics.render_table(report_, console)
        show_demo_notifications(run.kafka, run.registry, stack_settings, run.query_url, since=demo_began)
        console.print(
            f"Dashboard: [bold]{run.query_url}/[/]   SQL: curl --data 'SELECT ...' {run.query_url}/query"
        )
        console.print(f"Everything took {time.monotonic() - began:.0f}s.")
        matched = stored_events == sent.events and letters == malformed
        if once:
            return_codes = run.stop()
            failed = [name for name, code in return_codes if code not in (0, -signals.SIGTERM)]
            if failed:
                errors.print(f"[bold red]error:[/] {', '.join(failed)} did not stop cleanly")
                raise typer.Exit(1)
            if not matched:
                errors.print("[bold red]error:[/] the totals in ClickHouse differ from what was sent")
                raise typer.Exit(1)
            console.print("Workers stopped; the stack keeps running (`onfinish stack down` stops it).")
            return
        console.print("The workers keep running; Ctrl-C stops them (the stack stays up).")
        stopped = False

        def on_signal(signum: int, _: object) -> None:
            nonlocal stopped
            stopped = True

        signals.signal(signals.SIGINT, on_signal)
        signals.signal(signals.SIGTERM, on_signal)
        while not stopped and all(w.process.poll() is None for w in run.children):
            time.sleep(0.5)
    finally:
        if run.children:
            with console.status("stopping the workers"):
                run.stop()
            console.print("Workers stopped; the stack keeps running (`onfinish stack down` stops it).")


@app.command()
def config(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the reference as markdown (docs/configuration.md).")
    ] = False,
) -> None:
    """List every setting: its environment variable, default and meaning."""
    from onfinish.configuration import reference_markdown, rows, settings_classes

    if markdown:
        typer.echo(reference_markdown(), nl=False)
        return
    for settings_class in settings_classes():
        table = Table(title=settings_class.__name__, show_lines=False)
        for column in ("variable", "default", "description"):
            table.add_column(column, overflow="fold")
        for row in rows(settings_class):
            table.add_row(*row)
        console.print(table)


# --- Analysts and operators: report, tail, dlq, status ---------------------------------------------


class GroupByOption(StrEnum):
    model = "model"
    feature = "feature"
    variant = "variant"
    environment = "environment"


class ReportFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def _since(text: str) -> timedelta:
    """A --since value (30m, 1h, 7d, ...), or a usage error that says what is expected."""
    from onfinish.analytics import parse_period

    try:
        return parse_period(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--since'") from None


def _querier() -> Querier:
    """Where analyst queries go: the sink's read-only endpoint (embedded) or the ClickHouse server."""
    from onfinish import analytics
    from onfinish.sinks.settings import SinkSettings

    return _fail_cleanly(lambda: analytics.querier(ClickHouseSettings(), _stack(), SinkSettings()))


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


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
    from onfinish import analytics

    period = _since(since)
    querier = _querier()
    result = _fail_cleanly(lambda: analytics.report(querier, since=period, by=by.value))
    if output is ReportFormat.json:
        typer.echo(analytics.to_json(result))
    elif output is ReportFormat.csv:
        typer.echo(analytics.to_csv(result), nl=False)
    else:
        analytics.render_table(result, console)


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
    from onfinish.analytics import seconds_of
    from onfinish.insights import compare as readouts_text
    from onfinish.insights.readouts import readout

    within = {k: v for k, v in (("feature_id", feature), ("model_id", model)) if v is not None}
    seconds = seconds_of(_since(since))
    querier = _querier()
    result = _fail_cleanly(
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
    from onfinish.analytics import seconds_of
    from onfinish.insights import readouts

    seconds = seconds_of(_since(since))
    querier = _querier()
    found = _fail_cleanly(lambda: readouts.drift(querier, dimension=by.value, seconds=seconds))
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
        sent = _fail_cleanly(lambda: publisher.publish_alerts(readouts.drift_alert(item) for item in worse))
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

    prices = _fail_cleanly(lambda: repricing.load_catalog(catalog))
    now = datetime.now(UTC)
    start, end = repricing.period(_since(since), now)
    querier = _querier()
    calls = _fail_cleanly(lambda: repricing.stored_calls(querier, start, end))
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

        _fail_cleanly(
            lambda: publisher.publish(
                COST_CORRECTION,
                ((c.event_id.bytes, c) for c in result.corrections),
                progress=advance,
            )
        )
        _fail_cleanly(
            lambda: publisher.publish(
                WINDOW_COST_CORRECTION,
                ((w.window_start.isoformat().encode(), w) for w in result.windows),
                progress=advance,
            )
        )
    deadline = time.monotonic() + wait_s
    held = (0, 0)
    while time.monotonic() < deadline:
        held = _fail_cleanly(lambda: repricing.applied(querier, result))
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
    """Run the insights worker: anomalies, budgets and model-version drift, raised as alerts.

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
    worker = _fail_cleanly(
        lambda: Watch(_querier(), RecordPublisher(KafkaSettings(), RegistrySettings()), InsightSettings())
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
    book = _fail_cleanly(lambda: load_budgets(settings.budgets))
    now = datetime.now(UTC)
    found = _fail_cleanly(lambda: spends(_querier(), book, now))
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


def _write_line(line: str) -> None:
    """One line to stdout; a reader that went away (`| head`) ends the output quietly."""
    import os
    import sys

    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the broken pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


@app.command()
def tail(
    topic: Annotated[
        str,
        typer.Argument(
            help="raw, enriched, windows, sessions, alerts or dlq (or its full name, onfinish.raw)."
        ),
    ],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new records (Ctrl-C stops).")
    ] = False,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            metavar="FIELD=VALUE",
            help="Only records whose top-level FIELD has this value (as text); repeat to require several.",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many matching records.")] = None,
) -> None:
    """Print the records of one of the pipeline's topics as JSON lines, from the beginning of the topic.

    Avro values are decoded with the writer schema their Confluent framing names, fetched from the
    schema registry (ONFINISH_REGISTRY_URL) by id; each line holds the value's fields and, under
    `_kafka`, the partition, offset, timestamp and key. Dead letters (dlq) show their headers
    (stage, reason, message, origin) and their key and value as base64. A value that cannot be
    decoded shows {"undecodable": reason, "bytes": n}. Nothing is committed: tail joins no
    consumer group of the pipeline and moves nobody's offsets.

    Example: onfinish tail enriched --filter model_id=gpt-4o --filter status=error --limit 5
    """
    import json

    from onfinish.inspect import tail as read_topic

    def show() -> None:
        records = read_topic(
            KafkaSettings(), RegistrySettings(), topic, follow=follow, filters=filters or [], limit=limit
        )
        with closing(records):
            for record in records:
                _write_line(json.dumps(record, ensure_ascii=False, separators=(",", ":")))

    try:
        _fail_cleanly(show)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@dlq_app.command("list")
def dlq_list(
    since: Annotated[
        str, typer.Option(metavar="PERIOD", help="How far back to look: 30m, 1h, 24h, 7d.")
    ] = "24h",
) -> None:
    """Count the dead letters received in the period by stage, reason and source topic.

    Read from ClickHouse's dlq table (with FINAL, so a re-delivered letter counts once), through
    the sink's read-only endpoint when ClickHouse is embedded.

    Example: onfinish dlq list --since 7d
    """
    from onfinish.analytics import describe_period
    from onfinish.inspect import dlq_list as list_letters

    period = _since(since)
    groups = _fail_cleanly(lambda: list_letters(_querier(), period))
    if not groups:
        console.print(f"No dead letters in the last {describe_period(period)}.")
        return
    table = Table(title=f"Dead letters of the last {describe_period(period)}")
    for header in ("stage", "reason", "source topic", "letters", "value bytes", "first", "last"):
        table.add_column(header, justify="right" if header in ("letters", "value bytes") else "left")
    for g in groups:
        table.add_row(
            g.stage, g.reason, g.source_topic, f"{g.letters:,}", f"{g.value_bytes:,}", _when(g.first_at),
            _when(g.last_at),
        )  # fmt: skip
    console.print(table)
    console.print("See the letters of a reason: onfinish dlq show --reason REASON", highlight=False)


@dlq_app.command("show")
def dlq_show(
    reason: Annotated[str, typer.Option(help="Dead-letter reason, e.g. truncated, contract_violation.")],
    limit: Annotated[int, typer.Option(min=1, help="How many letters, latest first.")] = 20,
    show_bytes: Annotated[
        bool,
        typer.Option("--bytes", help="Also print each value as base64 (it may hold personal data)."),
    ] = False,
) -> None:
    """Show the latest dead letters of one reason: stage, message, where they came from, value size.

    Values are not printed unless --bytes is given, and then only as base64: a refused record may
    hold personal data that redaction never got to see. Read from ClickHouse's dlq table.

    Example: onfinish dlq show --reason contract_violation --limit 5
    """
    from onfinish.inspect import dlq_show as show_letters

    letters = _fail_cleanly(lambda: show_letters(_querier(), reason, limit, include_bytes=show_bytes))
    if not letters:
        console.print(f"No dead letters with reason {reason}.", highlight=False)
        return
    table = Table(title=f"Latest dead letters: {reason}")
    for header in ("received", "stage", "source", "message", "value"):
        table.add_column(header, overflow="fold")
    for letter in letters:
        table.add_row(
            _when(letter.received_at),
            letter.stage,
            f"{letter.source_topic} [{letter.source_partition}] @{letter.source_offset}",
            letter.message,
            f"{letter.value_bytes:,} bytes ({letter.base64_chars:,} base64 chars)",
        )
    console.print(table, markup=False)
    if show_bytes:
        for letter in letters:
            where = f"{letter.source_topic} [{letter.source_partition}] @{letter.source_offset}"
            console.print(
                f"{where}: {letter.value_base64 or ''}", markup=False, highlight=False, soft_wrap=True
            )


@dlq_app.command("replay")
def dlq_replay(
    reason: Annotated[str, typer.Option(help="Replay the dead letters of this reason.")],
    source_topic: Annotated[
        str | None, typer.Option(help="Only letters that came from this topic, e.g. onfinish.raw.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be replayed; send nothing.")
    ] = False,
) -> None:
    """Send dead letters back to the topics they came from, for records refused because of a bug since fixed.

    Each letter's original key and value bytes (kept in ClickHouse's dlq table) are produced again
    to its source topic, usually onfinish.raw, with the header onfinish.replayed=1; the pipeline
    then processes them like any record, and a record refused again becomes a new dead letter.
    Deploy the fix first. Events already counted are not doubled: the processors drop duplicates
    by event_id and the tables collapse them.

    Example: onfinish dlq replay --reason processing_error --dry-run
    """
    from onfinish.inspect import dlq_replay as replay_letters

    querier = _querier()
    count = _fail_cleanly(
        lambda: replay_letters(
            KafkaSettings(), querier, reason=reason, source_topic=source_topic, dry_run=dry_run
        )
    )
    where = f" from {source_topic}" if source_topic else ""
    if dry_run:
        console.print(f"Would replay {count:,} dead letters of reason {reason}{where}.", highlight=False)
    else:
        console.print(
            f"[green]✓[/] replayed {count:,} dead letters of reason {reason}{where} to their source topics "
            "(header onfinish.replayed=1).",
            highlight=False,
        )


@app.command()
def status() -> None:
    """Show whether the pipeline runs and keeps up: components, consumer lag, events/s in and rows/s out.

    Components: the local stack's Kafka, registry and PostgreSQL (or, elsewhere, Kafka and the
    registry asked directly), each processor worker's /health on ONFINISH_PROCESSOR_WEB_PORT and
    the following ports, and the sink's /health on ONFINISH_SINK_WEB_PORT. Lag: records not yet
    consumed by the processors' group (ONFINISH_PROCESSOR_APP_ID) and each sink family's group
    (ONFINISH_SINK_GROUP_PREFIX-events, -rollups, -dlq), from committed offsets and partition ends.
    Rates: the workers' /metrics counters read twice, a second apart. Processor time per record:
    where the processors' time goes, stage by stage (decode, enrich, encode, state, finish), averaged
    since the workers started. Exits 3 when something is down.

    Example: onfinish status
    """
    from onfinish.inspect import status as pipeline_status
    from onfinish.processors.settings import ProcessorSettings
    from onfinish.sinks.settings import SinkSettings

    with console.status("Asking every component"):
        result = _fail_cleanly(
            lambda: pipeline_status(
                KafkaSettings(), RegistrySettings(), _stack(), ProcessorSettings(), SinkSettings()
            )
        )
    components = Table(title="onfinish pipeline")
    for header in ("component", "state", "address", "detail"):
        components.add_column(header, overflow="fold")
    for component in result.components:
        state = "[green]healthy[/]" if component.healthy else "[red]down[/]"
        components.add_row(component.name, state, component.address, component.detail)
    console.print(components)
    lags = Table(title="Consumer lag")
    for header in ("group", "lag", "partitions", "topics"):
        lags.add_column(
            header, justify="right" if header in ("lag", "partitions") else "left", overflow="fold"
        )
    for lag in result.lags:
        lags.add_row(lag.group, "-" if lag.lag is None else f"{lag.lag:,}", str(lag.partitions), lag.detail)
    console.print(lags)

    def per_second(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}/s"

    console.print(
        f"Events in (processors): {per_second(result.events_in_per_s)}; "
        f"rows out (sink to ClickHouse): {per_second(result.rows_out_per_s)}",
        highlight=False,
    )
    if result.processor_us_per_record:
        stages = ", ".join(f"{stage} {us:,.0f} µs" for stage, us in result.processor_us_per_record.items())
        console.print(f"Processor time per record since start: {stages}", highlight=False)
    if not result.healthy:
        raise typer.Exit(3)


def _version(value: bool) -> None:
    if value:
        console.print(f"onfinish {__version__}")
        raise typer.Exit


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Global options."""
    configure_logging(LogSettings())


def main() -> None:
    app()
