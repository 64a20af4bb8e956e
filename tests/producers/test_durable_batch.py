"""The SDK's blocking batch path: what a caller that answers only once its records are durable uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from onfinish.producers import Emitter, ProducerSettings
from onfinish.producers.spool import Position, Spool
from onfinish.settings import KafkaSettings, RegistrySettings


def _event(i: int) -> dict[str, Any]:
    start = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    return {
        "request_id": f"r{i}",
        "service": "chat",
        "provider": "openai",
        "model_id": "gpt-4o",
        "started_at": start,
        "finished_at": start + timedelta(milliseconds=800),
        "latency_ms": 800.0,
    }


def _emitter(tmp_path: Path, **settings: Any) -> Emitter:
    # Nothing listens on port 1: records stay spooled, which is what these tests look at.
    return Emitter(
        ProducerSettings(spool_dir=tmp_path, **settings),
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        RegistrySettings(url="http://127.0.0.1:1"),
    )


def _spooled(emitter: Emitter) -> list[bytes]:
    worker = emitter._worker
    assert worker is not None
    spool: Spool = worker.instance.spool
    return [record.key for record in spool.read(Position(0, 0), 1_000_000)]


def test_a_batch_is_on_disk_when_the_call_returns_and_invalid_items_come_back_with_their_reason(tmp_path):
    emitter = _emitter(tmp_path)
    invalid = {**_event(1), "latency_ms": -5.0}
    result = emitter.spool_batch([_event(0), invalid, _event(2), "not a record"])
    assert result.spooled == 2
    assert result.refused == 0
    assert [index for index, _ in result.rejected] == [1, 3]
    assert "latency_ms" in result.rejected[0][1]
    assert "-5" not in result.rejected[0][1]  # reasons name fields, never values
    assert _spooled(emitter) == [b"r0", b"r2"]
    stats = emitter.stats()
    assert (stats["handed_off"], stats["spooled"], stats["rejected"], stats["dropped"]) == (4, 2, 2, 0)
    assert emitter.spooled_bytes() > 0
    emitter.close(timeout=0.5)


def test_a_full_spool_refuses_the_rest_of_the_batch_without_counting_it_dropped(tmp_path):
    emitter = _emitter(tmp_path, spool_max_bytes=1024 * 1024)
    batch = [_event(i) for i in range(20_000)]  # about 300 bytes each: more than a MiB
    result = emitter.spool_batch(batch)
    assert result.spooled > 0
    assert result.refused == len(batch) - result.spooled
    assert emitter.stats()["dropped"] == 0
    again = emitter.spool_batch([_event(0)])
    assert (again.spooled, again.refused) == (0, 1)
    emitter.close(timeout=0.5)


def test_sync_forces_the_batch_to_the_device(tmp_path, monkeypatch):
    emitter = _emitter(tmp_path)
    synced: list[int] = []
    monkeypatch.setattr("onfinish.producers.spool.os.fsync", lambda fd: synced.append(fd))
    emitter.spool_batch([_event(0)], sync=True)
    assert synced
    emitter.close(timeout=0.5)
