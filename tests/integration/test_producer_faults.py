"""The SDK under the faults services meet: broker away, registry away, the process killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from onfinish.producers import Emitter, ProducerSettings
from onfinish.settings import KafkaSettings, RegistrySettings
from onfinish.stack.stack import Stack
from tests.conftest import REPO
from tests.integration.records import consume, decode, make_topic, sample_event


def _request_ids(messages: list[Any], topic: str, registry: RegistrySettings) -> list[str]:
    return [record["request_id"] for record in decode(messages, topic, registry)]


def test_broker_outage_loses_nothing_and_never_blocks_the_caller(
    stack: Stack,
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    topic = make_topic(kafka_settings, unique)
    settings = ProducerSettings(topic=topic, spool_dir=tmp_path / "spool", message_timeout_ms=3000)
    emitter = Emitter(settings, kafka_settings, registry_settings)
    for i in range(100):
        emitter.on_finish(sample_event(i))
    assert emitter.flush(30)

    kafka = stack.component("kafka")
    kafka.stop()
    try:
        # Every call returns while the broker is away: none of them waits for an acknowledgement
        # that cannot come. How fast the hand-off is, there and under load, is the benchmark's
        # business (bench/sdk.py), not a timed assertion's.
        for i in range(100, 400):
            emitter.on_finish(sample_event(i))
            if i % 50 == 0:
                time.sleep(0.5)  # events keep coming while the broker is away
        assert not emitter.flush(2), "nothing can be acknowledged while the broker is down"
        assert emitter.stats()["spooled"] == 400
    finally:
        kafka.start()
    assert emitter.flush(90), emitter.stats()
    stats = emitter.stats()
    emitter.close()
    assert stats["dropped"] == 0 and stats["rejected"] == 0
    assert stats["delivery_failures"] > 0, "the outage was seen"

    ids = _request_ids(consume(kafka_settings, topic, 400, unique, timeout_s=60), topic, registry_settings)
    assert set(ids) == {f"req-{i}" for i in range(400)}, "every event arrived"
    # Per session (one partition each) events arrive in the order they were handed off.
    for session in range(7):
        in_session = [int(r[4:]) for r in ids if int(r[4:]) % 7 == session]
        assert in_session == sorted(set(in_session), key=in_session.index)
        first_seen = list(dict.fromkeys(in_session))
        assert first_seen == sorted(first_seen)


def test_registry_outage_keeps_events_spooled_until_it_is_back(
    stack: Stack,
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    topic = make_topic(kafka_settings, unique)
    registry = stack.component("registry")
    registry.stop()
    try:
        emitter = Emitter(
            ProducerSettings(topic=topic, spool_dir=tmp_path / "spool"), kafka_settings, registry_settings
        )
        for i in range(200):
            emitter.on_finish(sample_event(i))
        assert not emitter.flush(3)
        stats = emitter.stats()
        assert stats["spooled"] == 200 and stats["produced"] == 0
    finally:
        registry.start()
    assert emitter.flush(60), emitter.stats()
    emitter.close()
    ids = _request_ids(consume(kafka_settings, topic, 200, unique), topic, registry_settings)
    assert sorted(ids) == sorted(f"req-{i}" for i in range(200))


def test_events_spooled_by_a_killed_process_are_delivered_by_the_next_one(
    stack: Stack,
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    unique: str,
    tmp_path: Path,
):
    topic = make_topic(kafka_settings, unique)
    spool_dir = tmp_path / "spool"
    script = f"""
import os, signal, time
from onfinish.producers import Emitter, ProducerSettings
from onfinish.settings import KafkaSettings, RegistrySettings
from tests.integration.records import consume, decode, make_topic, sample_event
# A broker that is not there: everything stays in the spool.
emitter = Emitter(ProducerSettings(topic={topic!r}, spool_dir=__import__("pathlib").Path({str(spool_dir)!r})),
                  KafkaSettings(bootstrap_servers="127.0.0.1:1"), RegistrySettings(url={registry_settings.url!r}))
for i in range(300):
    emitter.on_finish(sample_event(i))
deadline = time.monotonic() + 30
while emitter.stats()["spooled"] < 300 and time.monotonic() < deadline:
    time.sleep(0.05)
print("spooled", emitter.stats()["spooled"], flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "spooled 300" in result.stdout

    successor = Emitter(ProducerSettings(topic=topic, spool_dir=spool_dir), kafka_settings, registry_settings)
    successor.on_finish(sample_event(1000))
    assert successor.flush(60), successor.stats()
    stats = successor.stats()
    successor.close()
    assert stats["replayed"] == 300 and stats["produced"] == 1
    ids = _request_ids(consume(kafka_settings, topic, 301, unique), topic, registry_settings)
    assert sorted(ids) == sorted([f"req-{i}" for i in range(300)] + ["req-1000"])
    assert not any(spool_dir.glob("*/*.seg")), "adopted and emptied spools are removed"


def test_a_full_hand_off_queue_spills_to_the_spool_instead_of_dropping(
    kafka_settings: KafkaSettings, registry_settings: RegistrySettings, unique: str, tmp_path: Path
):
    topic = make_topic(kafka_settings, unique)
    settings = ProducerSettings(topic=topic, spool_dir=tmp_path / "spool", queue_size=8)
    emitter = Emitter(settings, kafka_settings, registry_settings)
    for i in range(2000):
        emitter.on_finish(sample_event(i))
    assert emitter.flush(60), emitter.stats()
    stats = emitter.stats()
    spilled = emitter._worker.spilled if emitter._worker else None
    emitter.close()
    assert spilled is not None and spilled[2] > 0, (
        "the queue overflowed into the spool on the caller's thread"
    )
    assert (stats["handed_off"], stats["spooled"], stats["produced"], stats["dropped"]) == (
        2000,
        2000,
        2000,
        0,
    )
    ids = _request_ids(consume(kafka_settings, topic, 2000, unique), topic, registry_settings)
    assert sorted(set(ids)) == sorted(f"req-{i}" for i in range(2000))
