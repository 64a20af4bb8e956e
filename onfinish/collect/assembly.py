"""The collector's parts built from settings, once, at the edge (the command, tests, benchmarks)."""

from __future__ import annotations

from datetime import timedelta

from onfinish.collect.feedback import FeedbackReader
from onfinish.collect.ingest import Ingest
from onfinish.collect.mapping import SpanMapper, load_mapping
from onfinish.collect.receiver import Receiver
from onfinish.collect.settings import CollectSettings
from onfinish.producers.emitter import Emitter
from onfinish.producers.settings import ProducerSettings
from onfinish.settings import KafkaSettings, RegistrySettings


def emitter(
    kafka: KafkaSettings, registry: RegistrySettings, producer: ProducerSettings | None = None
) -> Emitter:
    """The SDK's emitter, producing to the pipeline's raw topic under the configured prefix.

    Its spool and content capture are the SDK's own settings (ONFINISH_PRODUCER_SPOOL_DIR,
    ONFINISH_PRODUCER_CAPTURE_CONTENT): the collector is a producer like any service.
    """
    producer = producer or ProducerSettings()
    if "topic" not in producer.model_fields_set:
        producer = producer.model_copy(update={"topic": f"{kafka.topic_prefix}.raw"})
    return Emitter(producer, kafka, registry)


def mapper(settings: CollectSettings, *, capture_content: bool) -> tuple[SpanMapper, FeedbackReader]:
    mapping = load_mapping(settings.mapping)
    return (
        SpanMapper(
            mapping,
            capture_content=capture_content,
            max_past=timedelta(seconds=settings.max_past_s),
            max_future=timedelta(seconds=settings.max_future_s),
        ),
        FeedbackReader(mapping.feedback),
    )


def ingest(settings: CollectSettings, sdk: Emitter) -> Ingest:
    span_mapper, feedback = mapper(settings, capture_content=sdk.settings.capture_content)
    return Ingest(span_mapper, feedback, sdk, sync=settings.fsync)


def receiver(
    settings: CollectSettings,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    producer: ProducerSettings | None = None,
) -> Receiver:
    sdk = emitter(kafka, registry, producer)
    sdk.start()  # adopt and replay the spools of a receiver that died, before the first request
    return Receiver(settings, sdk, ingest(settings, sdk))
