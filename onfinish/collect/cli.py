"""`onfinish collect`: the OpenTelemetry receiver, and the worker of the Collector's Kafka topic."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    help=(
        "OpenTelemetry in: GenAI spans from any instrumented application become onfinish events, "
        "through the SDK's durable spool to onfinish.raw.\n\n"
        "`onfinish collect` serves OTLP/HTTP on ONFINISH_COLLECT_PORT (4318): POST /v1/traces and "
        "/v1/logs, protobuf or JSON, gzip or not; a 200 only once the events are spooled. "
        "`onfinish collect kafka` consumes what the OpenTelemetry Collector's Kafka exporter writes "
        "(ONFINISH_COLLECT_TOPIC, otlp_proto). The mapping is data/mapping.v1.toml, documented in "
        "docs/contract.md."
    ),
    invoke_without_command=True,
)


@app.callback()
def serve(
    ctx: typer.Context,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default ONFINISH_COLLECT_PORT).")
    ] = None,
) -> None:
    """Run the OTLP/HTTP receiver until SIGTERM or Ctrl-C (requests finish, the spool is flushed)."""
    if ctx.invoked_subcommand is not None:
        return
    from onfinish.collect import assembly
    from onfinish.collect.receiver import run_until_signalled
    from onfinish.collect.settings import CollectSettings
    from onfinish.settings import KafkaSettings, RegistrySettings

    settings = CollectSettings()
    if port is not None:
        settings = settings.model_copy(update={"port": port})
    from onfinish.runtime import prepare_worker

    receiver = assembly.receiver(settings, KafkaSettings(), RegistrySettings())
    prepare_worker(settings.gc_thresholds)
    typer.echo(
        f"onfinish collect: OTLP/HTTP on http://{settings.host}:{receiver.port}/v1/traces "
        f"(and /v1/logs, /health, /metrics), to {receiver.emitter.settings.topic}"
    )
    run_until_signalled(receiver)


@app.command()
def kafka() -> None:
    """Consume OTLP protobuf traces written by the OpenTelemetry Collector's Kafka exporter.

    Maps them as the receiver does and produces to onfinish.raw through the SDK; offsets are
    committed only once Kafka acknowledged the batch's events; a record that does not parse goes to
    onfinish.dlq with its reason. /health and /metrics on ONFINISH_COLLECT_WEB_PORT.
    """
    from onfinish.collect import assembly
    from onfinish.collect.metrics import CollectMetrics
    from onfinish.collect.settings import CollectSettings
    from onfinish.collect.topic import TopicWorker, run_until_signalled
    from onfinish.settings import KafkaSettings, RegistrySettings

    settings, kafka_settings = CollectSettings(), KafkaSettings()
    sdk = assembly.emitter(kafka_settings, RegistrySettings())
    worker = TopicWorker(settings, kafka_settings, sdk, assembly.ingest(settings, sdk), CollectMetrics(sdk))
    typer.echo(
        f"onfinish collect kafka: {settings.topic} (group {settings.group_id}) to {sdk.settings.topic}; "
        f"/health on {settings.host}:{settings.web_port}"
    )
    from onfinish.runtime import prepare_worker

    prepare_worker(settings.gc_thresholds)
    run_until_signalled(worker, settings.host, settings.web_port)
