"""The SDK's emitter against a fake Kafka producer and a fake registry: no broker, no network.

What the emitter owns is checked here: the hand-off, the spool between the caller and Kafka, the
order records go out in (a spool left by a dead process first, then this one's), the counters of
what was rejected or dropped, and closing. The real client against the real broker is
tests/integration/test_producer_sdk.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from onfinish.producers import Emitter, OnFinishEvent, ProducerSettings
from onfinish.producers import emitter as emitter_module
from onfinish.producers.encoding import Encoder
from onfinish.settings import KafkaSettings, RegistrySettings

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PREFIXES = {0: b"\x00\x00\x00\x00\x07", 1: b"\x00\x00\x00\x00\x08"}  # magic byte and schema id per kind


def event(i: int, **update: Any) -> OnFinishEvent:
    return OnFinishEvent(
        request_id=f"req-{i}",
        session_id=f"sess-{i % 3}",
        service="chat-api",
        provider="openai",
        model_id="gpt-4o",
        started_at=T0 + timedelta(seconds=i),
        finished_at=T0 + timedelta(seconds=i, milliseconds=400),
        latency_ms=400.0,
        prompt_tokens=10 + i,
        completion_tokens=5,
        **update,
    )


def body(item: OnFinishEvent) -> bytes:
    """The Avro body the emitter must produce for `item` (content not captured)."""
    return Encoder(capture_content=False).encode(item)[2]


class FakeError:
    """What librdkafka reports for a failed delivery."""

    def str(self) -> str:
        return "Local: Message timed out"


class FakeKafka:
    """The broker side of the fake: what was acknowledged, and whether deliveries fail or never come."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acknowledged: list[tuple[bytes, bytes]] = []  # (key, value) in acknowledgement order
        self.failing = False  # deliveries are reported as failed (a broker that went away)
        self.silent = False  # deliveries are never reported (a broker that cannot be reached)
        self.producers: list[FakeProducer] = []

    def values(self) -> list[bytes]:
        with self.lock:
            return [value for _, value in self.acknowledged]


class FakeProducer:
    """confluent_kafka.Producer's surface the emitter uses: produce, poll, flush; deliveries on poll."""

    def __init__(self, kafka: FakeKafka, config: dict[str, Any]) -> None:
        self.kafka = kafka
        self.config = config
        self.pending: list[tuple[bytes, bytes, Callable[[Any, Any], None]]] = []
        self.flushed = False
        kafka.producers.append(self)

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Callable[[Any, Any], None]) -> None:
        self.pending.append((key, value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        kafka = self.kafka
        if kafka.silent:
            return 0
        reported, self.pending = self.pending, []
        for key, value, on_delivery in reported:
            if kafka.failing:
                on_delivery(FakeError(), None)
            else:
                with kafka.lock:
                    kafka.acknowledged.append((key, value))
                on_delivery(None, None)
        return len(reported)

    def flush(self, timeout: float = 0) -> int:
        self.flushed = True
        self.poll()
        return len(self.pending)


class FakeSchemaIds:
    """The registry side: a prefix per kind, or None while the registry is away."""

    away = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def prefix(self, kind: int) -> bytes | None:
        return None if FakeSchemaIds.away else PREFIXES[kind]


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKafka]:
    fake = FakeKafka()
    monkeypatch.setattr(emitter_module, "Producer", lambda config: FakeProducer(fake, config))
    monkeypatch.setattr(emitter_module, "SchemaIds", FakeSchemaIds)
    FakeSchemaIds.away = False
    yield fake
    FakeSchemaIds.away = False


def make_emitter(spool_dir: Path, **settings: Any) -> Emitter:
    return Emitter(
        ProducerSettings(spool_dir=spool_dir, **settings),
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        RegistrySettings(url="http://127.0.0.1:1"),
    )


def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait for the worker thread to reach a state; the assertions that matter come after."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"the emitter never reached: {what}")
        time.sleep(0.005)


def spool_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_handed_off_events_are_produced_in_order_framed_with_their_schema_id(
    kafka: FakeKafka, tmp_path: Path
):
    emitter = make_emitter(tmp_path)
    events = [event(i, prompt_text="a secret prompt") for i in range(50)]
    for item in events:
        emitter.on_finish(item)
    emitter.record_feedback("req-3", session_id="sess-0", regenerated=True)
    assert emitter.flush(10)

    (producer,) = kafka.producers
    assert producer.config["acks"] == "all" and producer.config["enable.idempotence"] is True
    values = kafka.values()
    assert values[:50] == [PREFIXES[0] + body(item) for item in events], "in hand-off order, content dropped"
    assert values[50].startswith(PREFIXES[1]), "the feedback is framed with its own schema id"
    assert [key for key, _ in kafka.acknowledged[:50]] == [f"sess-{i % 3}".encode() for i in range(50)]
    stats = emitter.stats()
    assert {name: stats[name] for name in ("handed_off", "spooled", "produced", "replayed")} == {
        "handed_off": 51,
        "spooled": 51,
        "produced": 51,
        "replayed": 0,
    }
    assert stats["rejected"] == stats["dropped"] == stats["delivery_failures"] == stats["queued"] == 0
    assert emitter.close()


def test_invalid_records_are_rejected_with_their_reason_and_never_produced(kafka: FakeKafka, tmp_path: Path):
    emitter = make_emitter(tmp_path)
    good = [event(1), event(2)]
    emitter.on_finish(good[0])
    emitter.on_finish({"request_id": "bad", "service": "x"})  # an OnFinishEvent missing its fields
    emitter.on_finish("not a record")
    emitter.on_finish(good[1])
    assert emitter.flush(10)
    stats = emitter.stats()
    assert (stats["handed_off"], stats["rejected"], stats["produced"]) == (4, 2, 2)
    assert kafka.values() == [PREFIXES[0] + body(item) for item in good]
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [entry["type"] for entry in rejected] == ["dict", "str"]
    assert "provider: Field required" in rejected[0]["reason"]
    assert rejected[1]["reason"] == "not an onfinish record: str"
    assert emitter.close()


class _Misbehaving(dict):  # type: ignore[type-arg]
    """An item that raises where no record would, quoting data as a KeyError does."""

    def __contains__(self, key: object) -> bool:
        raise KeyError("alice@example.com")


def test_an_item_that_raises_is_rejected_and_the_worker_goes_on(kafka: FakeKafka, tmp_path: Path):
    emitter = make_emitter(tmp_path)
    good = event(1)
    emitter.on_finish(_Misbehaving())
    emitter.on_finish(good)
    assert emitter.flush(10), "the worker thread is alive and produced the next event"
    assert kafka.values() == [PREFIXES[0] + body(good)]
    (entry,) = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert entry["reason"].startswith("_Misbehaving cannot be encoded: KeyError in __contains__")
    assert "alice" not in entry["reason"]
    assert emitter.close()


def test_records_wait_in_the_spool_while_the_registry_is_away_and_go_out_in_order(
    kafka: FakeKafka, tmp_path: Path
):
    FakeSchemaIds.away = True
    emitter = make_emitter(tmp_path)
    events = [event(i) for i in range(20)]
    for item in events:
        emitter.on_finish(item)
    until(lambda: emitter.stats()["spooled"] == 20, "20 events spooled")
    time.sleep(0.05)  # a few worker turns: nothing may leave while the registry cannot frame it
    assert kafka.values() == [] and emitter.stats()["produced"] == 0
    (own,) = spool_folders(tmp_path)
    assert sum(segment.stat().st_size for segment in own.glob("*.seg")) > 20 * len(body(events[0]))

    FakeSchemaIds.away = False
    assert emitter.flush(10), "produced once the registry is back (after the first back-off, 0.5 s)"
    assert kafka.values() == [PREFIXES[0] + body(item) for item in events]
    assert emitter.stats()["produced"] == 20
    assert emitter.close()


def test_failed_deliveries_are_produced_again_from_the_first_unacknowledged_record(
    kafka: FakeKafka, tmp_path: Path
):
    kafka.failing = True
    emitter = make_emitter(tmp_path)
    events = [event(i) for i in range(10)]
    for item in events:
        emitter.on_finish(item)
    until(lambda: emitter.stats()["delivery_failures"] >= 10, "the first ten deliveries failed")
    assert kafka.values() == []
    kafka.failing = False
    assert emitter.flush(10)
    assert kafka.values() == [PREFIXES[0] + body(item) for item in events], "once each, in order"
    assert emitter.stats()["produced"] == 10
    assert emitter.close()


def test_a_dead_processs_spool_is_replayed_first_and_in_order(kafka: FakeKafka, tmp_path: Path):
    kafka.silent = True  # Kafka never answers: what is handed off stays in the spool
    first = make_emitter(tmp_path)
    old = [event(i) for i in range(10)]
    for item in old:
        first.on_finish(item)
    until(lambda: first.stats()["spooled"] == 10, "10 events spooled")
    assert not first.close(timeout=0.2), "undelivered: close says so"
    (left,) = spool_folders(tmp_path)
    assert list(left.glob("*.seg")), "closing keeps what was not delivered"

    kafka.silent = False
    second = make_emitter(tmp_path)
    new = [event(i) for i in range(10, 15)]
    for item in new:
        second.on_finish(item)
    assert second.flush(10)
    assert kafka.values() == [PREFIXES[0] + body(item) for item in [*old, *new]]
    stats = second.stats()
    assert (stats["replayed"], stats["produced"]) == (10, 5)
    assert second.close()
    assert not left.exists(), "the adopted spool is removed once replayed"
    assert spool_folders(tmp_path) == [], "and an emptied spool of one's own is removed on close"


def test_a_full_spool_drops_and_counts_and_says_so_once(
    kafka: FakeKafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    FakeSchemaIds.away = True  # nothing leaves, so the spool fills up
    emitter = make_emitter(tmp_path, spool_max_bytes=1024 * 1024)
    big = {f"k{n}": "x" * 1000 for n in range(64)}  # about 64 kB of attributes per event
    with caplog.at_level(logging.WARNING, logger="onfinish.producers.emitter"):
        for i in range(30):
            emitter.on_finish(event(i, attributes=big))
        until(lambda: emitter.stats()["spooled"] + emitter.stats()["dropped"] == 30, "30 events taken")
    stats = emitter.stats()
    # 1 MiB holds 15 or 16 such events; every other one is dropped, and none is lost uncounted.
    assert 10 <= stats["spooled"] <= 16 and stats["dropped"] >= 14, stats
    assert (stats["handed_off"], stats["rejected"], stats["produced"]) == (30, 0, 0)
    assert [r.getMessage() for r in caplog.records].count("spool full: events dropped") == 1
    emitter.close(timeout=0.1)


def test_close_flushes_stops_the_worker_and_releases_the_spool(kafka: FakeKafka, tmp_path: Path):
    emitter = make_emitter(tmp_path)
    for i in range(5):
        emitter.on_finish(event(i))
    worker = emitter._worker
    assert worker is not None
    assert emitter.close()
    assert not worker.is_alive(), "the worker thread has ended"
    assert kafka.producers[0].flushed, "the Kafka client was flushed"
    assert len(kafka.values()) == 5 and emitter.stats()["produced"] == 5
    assert spool_folders(tmp_path) == [], "an emptied spool is removed"
    assert emitter.close(), "closing twice is harmless"


def test_a_hand_off_after_close_is_delivered_not_left_in_a_queue(kafka: FakeKafka, tmp_path: Path):
    emitter = make_emitter(tmp_path)
    emitter.on_finish(event(0))
    assert emitter.close()
    emitter.on_finish(event(1))  # a service that closed too early, or an atexit race
    assert emitter._worker is not None, "the hand-off started a worker again"
    assert emitter.close()
    assert len(kafka.values()) == 2

    # Handed off to the queue with no worker (as in the moment the worker stopped): close takes it.
    emitter._queue.append(event(2))
    assert emitter.close()
    assert len(kafka.values()) == 3
