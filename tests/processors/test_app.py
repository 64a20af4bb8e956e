"""The Faust app's own wiring, short of a broker: what it sets on the Kafka clients it creates."""

from __future__ import annotations

import asyncio
import gc
import json
import logging

import pytest
from faust.types import TP

from onfinish.processors.app import ProcessorMetrics, _assigned, build_app
from onfinish.processors.continuity import Continuity
from onfinish.processors.faust_overrides import StructuredLogWorker, commit_what_was_acked
from onfinish.processors.pipeline import Output, Pipeline
from onfinish.processors.settings import ProcessorSettings
from onfinish.runtime import tune_gc
from onfinish.schemas.contract import ALERT, ENRICHED_EVENT
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


def test_faust_s_data_directory_is_the_configured_one_not_the_working_directory(tmp_path):
    settings = ProcessorSettings(app_id="data-dir-test", data_dir=tmp_path / "state")
    app = build_app(settings, KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    assert app.conf.datadir == tmp_path / "state" / "data-dir-test"
    assert app.conf.tabledir.is_relative_to(tmp_path / "state")
    asyncio.run(app.on_first_start())  # where a starting worker makes its directories
    assert app.conf.tabledir.is_dir()


class _SkippingConsumer:
    """Faust's consumer at stop, as far as the commit goes: acked offsets wait in `_acked` until a
    commit covers them, and the stop's own commit is skipped (a periodic one was in flight)."""

    def __init__(self, acked: dict[TP, list[int]], refuse: int = 0) -> None:
        self._acked = acked
        self._committed_offset: dict[TP, int | None] = dict.fromkeys(acked)
        self.commits = 0
        self.refuse = refuse  # commits that do nothing, as a skipped one

    async def wait_empty(self) -> None:
        """Faust's wait: everything acked, its final commit skipped."""

    async def commit(self, start_new_transaction: bool = True) -> bool:
        self.commits += 1
        if self.commits <= self.refuse:
            return False
        for tp, acked in self._acked.items():
            if acked:
                self._committed_offset[tp] = max(acked) + 1
                acked.clear()
        return True


def test_a_stop_whose_last_commit_was_skipped_commits_what_was_acked():
    app = build_app(ProcessorSettings(), KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    raw = TP("t.raw", 0), TP("t.raw", 1)
    consumer = _SkippingConsumer({raw[0]: [10, 11, 12], raw[1]: [7]})
    asyncio.run(app._consumer_wait_empty(consumer, logging.getLogger("test")))  # type: ignore[arg-type]
    assert consumer._committed_offset == {raw[0]: 13, raw[1]: 8}
    assert not any(consumer._acked.values())


def test_commits_at_stop_are_retried_while_skipped_and_stop_once_nothing_is_left():
    tp = TP("t.raw", 0)
    consumer = _SkippingConsumer({tp: [3, 4]}, refuse=2)
    asyncio.run(commit_what_was_acked(consumer))
    assert consumer._committed_offset[tp] == 5
    assert consumer.commits == 3, "no commit once nothing acked is left"


def test_what_no_commit_can_cover_is_logged_not_retried_for_ever(caplog: pytest.LogCaptureFixture):
    tp = TP("t.raw", 2)
    consumer = _SkippingConsumer({tp: [40, 41]}, refuse=100)  # acked past a hole: never committable
    with caplog.at_level(logging.WARNING):
        asyncio.run(commit_what_was_acked(consumer, attempts=3))
    assert consumer.commits == 3
    assert "stopping with processed records uncommitted" in caplog.text


def test_worker_logs_keep_each_record_s_fields(capsys: pytest.CaptureFixture[str]):
    """Faust's log format drops `extra`; the worker's own handler keeps it (the offsets committed at
    stop, why a worker left), as JSON when asked."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    app = build_app(ProcessorSettings(), KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("ONFINISH_LOG_FORMAT", "json")
            env.setenv("ONFINISH_LOG_LEVEL", "INFO")
            StructuredLogWorker(app, loglevel="INFO", quiet=True).on_setup_root_logger(root, logging.INFO)
        logging.getLogger("onfinish.test").info("offsets committed at stop", extra={"committed": {"p[0]": 7}})
    finally:
        root.handlers[:], root.level = handlers, level
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "offsets committed at stop"
    assert line["committed"] == {"p[0]": 7}


class _LagConsumer:
    """What the lag reads of Faust's consumer: cached high watermarks and, before a partition's
    first record, the position."""

    def __init__(self, highwaters: dict[TP, int | None], positions: dict[TP, int]) -> None:
        self.highwaters = highwaters
        self.positions = positions

    def highwater(self, tp: TP) -> int | None:
        if tp not in self.highwaters:
            raise RuntimeError("No current assignment for partition")  # aiokafka, mid-rebalance
        return self.highwaters[tp]

    async def position(self, tp: TP) -> int:
        if tp not in self.positions:
            raise RuntimeError("no position between assignments")
        return self.positions[tp]


def _metrics(continuity: Continuity | None = None) -> tuple[ProcessorMetrics, Pipeline]:
    app = build_app(ProcessorSettings(app_id="metrics-test"), KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    pipeline: Pipeline = app.onfinish_pipeline  # type: ignore[attr-defined]
    sender = app.onfinish_sender  # type: ignore[attr-defined]
    return ProcessorMetrics(pipeline, sender, continuity or Continuity()), pipeline


def _sample(metrics: ProcessorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_lag_is_the_high_watermark_minus_the_next_offset_to_process_per_partition():
    metrics, _ = _metrics()
    tps = [TP("onfinish.raw", p) for p in range(4)]
    consumer = _LagConsumer({tps[0]: 500, tps[1]: 80, tps[2]: None, tps[3]: 40}, positions={tps[1]: 30})
    asyncio.run(metrics.measure_lag(consumer, tps, {tps[0]: 120, tps[3]: 40}))
    assert _sample(metrics, "onfinish_processor_lag", partition="0") == 380  # processed up to 119
    assert _sample(metrics, "onfinish_processor_lag", partition="1") == 50  # none yet: the position
    assert _sample(metrics, "onfinish_processor_lag", partition="2") is None  # nothing fetched yet
    assert _sample(metrics, "onfinish_processor_lag", partition="3") == 0
    # Partition 0 was given away, partition 1 has no position to tell this time, and the Kafka
    # client no longer holds partition 3 while Faust still lists it (a rebalance in progress).
    asyncio.run(metrics.measure_lag(_LagConsumer({tps[1]: 80}, {}), [tps[1], tps[3]], {tps[3]: 40}))
    assert _sample(metrics, "onfinish_processor_lag", partition="0") is None
    assert _sample(metrics, "onfinish_processor_lag", partition="1") is None
    assert _sample(metrics, "onfinish_processor_lag", partition="3") is None


def test_a_worker_whose_consumer_has_not_started_reports_no_lag_rather_than_failing():
    app = build_app(ProcessorSettings(app_id="lag-test"), KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    assert _assigned(app.consumer, "onfinish.raw") == []  # Faust raises ConsumerNotStarted here


def test_a_batch_s_stage_times_are_recorded_and_its_delivery_timed_when_kafka_acks_it():
    metrics, pipeline = _metrics()
    batch = pipeline.batch()
    batch.seconds.update(decode=0.003, enrich=0.002, encode=0.001, state=0.002, finish=0.004)
    batch.records = 7
    acked: list[bool] = []
    delivered = metrics.on_delivered(batch, started=0.0, then=lambda: acked.append(True))
    assert _sample(metrics, "onfinish_processor_stage_seconds_sum", stage="decode") == 0.003
    assert _sample(metrics, "onfinish_processor_batch_records_sum") == 7
    assert _sample(metrics, "onfinish_processor_stage_seconds_count", stage="deliver") is None
    assert not acked, "nothing is acked before Kafka has the batch"
    delivered()
    assert acked == [True]
    assert _sample(metrics, "onfinish_processor_stage_seconds_count", stage="deliver") == 1
    assert _sample(metrics, "onfinish_processor_batch_seconds_count") == 1


def test_outputs_are_counted_by_record_type_and_dead_letters_apart():
    metrics, _ = _metrics()
    outputs = [Output(ENRICHED_EVENT, b"k", b"v")] * 3 + [
        Output(ALERT, b"a", b"v"),
        Output(None, b"k", b"bad"),
    ]
    metrics.count_outputs(outputs)
    metrics.count_outputs(outputs[:1])
    assert _sample(metrics, "onfinish_processor_outputs_total", type="EnrichedEvent") == 4
    assert _sample(metrics, "onfinish_processor_outputs_total", type="Alert") == 1
    assert _sample(metrics, "onfinish_processor_outputs_total", type="dead_letter") == 1


def test_holes_in_the_stream_and_records_read_twice_are_counted():
    continuity = Continuity()
    metrics, _ = _metrics(continuity)
    for offset in (10, 11, 12, 11, 12, 13, 40, 14):  # 11 and 12 delivered twice; 14..39 jumped over
        continuity.check(0, offset)
    assert _sample(metrics, "onfinish_processor_records_read_twice_total") == 2
    assert _sample(metrics, "onfinish_processor_stream_holes_total") == 1
