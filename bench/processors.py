"""Benchmark of the processors: one worker's full path against a raw aiokafka loop, and memory.

- throughput: a processor worker (its own process, a group of its own) reading a topic filled with
  loadgen traffic beforehand, from its first processed record to its last (start-up excluded),
  against an aiokafka loop that consumes the same records and produces each one again unchanged;
  and where that worker's time goes: its µs per event in each pipeline stage (its own
  `onfinish_processor_stage_seconds`), against its whole time per event;
- memory: the state of 100,000 live sessions, measured with tracemalloc over the pipeline's store.
"""

from __future__ import annotations

import asyncio
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

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.report import Figure, metrics_text, rate_until
from onfinish.inspection.status import stage_costs
from onfinish.loadgen.traffic import TrafficGenerator, TrafficProfile
from onfinish.processors.alerts import RuleBook
from onfinish.processors.decoding import Decoder
from onfinish.processors.enrichment import Enricher
from onfinish.processors.pipeline import DictStore, Pipeline, RawRecord
from onfinish.processors.pricing import PriceCatalog
from onfinish.processors.quality import QualityWeights
from onfinish.processors.redaction import PatternSet
from onfinish.producers import Emitter, OnFinishEvent, ProducerSettings
from onfinish.schemas.contract import ONFINISH_EVENT
from onfinish.schemas.wire import WriterSchema
from onfinish.settings import RegistrySettings
from onfinish.stack.stack import Stack
from onfinish.stack.topics import provision_topics

EVENTS = int(os.environ.get("ONFINISH_BENCH_PROCESSOR_EVENTS", "30000"))
SESSIONS = 100_000
WEB_PORT = 16266
ROOT = Path(__file__).resolve().parents[1]


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
            bootstrap_servers=stack.kafka_settings.bootstrap_servers,
            group_id=f"{prefix}-baseline",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.kafka_settings.bootstrap_servers, acks="all", linger_ms=20
        )
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


def _worker(stack: Stack, prefix: str, count: int) -> tuple[float, dict[str, float]]:
    """Events/s of one worker over the filled topic, and its µs per record in each pipeline stage
    (its /metrics once it has processed them all)."""
    env = {
        **os.environ,
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_settings.bootstrap_servers,
        "ONFINISH_KAFKA_PARTITIONS": str(stack.kafka_settings.partitions),
        "ONFINISH_KAFKA_TOPIC_PREFIX": prefix,
        "ONFINISH_REGISTRY_URL": stack.settings.registry_url,
        "ONFINISH_PROCESSOR_APP_ID": f"{prefix}-processors",
        "ONFINISH_PROCESSOR_WEB_PORT": str(WEB_PORT),
    }
    with tempfile.TemporaryFile() as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "onfinish.processors.worker", "worker"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
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
    rate, stages = _worker(stack, prefix, count)
    figures = [
        Figure(
            "processor worker, full path, one process",
            rate,
            "events/s",
            "aiokafka consume + produce loop",
            baseline,
        )
    ]
    # Where the worker's time goes, from its own stage histograms: each stage's µs per event
    # against the worker's whole time per event (the ratio is the stage's share).
    figures += [
        Figure(
            f"processor worker, {stage} stage, per event",
            us,
            "µs",
            "the worker's whole time per event",
            1e6 / rate,
            higher_is_better=False,
        )
        for stage, us in stages.items()
    ]
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
