"""`onfinish loadgen`: realistic LLM telemetry sent through the SDK at a steady rate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from onfinish.cli.console import console, errors, fail_cleanly, progress_columns
from onfinish.settings import KafkaSettings, RegistrySettings

if TYPE_CHECKING:
    pass

app = typer.Typer()


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

    from onfinish.loadgen.load import LoadPlan, run_load
    from onfinish.loadgen.traffic import Effect, TrafficProfile
    from onfinish.producers.settings import ProducerSettings

    effects = tuple(fail_cleanly(lambda: [Effect.parse(text) for text in plant or []]))
    profile = TrafficProfile(
        sessions=sessions, pii_share=pii_share, malformed_share=malformed_share, effects=effects
    )
    plan = LoadPlan(rate=rate, duration_s=duration, seed=seed, profile=profile, predraw=predraw)
    with Progress(*progress_columns(), console=console) as bar:
        drawing = bar.add_task(f"drawing {plan.items} items", total=plan.items, visible=predraw)
        task = bar.add_task(f"sending {plan.items} items at {rate:g}/s", total=plan.items)
        report = fail_cleanly(
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
