"""The Faust app's own wiring, short of a broker: what it sets on the Kafka clients it creates."""

from __future__ import annotations

import asyncio
import gc

import pytest

from onfinish.processors.app import build_app
from onfinish.processors.settings import ProcessorSettings
from onfinish.processors.worker import tune_gc
from onfinish.settings import KafkaSettings

FAUST_FETCH_WAIT_MS = 1500  # what Faust hard-codes for aiokafka


async def _fetch_wait_ms(settings: ProcessorSettings) -> int:
    """The fetch wait of the aiokafka consumer the worker would start (never connected here)."""
    app = build_app(settings, KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    try:
        return int(consumer._fetch_max_wait_ms)
    finally:
        await consumer.stop()


@pytest.mark.parametrize("wait_ms", [37, 250])
def test_the_consumer_fetch_waits_as_configured_not_faust_s_fixed_wait(wait_ms: int):
    assert asyncio.run(_fetch_wait_ms(ProcessorSettings(fetch_max_wait_ms=wait_ms))) == wait_ms


def test_the_default_fetch_wait_is_short_enough_for_latency():
    assert asyncio.run(_fetch_wait_ms(ProcessorSettings())) < FAUST_FETCH_WAIT_MS / 10


def test_the_worker_collects_garbage_at_its_configured_thresholds_with_start_up_frozen():
    before = gc.get_threshold()
    try:
        tune_gc(ProcessorSettings(gc_thresholds=(12_345, 6, 7)).gc_thresholds)
        assert gc.get_threshold() == (12_345, 6, 7)
        assert gc.get_freeze_count() > 0, "what start-up loaded is left out of collections"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_gc_thresholds_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ONFINISH_PROCESSOR_GC_THRESHOLDS", "[20000, 5, 50]")
    assert ProcessorSettings().gc_thresholds == (20_000, 5, 50)
    monkeypatch.setenv("ONFINISH_PROCESSOR_GC_THRESHOLDS", "[0, 5, 50]")
    with pytest.raises(ValueError, match="greater than 0"):
        ProcessorSettings()
