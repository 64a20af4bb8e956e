"""The SDK from many threads, from asyncio, and across fork (gunicorn's model): each event once."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from onfinish.producers import Emitter, ProducerSettings
from onfinish.settings import KafkaSettings, RegistrySettings
from tests.integration.records import consume, decode, make_topic, sample_event


def test_threads_and_coroutines_hand_off_concurrently(
    kafka_settings: KafkaSettings, registry_settings: RegistrySettings, unique: str, tmp_path: Path
):
    topic = make_topic(kafka_settings, unique)
    emitter = Emitter(
        ProducerSettings(topic=topic, spool_dir=tmp_path / "spool"), kafka_settings, registry_settings
    )

    def worker(offset: int) -> None:
        for i in range(offset, offset + 250):
            emitter.on_finish(sample_event(i))

    threads = [threading.Thread(target=worker, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()

    async def handler(i: int) -> None:
        await asyncio.sleep(0)
        emitter.on_finish(sample_event(10_000 + i))  # called from a coroutine: returns at once

    async def serve() -> None:
        await asyncio.gather(*(handler(i) for i in range(250)))

    asyncio.run(serve())
    for thread in threads:
        thread.join()
    assert emitter.flush(60)
    emitter.close()
    ids = [
        d["request_id"]
        for d in decode(consume(kafka_settings, topic, 1250, unique), topic, registry_settings)
    ]
    expected = {f"req-{n * 1000 + i}" for n in range(4) for i in range(250)} | {
        f"req-{10_000 + i}" for i in range(250)
    }
    assert sorted(ids) == sorted(expected)


def test_a_forked_child_sends_its_own_events_and_never_the_parents(
    kafka_settings: KafkaSettings, registry_settings: RegistrySettings, unique: str, tmp_path: Path
):
    topic = make_topic(kafka_settings, unique)
    emitter = Emitter(
        ProducerSettings(topic=topic, spool_dir=tmp_path / "spool"), kafka_settings, registry_settings
    )
    for i in range(100):
        emitter.on_finish(sample_event(i))
    assert emitter.flush(30)
    # Events still queued in the parent at fork time must be sent by the parent only.
    for i in range(100, 200):
        emitter.on_finish(sample_event(i))
    pid = os.fork()
    if pid == 0:  # the child: a gunicorn worker serving its own requests
        code = 1
        try:
            for i in range(1000, 1100):
                emitter.on_finish(sample_event(i))
            code = 0 if emitter.flush(60) and emitter.stats()["produced"] == 100 else 2
            emitter.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert emitter.flush(60)
    emitter.close()
    ids = [
        d["request_id"] for d in decode(consume(kafka_settings, topic, 300, unique), topic, registry_settings)
    ]
    assert sorted(ids) == sorted({f"req-{i}" for i in range(200)} | {f"req-{i}" for i in range(1000, 1100)})
