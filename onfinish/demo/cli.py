"""`onfinish demo`: the whole pipeline on this machine, with a report and the live dashboard."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from onfinish.cli.console import console, errors, fail_cleanly, progress_columns, spinner, stack_settings

if TYPE_CHECKING:
    pass

T = TypeVar("T")


app = typer.Typer()


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

    from rich.progress import Progress

    from onfinish.alerting.cli import show_demo_notifications
    from onfinish.demo.local_pipeline import Demo
    from onfinish.insights.report import render_table
    from onfinish.insights.report import report as traffic_report
    from onfinish.query.client import EndpointQuerier
    from onfinish.stack.stack import Stack

    demo_began = datetime.now(UTC)
    settings = stack_settings()
    stack = Stack(settings)
    console.rule("onfinish demo")
    began = time.monotonic()
    with spinner("Starting the local stack") as progress:
        up = fail_cleanly(lambda: stack.up(progress))
    console.print(
        f"[green]✓[/] stack up [dim]({up.seconds:.1f}s)[/]: Kafka, schema registry, ClickHouse embedded"
    )
    run = Demo(settings, workers=workers)

    def step(title: str, action: Callable[[], T]) -> T:
        started = time.monotonic()
        with console.status(title):
            result = fail_cleanly(action)
        console.print(f"[green]✓[/] {title} [dim]({time.monotonic() - started:.1f}s)[/]")
        return result

    try:
        step("topics ready", run.ensure_topics)
        step("sink worker started: migrations applied, read-only SQL served", run.start_sink)
        step(f"{workers} processor worker(s) started and assigned partitions", run.start_processors)
        baseline = fail_cleanly(run.stored)
        items = max(1, round(rate * duration))
        with Progress(*progress_columns(), console=console) as bar:
            task = bar.add_task(f"sending {items} items at {rate:g}/s", total=items)
            sent = fail_cleanly(
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
        querier = fail_cleanly(
            lambda: EndpointQuerier(run.query_url)  # the sink this demo started
        )
        report_ = fail_cleanly(lambda: traffic_report(querier, since=timedelta(hours=1), by="model"))
        render_table(report_, console)
        show_demo_notifications(run.kafka, run.registry, settings, run.query_url, since=demo_began)
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
