"""Benchmarks of the producer SDK, each next to a naive baseline measured in the same run.

- caller cost: the time `on_finish` takes on the caller's thread, against encoding with
  confluent-kafka's AvroSerializer and producing inline on that thread (what a hand-written hook
  would do);
- throughput: events per second from one process to the broker, acknowledged, against the same
  naive inline path;
- spool: appending encoded records (and flushing them to the OS) against writing the same bytes to
  a plain file; replaying an adopted spool to Kafka against producing the same bytes directly.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bench.report import Figure
from onfinish.loadgen.traffic import TrafficGenerator, TrafficProfile
from onfinish.producers import Emitter, OnFinishEvent, ProducerSettings
from onfinish.producers.encoding import Encoder
from onfinish.producers.spool import Spool
from onfinish.schemas.contract import ONFINISH_EVENT
from onfinish.schemas.wire import framing, registry_client
from onfinish.settings import RegistrySettings
from onfinish.stack.stack import Stack
from onfinish.stack.topics import TopicSpec, provision_topics

EVENTS = 100_000
CALLER_SAMPLES = 20_000
CALLER_RATE = 5_000  # hand-offs per second while caller cost is sampled: a busy service, not a flood


def _events(count: int) -> list[OnFinishEvent]:
    generator = TrafficGenerator(TrafficProfile(malformed_share=0, feedback_share=0), seed=42)
    events = [item for item in generator.items(count) if isinstance(item, OnFinishEvent)]
    # The benchmark's own input should not be what the garbage collector spends its time on.
    gc.collect()
    gc.freeze()
    return events


def _percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1000  # ns -> µs


def _topic(stack: Stack) -> str:
    spec = TopicSpec(f"bench-sdk-{uuid.uuid4().hex[:8]}", "SDK benchmark")
    provision_topics(stack.kafka_settings, (spec,))
    return spec.name(stack.kafka_settings)


class _Naive:
    """What a hook written by hand does: encode with AvroSerializer and produce, on the caller's thread."""

    def __init__(self, stack: Stack, topic: str) -> None:
        registry = registry_client(RegistrySettings(url=stack.settings.registry_url))
        self.serializer = AvroSerializer(
            registry,
            ONFINISH_EVENT.schema_str,
            conf={"subject.name.strategy": lambda ctx, name: f"{ctx.topic}-{name}"},
        )
        self.context = SerializationContext(topic, MessageField.VALUE)
        self.producer = Producer(
            {
                "bootstrap.servers": stack.kafka_settings.bootstrap_servers,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 50,
                "compression.type": "lz4",
            }
        )
        self.topic = topic

    def send(self, event: OnFinishEvent) -> None:
        value = self.serializer(ONFINISH_EVENT.to_datum(event), self.context)
        while True:
            try:
                self.producer.produce(self.topic, value, event.key.encode())
                break
            except BufferError:
                self.producer.poll(0.01)
        self.producer.poll(0)


def _sample_caller(send: object, events: list[OnFinishEvent]) -> list[int]:
    samples = []
    began = time.perf_counter()
    for index, event in enumerate(events[:CALLER_SAMPLES]):
        # A service waits on I/O between calls (releasing the GIL); a spinning loop would not.
        delay = began + index / CALLER_RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start = time.perf_counter_ns()
        send(event)  # type: ignore[operator]
        samples.append(time.perf_counter_ns() - start)
    return samples


def caller_cost_and_throughput(stack: Stack, spool_root: Path) -> list[Figure]:
    events = _events(EVENTS + 2_000)
    registry = RegistrySettings(url=stack.settings.registry_url)
    topic = _topic(stack)
    emitter = Emitter(
        ProducerSettings(topic=topic, spool_dir=spool_root / "caller"), stack.kafka_settings, registry
    )
    emitter.on_finish(events[0])
    emitter.flush(60)
    sdk_samples = _sample_caller(emitter.on_finish, events)
    emitter.flush(60)
    # The floor of this measurement on this machine: a call that only appends to a deque, paced the
    # same way while the SDK's worker runs (thread wake-ups and cache misses, not the SDK's code).
    floor: deque[OnFinishEvent] = deque()
    floor_samples = _sample_caller(floor.append, events)
    naive = _Naive(stack, topic)
    naive.send(events[0])
    naive_samples = _sample_caller(naive.send, events)
    naive.producer.flush(60)

    batch = events[:EVENTS]
    began = time.perf_counter()
    for event in batch:
        emitter.on_finish(event)
    if not emitter.flush(300):
        raise RuntimeError(f"the SDK did not deliver {EVENTS} events: {emitter.stats()}")
    sdk_rate = EVENTS / (time.perf_counter() - began)
    emitter.close()
    began = time.perf_counter()
    for event in batch:
        naive.send(event)
    naive.producer.flush(300)
    naive_rate = EVENTS / (time.perf_counter() - began)
    gc.unfreeze()

    return [
        Figure(
            "on_finish caller cost p50",
            _percentile(sdk_samples, 0.50),
            "µs",
            "inline AvroSerializer + produce p50",
            _percentile(naive_samples, 0.50),
            higher_is_better=False,
        ),
        Figure(
            "on_finish caller cost p99",
            _percentile(sdk_samples, 0.99),
            "µs",
            "inline AvroSerializer + produce p99",
            _percentile(naive_samples, 0.99),
            higher_is_better=False,
        ),
        Figure(
            "on_finish caller cost p99, against the machine's floor",
            _percentile(sdk_samples, 0.99),
            "µs",
            "bare deque.append p99, same pacing",
            _percentile(floor_samples, 0.99),
            higher_is_better=False,
        ),
        Figure(
            "SDK throughput, one process, acknowledged",
            sdk_rate,
            "events/s",
            "inline AvroSerializer + produce",
            naive_rate,
        ),
    ]


def spool_rates(stack: Stack, spool_root: Path) -> list[Figure]:
    events = _events(EVENTS)
    encoder = Encoder(capture_content=False)
    records = [encoder.encode(event) for event in events]
    gc.unfreeze()

    # Write: the spool's framed, checksummed appends against the same bytes to a plain file.
    orphan = spool_root / "replay" / "orphan"
    orphan.mkdir(parents=True)
    spool = Spool(orphan, max_bytes=10 * 1024**3)
    began = time.perf_counter()
    for kind, key, value in records:
        spool.append(kind, key, value)
    spool.flush()
    spool_write = len(records) / (time.perf_counter() - began)
    spool.close()
    (orphan / "lock").touch()  # an unlocked lock file: a spool whose process is gone
    with tempfile.TemporaryFile() as plain:
        began = time.perf_counter()
        for _, key, value in records:
            plain.write(key)
            plain.write(value)
        plain.flush()
        file_write = len(records) / (time.perf_counter() - began)

    # Replay: a new emitter adopting that spool, against producing the same framed bytes directly.
    topic = _topic(stack)
    registry = RegistrySettings(url=stack.settings.registry_url)
    began = time.perf_counter()
    emitter = Emitter(
        ProducerSettings(topic=topic, spool_dir=spool_root / "replay"), stack.kafka_settings, registry
    )
    emitter.on_finish(events[0])
    if not emitter.flush(300):
        raise RuntimeError(f"the spool was not replayed: {emitter.stats()}")
    replay = emitter.stats()["replayed"] / (time.perf_counter() - began)
    emitter.close()
    prefix = framing(1)
    producer = Producer(
        {
            "bootstrap.servers": stack.kafka_settings.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 50,
            "compression.type": "lz4",
        }
    )
    began = time.perf_counter()
    for _, key, value in records:
        while True:
            try:
                producer.produce(topic, prefix + value, key)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(300)
    direct = len(records) / (time.perf_counter() - began)
    return [
        Figure(
            "spool append + flush", spool_write, "records/s", "plain file write of the same bytes", file_write
        ),
        Figure(
            "spool replay to Kafka (adopted spool)",
            replay,
            "events/s",
            "produce the same bytes directly",
            direct,
        ),
    ]


def run(stack: Stack) -> list[Figure]:
    spool_root = Path(tempfile.mkdtemp(prefix="onfinish-bench-spool-"))
    try:
        return caller_cost_and_throughput(stack, spool_root) + spool_rates(stack, spool_root)
    finally:
        shutil.rmtree(spool_root, ignore_errors=True)
