"""The SDK's helpers: call timing, content fingerprints, metrics, and the non-blocking hand-off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from onfinish.producers import CallTracker, Emitter, ProducerSettings, fingerprint, prompt_hash
from onfinish.producers.fingerprint import mask
from onfinish.producers.metrics import register_metrics
from onfinish.settings import KafkaSettings, RegistrySettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tracker_measures_ttft_latency_and_chunks():
    clock = FakeClock()
    tracker = CallTracker(clock=clock)

    def chunks() -> Iterator[str]:
        clock.now += 0.120
        yield "Hel"
        clock.now += 0.030
        yield "lo"
        clock.now += 0.050

    assert "".join(tracker.stream(chunks())) == "Hello"
    timing = tracker.timing()
    assert round(timing["ttft_ms"], 6) == 120.0
    assert round(timing["latency_ms"], 6) == 200.0
    assert (timing["streamed"], timing["stream_chunks"]) == (True, 2)
    assert (timing["finished_at"] - timing["started_at"]).total_seconds() * 1000 == round(
        timing["latency_ms"], 3
    )


def test_tracker_wraps_async_streams_and_plain_calls():
    clock = FakeClock()
    tracker = CallTracker(clock=clock)

    async def chunks() -> AsyncIterator[int]:
        for i in range(3):
            clock.now += 0.01
            yield i

    async def consume() -> list[int]:
        return [i async for i in tracker.astream(chunks())]

    assert asyncio.run(consume()) == [0, 1, 2]
    assert tracker.timing()["stream_chunks"] == 3
    plain = CallTracker(clock=clock)
    clock.now += 0.5
    assert plain.timing()["ttft_ms"] is None and plain.timing()["streamed"] is False


def test_prompt_hash_masks_personal_data_before_hashing():
    a = prompt_hash("Write to jane.doe@example.com or call +44 20 7946 0958 about order 4111 1111 1111 1111")
    b = prompt_hash("Write to  bob@corp.io or call +1 (555) 010-9999 about order 5500 0000 0000 0004")
    assert a == b
    assert a != prompt_hash("Write to jane.doe@example.com about something else")
    assert "jane" not in mask("mail jane.doe@example.com") and "sk-" not in mask(
        "key sk-abcdefghijklmnopqrstuv"
    )
    assert mask("Authorization: Bearer abc.def-ghi") == "Authorization: <bearer>"
    assert mask("The meeting is at 10:30 in room 4") == "The meeting is at 10:30 in room 4", (
        "ordinary text is kept"
    )
    assert fingerprint("hello", "world!") == {
        "prompt_hash": prompt_hash("hello"),
        "prompt_chars": 5,
        "completion_chars": 6,
    }


def test_metrics_expose_the_counters(tmp_path: Path):
    emitter = Emitter(
        ProducerSettings(spool_dir=tmp_path),
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        RegistrySettings(url="http://127.0.0.1:1"),
    )
    emitter.counters.produced = 7
    emitter.counters.dropped = 2
    registry = CollectorRegistry()
    register_metrics(emitter, "checkout", registry)
    text = generate_latest(registry).decode()
    assert 'onfinish_sdk_produced_total{emitter="checkout"} 7.0' in text
    assert 'onfinish_sdk_dropped_total{emitter="checkout"} 2.0' in text


def test_hand_off_never_raises_and_counts_what_it_cannot_take(tmp_path: Path):
    emitter = Emitter(
        ProducerSettings(spool_dir=tmp_path, queue_size=3),
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        RegistrySettings(url="http://127.0.0.1:1"),
    )
    emitter._start = lambda: None  # type: ignore[method-assign]  # no worker: the queue only fills
    emitter._worker = object()  # type: ignore[assignment]
    for i in range(5):
        emitter.on_finish({"i": i})
    stats = emitter.stats()
    assert (stats["handed_off"], stats["queued"], stats["dropped"]) == (3, 3, 2)


def test_the_fast_hand_off_gives_way_to_the_checked_one_over_the_bound(tmp_path: Path):
    from onfinish.producers.emitter import _Worker

    emitter = Emitter(
        ProducerSettings(spool_dir=tmp_path, queue_size=4),
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        RegistrySettings(url="http://127.0.0.1:1"),
    )
    assert emitter.on_finish is emitter._checked  # nothing started yet
    worker = _Worker.__new__(_Worker)  # only its bound-watching, no threads or Kafka
    worker.emitter = emitter
    emitter._worker = worker  # as after the worker started
    emitter.on_finish = emitter._queue.append
    for i in range(4):
        emitter.on_finish(i)
    worker._watch_bound()
    assert emitter.on_finish is emitter._checked
    spilled: list[object] = []
    worker.spill = spilled.append  # type: ignore[method-assign,assignment]
    worker.spilled = [0, 0, 0]
    emitter.on_finish(4)
    assert spilled == [4] and len(emitter._queue) == 4, "over the bound, the event goes to the spool"
    for _ in range(3):
        emitter._queue.popleft()
    worker._watch_bound()
    assert emitter.on_finish == emitter._queue.append
