"""The root of the `onfinish` command: the worker commands, `config`, and every room's command group.

Each command group lives with the code it drives (onfinish/stack/cli.py, onfinish/inspection/cli.py,
onfinish/insights/cli.py, ...) as a typer sub-app; this module only assembles them. Human output goes
to the terminal through rich; errors onfinish raises on purpose become one clear message and exit
code 1, never a stack trace (onfinish/cli/console.py).
"""

from __future__ import annotations

from typing import Annotated

try:
    import typer
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - depends on the install
    raise SystemExit("The onfinish command needs the cli extra: pip install 'onfinish[cli]'") from exc

from onfinish import __version__
from onfinish.alerting.cli import app as alerts_app
from onfinish.cli.console import console
from onfinish.collect.cli import app as collect_app
from onfinish.demo.cli import app as demo_app
from onfinish.errors import OnfinishError
from onfinish.insights.cli import app as insights_app
from onfinish.inspection.cli import app as inspection_app
from onfinish.inspection.cli import dlq_app
from onfinish.loadgen.cli import app as loadgen_app
from onfinish.logs import LogSettings, configure_logging
from onfinish.schemas.cli import schema_app
from onfinish.stack.cli import stack_app, topics_app

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
        str | None,
        typer.Option(
            help="Table families to write, comma-separated: events, rollups, dlq "
            "(default: ONFINISH_SINK_FAMILIES, which is all three)."
        ),
    ] = None,
) -> None:
    """Run a sink worker: onfinish.enriched, .windows, .sessions, .alerts and .dlq into ClickHouse.

    Each family (events; rollups = windows, sessions, alerts; dlq) is a consumer group of its own,
    ONFINISH_SINK_GROUP_PREFIX-<family>. Migrations are applied at start. Offsets are committed
    only after ClickHouse accepted the batch, and a batch inserted twice is dropped by ClickHouse.
    With the embedded ClickHouse (no ONFINISH_CLICKHOUSE_DSN) this process owns the data directory
    and serves read-only SQL on ONFINISH_SINK_QUERY_PORT for the CLI, the dashboard and analysts.
    /health and /metrics on ONFINISH_SINK_WEB_PORT. SIGTERM or Ctrl-C: finish the batch, commit, stop.
    """
    from onfinish.query.server import serve_reads
    from onfinish.sinks.settings import FAMILIES, SinkSettings
    from onfinish.sinks.worker import main as run_sink

    settings = SinkSettings()
    chosen = settings.families if families is None else [n.strip() for n in families.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown or not chosen:
        raise OnfinishError(f"unknown table families {unknown}; choose from {', '.join(FAMILIES)}")
    console.print(f"sink worker: {', '.join(chosen)} (Ctrl-C stops it)")
    from onfinish.query.settings import QuerySettings

    reads = serve_reads(settings.query_host, settings.query_port, QuerySettings().token)
    run_sink(chosen, serve_reads=reads)


@app.command()
def config(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the reference as markdown (docs/configuration.md).")
    ] = False,
) -> None:
    """List every setting: its environment variable, default and meaning."""
    from onfinish.cli.configuration import reference_markdown, rows, settings_classes

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


app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(schema_app, name="schema")
app.add_typer(loadgen_app)
app.add_typer(demo_app)
app.add_typer(insights_app)
app.add_typer(inspection_app)
app.add_typer(dlq_app, name="dlq")
app.add_typer(collect_app, name="collect")
app.add_typer(alerts_app, name="alerts")
