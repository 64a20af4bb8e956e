"""The operators' look inside the pipeline: `onfinish tail`, `onfinish dlq` and `onfinish status`."""

from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from onfinish.cli.console import (
    analyst_querier,
    console,
    fail_cleanly,
    parse_since,
    stack_settings,
    when,
    write_line,
)
from onfinish.settings import KafkaSettings, RegistrySettings

if TYPE_CHECKING:
    pass

app = typer.Typer()


dlq_app = typer.Typer(
    help=(
        "Look into the dead letters: records a stage refused (undecodable, breaking the contract, "
        "a processing bug), kept with their stage, reason and original bytes in ClickHouse's dlq "
        "table by `onfinish sink`, and send fixed ones back with `replay`.\n\n"
        "Example: `onfinish dlq list --since 7d`, then `onfinish dlq show --reason truncated`."
    ),
    no_args_is_help=True,
)


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

    from onfinish.inspection.topics import tail as read_topic

    def show() -> None:
        records = read_topic(
            KafkaSettings(), RegistrySettings(), topic, follow=follow, filters=filters or [], limit=limit
        )
        with closing(records):
            for record in records:
                write_line(json.dumps(record, ensure_ascii=False, separators=(",", ":")))

    try:
        fail_cleanly(show)
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
    from onfinish.inspection.deadletters import dlq_list as list_letters
    from onfinish.query.sql import describe_period

    period = parse_since(since)
    groups = fail_cleanly(lambda: list_letters(analyst_querier(), period))
    if not groups:
        console.print(f"No dead letters in the last {describe_period(period)}.")
        return
    table = Table(title=f"Dead letters of the last {describe_period(period)}")
    for header in ("stage", "reason", "source topic", "letters", "value bytes", "first", "last"):
        table.add_column(header, justify="right" if header in ("letters", "value bytes") else "left")
    for g in groups:
        table.add_row(
            g.stage, g.reason, g.source_topic, f"{g.letters:,}", f"{g.value_bytes:,}", when(g.first_at),
            when(g.last_at),
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
    from onfinish.inspection.deadletters import dlq_show as show_letters

    letters = fail_cleanly(lambda: show_letters(analyst_querier(), reason, limit, include_bytes=show_bytes))
    if not letters:
        console.print(f"No dead letters with reason {reason}.", highlight=False)
        return
    table = Table(title=f"Latest dead letters: {reason}")
    for header in ("received", "stage", "source", "message", "value"):
        table.add_column(header, overflow="fold")
    for letter in letters:
        table.add_row(
            when(letter.received_at),
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
    from onfinish.inspection.deadletters import dlq_replay as replay_letters

    querier = analyst_querier()
    count = fail_cleanly(
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
    from onfinish.inspection.status import status as pipeline_status
    from onfinish.processors.settings import ProcessorSettings
    from onfinish.sinks.settings import SinkSettings

    with console.status("Asking every component"):
        result = fail_cleanly(
            lambda: pipeline_status(
                KafkaSettings(), RegistrySettings(), stack_settings(), ProcessorSettings(), SinkSettings()
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
