"""The Faust app's own wiring, short of a broker: what it sets on the Kafka clients it creates."""

from __future__ import annotations

import asyncio

import pytest

from onfinish.processors.app import build_app
from onfinish.processors.settings import ProcessorSettings
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
