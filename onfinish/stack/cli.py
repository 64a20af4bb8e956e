"""`onfinish stack` and `onfinish topics`: the local stack's lifecycle and the pipeline's topics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from onfinish.cli.console import console, fail_cleanly, spinner, stack_settings
from onfinish.settings import ClickHouseSettings, KafkaSettings, RegistrySettings

if TYPE_CHECKING:
    pass


stack_app = typer.Typer(
    help=(
        "Run the local stack on this machine, with no Docker: Apache Kafka (KRaft) on 127.0.0.1:9092, "
        "the schema registry on 127.0.0.1:8081 (schemas kept in a local PostgreSQL) and ClickHouse "
        "embedded through chDB. Data lives in ONFINISH_STACK_HOME (default .onfinish/) and survives "
        "down/up; software is cached in ONFINISH_STACK_CACHE_DIR."
    ),
    no_args_is_help=True,
)
topics_app = typer.Typer(
    help="Kafka topics of the pipeline (onfinish.raw, .enriched, .windows, .sessions, .alerts, .dlq).",
    no_args_is_help=True,
)


@stack_app.command("install")
def stack_install() -> None:
    """Fetch Kafka's jars with Maven and build the schema registry with Go, into the cache.

    Safe to run again: what is already in the cache is kept. `stack up` does this when needed.
    """
    from onfinish.stack.stack import Stack

    stack = Stack(stack_settings())
    with spinner("Installing the local stack") as progress:
        fail_cleanly(lambda: stack.install(progress))
    for step in stack.install_steps():
        console.print(f"[green]✓[/] {step.artefact.name}: {step.artefact.path}")


@stack_app.command("up")
def stack_up() -> None:
    """Install what is missing, start every component, wait until each is healthy, create the topics.

    Running it again while the stack is up is harmless. A port already taken by another program is
    reported with the component that needs it.
    """
    from onfinish.stack.stack import Stack

    stack = Stack(stack_settings())
    with spinner("Starting the local stack") as progress:
        report = fail_cleanly(lambda: stack.up(progress))
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
    console.print(
        f"[green]✓[/] contract registered: {len(report.registrations)} subjects, "
        + ", ".join(sorted({r.compatibility for r in report.registrations}))
    )
    console.print(f"[green]✓[/] ClickHouse {report.clickhouse_version} at {report.clickhouse}")
    console.print(f"Stack up in {report.seconds:.1f}s.")


@stack_app.command("down")
def stack_down() -> None:
    """Stop the processes `stack up` started (by their recorded pid, never by name). Data is kept."""
    from onfinish.stack.stack import Stack

    stopped = fail_cleanly(lambda: Stack(stack_settings()).down())
    console.print(f"Stopped: {', '.join(stopped)}." if stopped else "Nothing of this stack was running.")


@stack_app.command("status")
def stack_status() -> None:
    """Show each component: whether it runs and answers, its address, pid and log file."""
    from onfinish.stack.stack import Stack

    settings = stack_settings()
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
    """Create the pipeline's topics and register the contract: the admin step before any worker starts.

    Topics go to ONFINISH_KAFKA_BOOTSTRAP_SERVERS (existing ones are left as they are); partitions
    (ONFINISH_KAFKA_PARTITIONS, default 12) are fixed at creation and cap how many processor workers
    can share the work; onfinish.sessions is compacted. Every record of the contract is registered on
    ONFINISH_REGISTRY_URL with its subject set to FULL_TRANSITIVE compatibility, so producers and
    workers can run with auto-registration off and read-only registry rights.
    """
    from onfinish.schemas.governance import register
    from onfinish.stack.topics import provision_topics

    kafka = KafkaSettings()
    results = fail_cleanly(lambda: provision_topics(kafka))
    for topic in results:
        verb = "created" if topic.created else "exists"
        console.print(f"{topic.name}: {verb}, {topic.partitions} partitions {topic.note}".rstrip())
    for registration in fail_cleanly(lambda: register(RegistrySettings(), kafka.topic_prefix)):
        console.print(
            f"{registration.subject}: schema id {registration.schema_id}, {registration.compatibility}"
        )
