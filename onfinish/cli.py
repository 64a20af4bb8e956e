"""The `onfinish` command: one entry point with consistent verbs for every user.

Human output goes to the terminal through rich; errors onfinish raises on purpose become one clear
message and exit code 1, never a stack trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, TypeVar

try:
    import typer
    from rich.console import Console
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - depends on the install
    raise SystemExit("The onfinish command needs the cli extra: pip install 'onfinish[cli]'") from exc

from pydantic_settings import BaseSettings

from onfinish import __version__
from onfinish.errors import OnfinishError
from onfinish.logs import LogSettings, configure_logging
from onfinish.settings import ALL_SETTINGS, ClickHouseSettings, KafkaSettings, RegistrySettings, StackSettings

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
) -> None:
    """Send realistic LLM telemetry through the SDK to ONFINISH_PRODUCER_TOPIC at a steady rate.

    Several providers and models, heavy-tailed latency and TTFT, streaming, errors and retries,
    cache hits and fallbacks, multi-turn sessions, late feedback, a small share of PII in free text
    and of malformed records (sent raw, as a broken producer would). Prints what it sent.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from onfinish.producers.loadgen import LoadPlan, run_load
    from onfinish.producers.settings import ProducerSettings
    from onfinish.producers.traffic import TrafficProfile

    profile = TrafficProfile(sessions=sessions, pii_share=pii_share, malformed_share=malformed_share)
    plan = LoadPlan(rate=rate, duration_s=duration, seed=seed, profile=profile)
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"sending {plan.items} items at {rate:g}/s", total=plan.items)
        report = _fail_cleanly(
            lambda: run_load(
                plan,
                ProducerSettings(),
                KafkaSettings(),
                RegistrySettings(),
                progress=lambda done, _: bar.update(task, completed=done),
                manifest=manifest,
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
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running/--stop", help="Leave the stack running afterwards (default) or stop it."
        ),
    ] = True,
) -> None:
    """Bring the local stack up and prove a real round trip through it.

    One Avro record is registered with the schema registry, produced to Kafka, consumed and decoded,
    then written to ClickHouse and read back; each step is printed with the time it took.
    """
    from onfinish.roundtrip import run_round_trip
    from onfinish.stack.stack import Stack

    stack_settings = _stack()
    stack = Stack(stack_settings)
    console.rule("onfinish demo")
    with _spinner("Starting the local stack") as progress:
        report = _fail_cleanly(lambda: stack.up(progress))
    console.print(
        f"[green]✓[/] stack up in {report.seconds:.1f}s: "
        + ", ".join(f"{s.name} (pid {s.pid})" for s in report.started)
        + ", ClickHouse embedded"
    )
    kafka = KafkaSettings(bootstrap_servers=stack_settings.kafka_bootstrap)
    registry = RegistrySettings(url=stack_settings.registry_url)
    with console.status("Sending one record through registry, Kafka and ClickHouse"):
        trip = _fail_cleanly(lambda: run_round_trip(kafka, registry, ClickHouseSettings(), stack_settings))
    for step, seconds in trip.steps:
        console.print(f"[green]✓[/] {step} [dim]({seconds * 1000:.0f} ms)[/]")
    console.print(f"Round trip of probe {trip.probe_id} complete.")
    if keep_running:
        console.print(
            "The stack keeps running: `onfinish stack status`, `onfinish stack down` (or `make stack-down`)."
        )
    else:
        stack.down()
        console.print("Stack stopped.")


@app.command()
def config() -> None:
    """List every setting: its environment variable, default and meaning."""
    from onfinish.processors.settings import ProcessorSettings
    from onfinish.producers.settings import ProducerSettings
    from onfinish.sinks.settings import SinkSettings

    classes: tuple[type[BaseSettings], ...] = (
        *ALL_SETTINGS,
        ProducerSettings,
        ProcessorSettings,
        SinkSettings,
        LogSettings,
    )
    for settings_class in classes:
        table = Table(title=settings_class.__name__, show_lines=False)
        for column in ("variable", "default", "description"):
            table.add_column(column, overflow="fold")
        prefix = str(settings_class.model_config.get("env_prefix", ""))
        for name, field in settings_class.model_fields.items():
            table.add_row(
                f"{prefix}{name.upper()}",
                str(field.get_default(call_default_factory=True)),
                field.description or "",
            )
        console.print(table)


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
