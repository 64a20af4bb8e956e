"""Benchmark of the processors: one worker's full path against a raw aiokafka loop, and memory.

- throughput: a processor worker (its own process, a group of its own) reading a topic filled with
  loadgen traffic beforehand, from its first processed record to its last (start-up excluded),
  against an aiokafka loop that consumes the same records and produces each one again unchanged;
  once on each engine of the per-event path (ONFINISH_PROCESSOR_ENGINE, processors/engines.py);
  and where that worker's time goes: its µs per event in each pipeline stage (its own
  `onfinish_processor_stage_seconds`), the native engine's beside the Python reference's;
- the pipeline alone, in this process, without Kafka: the same loadgen records through both
  engines' pipelines, µs per event in each stage and events/s, the Python engine as the baseline;
- memory: the state of 100,000 live sessions, measured with tracemalloc over the pipeline's store.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.report import Figure, metrics_text, rate_until
from onfinish.inspection.status import stage_costs
from onfinish.loadgen.traffic import TrafficGenerator, TrafficProfile
from onfinish.processors.alerts import RuleBook
from onfinish.processors.decoding import Decoder, TimeBounds
from onfinish.processors.engines import NativeCore
from onfinish.processors.enrichment import Enricher
from onfinish.processors.pipeline import STAGES, DictStore, Pipeline, RawRecord
from onfinish.processors.pricing import PriceCatalog
from onfinish.processors.quality import QualityWeights
from onfinish.processors.redaction import PatternSet
from onfinish.processors.settings import Engine, ProcessorSettings
from onfinish.producers import Emitter, Feedback, OnFinishEvent, ProducerSettings
from onfinish.schemas import wire
from onfinish.schemas.contract import FEEDBACK, ONFINISH_EVENT
from onfinish.schemas.wire import WriterSchema
from onfinish.security import aiokafka_config
from onfinish.settings import RegistrySettings
from onfinish.stack.stack import Stack
from onfinish.stack.topics import provision_topics

EVENTS = int(os.environ.get("ONFINISH_BENCH_PROCESSOR_EVENTS", "30000"))
# Raw records through the in-process pipelines (loadgen traffic with its feedback and malformed share).
PIPELINE_RECORDS = int(os.environ.get("ONFINISH_BENCH_PIPELINE_RECORDS", "30000"))
SESSIONS = 100_000
WEB_PORT = 16266
ROOT = Path(__file__).resolve().parents[1]


def start_worker(env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """A processor worker in its own process, as production runs it, its output into `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "onfinish.processors.worker", "worker"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _fill(stack: Stack, prefix: str) -> int:
    provision_topics(stack.kafka_settings.model_copy(update={"topic_prefix": prefix}))
    generator = TrafficGenerator(TrafficProfile(malformed_share=0, feedback_share=0), seed=77)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as spool:
        registry = RegistrySettings(url=stack.settings.registry_url)
        emitter = Emitter(
            ProducerSettings(topic=f"{prefix}.raw", spool_dir=Path(spool)), stack.kafka_settings, registry
        )
        count = 0
        for item in generator.items(EVENTS):
            if isinstance(item, OnFinishEvent):
                shift = now - item.finished_at
                emitter.on_finish(
                    item.model_copy(
                        update={
                            "started_at": item.started_at + shift,
                            "finished_at": item.finished_at + shift,
                        }
                    )
                )
                count += 1
        if not emitter.flush(300):
            raise RuntimeError(f"filling the topic failed: {emitter.stats()}")
        emitter.close()
    return count


def _aiokafka_loop(stack: Stack, prefix: str, count: int) -> float:
    async def run() -> float:
        consumer = AIOKafkaConsumer(
            f"{prefix}.raw",
            **aiokafka_config(stack.kafka_settings),
            group_id=f"{prefix}-baseline",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        producer = AIOKafkaProducer(**aiokafka_config(stack.kafka_settings), acks="all", linger_ms=20)
        await consumer.start()
        await producer.start()
        seen = 0
        began = 0.0
        try:
            while seen < count:
                batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
                for messages in batch.values():
                    for message in messages:
                        if not began:
                            began = time.perf_counter()
                        await producer.send(f"{prefix}.enriched", message.value, key=message.key)
                        seen += 1
            await producer.flush()
            await consumer.commit()
            return seen / (time.perf_counter() - began)
        finally:
            await producer.stop()
            await consumer.stop()

    return asyncio.run(run())


def _worker(stack: Stack, prefix: str, count: int, engine: Engine) -> tuple[float, dict[str, float]]:
    """Events/s of one worker on `engine` over the filled topic (a group of its own), and its µs
    per record in each pipeline stage (its /metrics once it has processed them all)."""
    env = {
        **os.environ,
        "ONFINISH_PROCESSOR_ENGINE": engine.value,
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_settings.bootstrap_servers,
        "ONFINISH_KAFKA_PARTITIONS": str(stack.kafka_settings.partitions),
        "ONFINISH_KAFKA_TOPIC_PREFIX": prefix,
        "ONFINISH_REGISTRY_URL": stack.settings.registry_url,
        "ONFINISH_PROCESSOR_APP_ID": f"{prefix}-processors-{engine.value}",
        "ONFINISH_PROCESSOR_WEB_PORT": str(WEB_PORT),
    }
    with tempfile.TemporaryFile() as log:
        worker = start_worker(env, log)
        try:
            rate = rate_until(WEB_PORT, "onfinish_processor_processed_total", count)
            if rate is None:
                raise RuntimeError("the worker did not process the benchmark's events in time")
            text = metrics_text(WEB_PORT, timeout_s=10)
            stages = stage_costs([text]) if text is not None else None
            return rate, stages or {}
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)


def _pipeline_records() -> list[RawRecord]:
    """Loadgen traffic as a raw topic of 12 partitions holds it, framed with the contract's ids."""
    records = []
    offsets = [0] * 12
    generator = TrafficGenerator(TrafficProfile(), seed=79)
    for index, item in enumerate(generator.items(PIPELINE_RECORDS)):
        partition = index % 12
        if isinstance(item, OnFinishEvent | Feedback):
            record_type = ONFINISH_EVENT if isinstance(item, OnFinishEvent) else FEEDBACK
            schema_id = 1 if record_type is ONFINISH_EVENT else 2
            value = wire.frame(schema_id, record_type.encode(record_type.to_datum(item)))
            key = item.key.encode()
        else:
            key, value = item.key, item.value
        records.append(RawRecord(key, value, "bench", partition, offsets[partition]))
        offsets[partition] += 1
    return records


def pipeline_engines() -> list[Figure]:
    """The pipeline alone, in this process: µs per raw record in each stage and records/s on the
    native engine, each beside the Python reference's over the same records in the same run."""
    records = _pipeline_records()
    writers = {
        1: WriterSchema(ONFINISH_EVENT, ONFINISH_EVENT.parsed),
        2: WriterSchema(FEEDBACK, FEEDBACK.parsed),
    }
    now = datetime(2026, 11, 23, 13, tzinfo=UTC)  # an hour after the traffic's start
    settings = ProcessorSettings()
    enricher = Enricher(
        PriceCatalog.load(),
        settings.quality_weights(),
        PatternSet.load(),
        frozenset(settings.attribute_allow_list),
        b"k",
    )
    frame = wire.framing(9)
    measured: dict[Engine, tuple[float, dict[str, float]]] = {}
    for engine in (Engine.python, Engine.native):
        decoder = Decoder(writers.get, bounds=TimeBounds(max_past=timedelta(days=2)), clock=lambda: now)
        pipeline = Pipeline(
            decoder,
            enricher,
            RuleBook.load(),
            lambda record_type, datum: frame + record_type.encode(datum),
            DictStore(),
            DictStore(),
            allowed_lateness=timedelta(minutes=2),
            clock=lambda: now,
            native=NativeCore(decoder, enricher, lambda record_type: frame)
            if engine is Engine.native
            else None,
        )
        seconds = dict.fromkeys(STAGES, 0.0)
        began = time.perf_counter()
        for start in range(0, len(records), 1000):  # the worker's batches
            batch = pipeline.batch()
            for record in records[start : start + 1000]:
                batch.add(record)
            batch.finish()
            for stage in STAGES:
                seconds[stage] += batch.seconds[stage]
        elapsed = time.perf_counter() - began
        measured[engine] = (len(records) / elapsed, {k: v / len(records) * 1e6 for k, v in seconds.items()})
    (python_rate, python_stages), (native_rate, native_stages) = (
        measured[Engine.python],
        measured[Engine.native],
    )
    figures = [
        Figure(
            "processor pipeline alone, native engine, per raw record",
            native_rate,
            "records/s",
            "the same on the Python engine",
            python_rate,
        )
    ]
    figures += [
        Figure(
            f"processor pipeline alone, native engine, {stage} stage, per raw record",
            native_stages[stage],
            "µs",
            "the same on the Python engine",
            python_stages[stage],
            higher_is_better=False,
        )
        for stage in STAGES
    ]
    return figures


def session_memory() -> Figure:
    """Bytes of pipeline state per live session, for 100,000 sessions of one call each."""
    generator = TrafficGenerator(
        TrafficProfile(malformed_share=0, feedback_share=0, sessions=SESSIONS), seed=78
    )
    events = [item for item in generator.items(SESSIONS * 2) if isinstance(item, OnFinishEvent)][:SESSIONS]
    writer = {1: WriterSchema(ONFINISH_EVENT, ONFINISH_EVENT.parsed)}
    now = events[-1].finished_at + timedelta(minutes=1)
    pipeline = Pipeline(
        Decoder(writer.get, clock=lambda: now),
        Enricher(PriceCatalog.load(), QualityWeights(), PatternSet.load(), frozenset(), b"k"),
        RuleBook.load(),
        lambda record_type, record: b"",
        DictStore(),
        DictStore(),
        allowed_lateness=timedelta(minutes=2),
        clock=lambda: now,
    )
    values = [b"\x00\x00\x00\x00\x01" + ONFINISH_EVENT.encode(ONFINISH_EVENT.to_datum(e)) for e in events]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for start in range(0, len(values), 1000):  # the worker's batches
        batch = pipeline.batch()
        for offset in range(start, min(start + 1000, len(values))):
            batch.add(RawRecord(None, values[offset], "bench", 0, offset))
        batch.finish()
    # What the pipeline keeps, not what the last batch left for the collector (its records, and
    # the cycles between a batch and the sessions it touched).
    del batch
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    sessions = len(list(pipeline.sessions.keys()))
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_session = grown / sessions
    return Figure(
        "processor state per live session",
        per_session,
        "bytes",
        "one enriched event as an Avro record",
        float(len(values[0])),
        higher_is_better=False,
    )


def run(stack: Stack) -> list[Figure]:
    prefix = f"benchp{uuid.uuid4().hex[:6]}"
    count = _fill(stack, prefix)
    baseline = _aiokafka_loop(stack, prefix, count)
    python_rate, python_stages = _worker(stack, prefix, count, Engine.python)
    native_rate, native_stages = _worker(stack, prefix, count, Engine.native)
    figures = [
        Figure(
            f"processor worker, full path, one process, {engine.value} engine",
            rate,
            "events/s",
            "aiokafka consume + produce loop",
            baseline,
        )
        for engine, rate in ((Engine.native, native_rate), (Engine.python, python_rate))
    ]
    figures.append(
        Figure(
            "processor worker, full path, native engine",
            native_rate,
            "events/s",
            "the same worker on the Python engine",
            python_rate,
        )
    )
    # Where the worker's time goes, from its own stage histograms: each stage's µs per event on the
    # native engine against the same stage on the Python reference, then the reference's stages
    # against its whole time per event (the ratio is the stage's share).
    figures += [
        Figure(
            f"processor worker, {stage} stage, per event, native engine",
            us,
            "µs",
            "the same stage on the Python engine",
            python_stages.get(stage, 0.0),
            higher_is_better=False,
        )
        for stage, us in native_stages.items()
    ]
    figures += [
        Figure(
            f"processor worker, {stage} stage, per event, python engine",
            us,
            "µs",
            "the worker's whole time per event",
            1e6 / python_rate,
            higher_is_better=False,
        )
        for stage, us in python_stages.items()
    ]
    figures += pipeline_engines()
    memory = session_memory()
    figures.append(memory)
    figures.append(
        Figure(
            "processor state of 100,000 live sessions",
            memory.value * SESSIONS / 2**20,
            "MiB",
            "the same sessions' raw events",
            memory.baseline * SESSIONS / 2**20,
            higher_is_better=False,
        )
    )
    return figures
