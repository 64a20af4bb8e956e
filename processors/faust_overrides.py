"""Every place onfinish reaches past Faust's, mode's or aiokafka's public API, in one module.

The processors use Faust as a consumer-group shell (membership, tables and their changelogs,
offsets, the web server) and go around it where its defaults cost too much or lose records
(docs/decisions/0007). Each override below rests on an assumption about the installed versions'
internals; each assumption is written in the docstring of the code that relies on it, and
tests/processors/test_faust_overrides.py fails with a clear message when an installed version no
longer has what it names. Before upgrading faust-streaming, mode-streaming or aiokafka, re-read
those assumptions against the new source and update `CHECKED_AGAINST`.

No other module of onfinish touches a private attribute of these libraries.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from mode.services import WaitResults

from onfinish.logs import LogSettings, configure_logging

log = logging.getLogger(__name__)

CHECKED_AGAINST = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}
"""The versions whose source these overrides were read against (pinned in constraints.txt)."""


class DirectDeliveryConsumer(aiokafka_driver.Consumer):
    """Faust's consumer, handing each fetched record to the streams without four tasks per record.

    Assumes: Faust's `Consumer._drain_messages` delivers every record with
    `self.wait_first(callback(message), self.suspend_flow.wait())`, and mode's `Service.wait_first`
    wraps each argument and its own stop events in tasks: about half of a worker's time at a few
    thousand records a second. While the flow is not suspended, this awaits the delivery directly
    (recognising Faust's second argument by the code object of `Event.wait`); cancellation (how a
    rebalance stops the fetcher) still reaches it. Any other call, and any call while the flow is
    suspended, takes mode's own path.

    Assumes also: `Consumer._new_consumer_thread` builds the thread that owns aiokafka's consumer,
    so the fetch wait can be set there (`FetchWaitConsumerThread`).
    """

    def _new_consumer_thread(self) -> FetchWaitConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if timeout is None and len(coros) == 2 and not self.suspend_flow.is_set():
            deliver, suspended = coros
            if inspect.iscoroutine(suspended) and suspended.cr_code is type(self.suspend_flow).wait.__code__:
                suspended.close()
                result = await deliver
                return WaitResults([deliver], [result], False)
        return await super().wait_first(*coros, timeout=timeout)


class FetchWaitConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, with aiokafka's fetch wait from onfinish's settings.

    Faust fixes `fetch_max_wait_ms` at 1500. aiokafka keeps one fetch in flight per broker and
    leaves out of it the partitions whose records are still buffered; once the stream is a little
    behind, that fetch holds only partitions where nothing comes (the assignor's leader topic), so
    the broker keeps it the full wait while the raw partitions, drained meanwhile, cannot be
    fetched: records reached the stream in bursts, up to 1.5 s late (decision 0007).

    Assumes: `AIOKafkaConsumerThread._create_worker_consumer(transport)` returns the
    `AIOKafkaConsumer` before it starts, and aiokafka's consumer keeps the wait in
    `_fetch_max_wait_ms`, read when it starts its fetcher.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "onfinish_fetch_max_wait_ms", None)
        if wait_ms is not None:
            if hasattr(consumer, "_fetch_max_wait_ms"):
                consumer._fetch_max_wait_ms = wait_ms
            else:
                log.warning("this aiokafka has no fetch wait to set; Faust's 1500 ms stays")
        return consumer


class OverriddenApp(faust.App):
    """A Faust app with onfinish's consumer, its data directory made whole, and the stop's commit
    completed. The processors' app (processors/app.py) derives from it."""

    onfinish_fetch_max_wait_ms: int | None = None  # None: Faust's own

    def use_direct_delivery(self) -> None:
        """Make this app's consumer a `DirectDeliveryConsumer`.

        Assumes: the transport creates the consumer from its `Consumer` attribute when the app
        starts, so setting it on this app's transport instance changes this app alone.
        """
        self.transport.Consumer = DirectDeliveryConsumer  # type: ignore[misc]  # the instance's, on purpose

    def _create_directories(self) -> None:
        """Assumes: `App._create_directories` makes `conf.datadir` without its parents (mkdir), and
        ONFINISH_PROCESSOR_DATA_DIR may not exist yet."""
        self.conf.datadir.mkdir(parents=True, exist_ok=True)
        super()._create_directories()

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        """Assumes: at stop, `App._consumer_wait_empty` waits for the handed-out records to be acked
        and then commits once; that commit is skipped when Faust's periodic commit is in flight (it
        waits for that one, which took the offsets acked when it began, and returns). Whatever was
        acked since stayed uncommitted and the next owner processed it again (seen once in CI: 1,304
        events on the enriched topic twice after a SIGTERM). Committing until nothing acked is left
        closes that window."""
        await super()._consumer_wait_empty(consumer, logger)
        await commit_what_was_acked(consumer)


async def commit_what_was_acked(consumer: Any, attempts: int = 5) -> None:
    """Commit until no acked record is left uncommitted; log what stays behind, such as acked
    records past a hole.

    Assumes: Faust's consumer keeps the acked offsets not yet covered by a commit in `_acked`
    (partition -> offsets), and the offsets it committed in `_committed_offset`;
    `commit(start_new_transaction=False)` commits what is acked.
    """
    for _ in range(attempts):
        if not acked_uncommitted(consumer):
            break
        await consumer.commit(start_new_transaction=False)
    behind = acked_uncommitted(consumer)
    if behind:
        log.warning(
            "stopping with processed records uncommitted; the next owner processes them again",
            extra={"first_uncommitted": _by_partition_name(behind)},
        )
    log.info("offsets committed at stop", extra={"committed": _by_partition_name(consumer._committed_offset)})


def acked_uncommitted(consumer: Any) -> dict[Any, int]:
    """The lowest acked offset no commit has covered yet, by partition (see `commit_what_was_acked`)."""
    return {tp: min(acked) for tp, acked in consumer._acked.items() if acked}


def restored_partition(table: Any, key: Any) -> int | None:
    """The changelog partition a table key was restored from; None if it was not restored.

    Assumes: Faust's memory store (`memory://`) keeps the partition of every key it restores in
    `_key_partition` (key -> partition), and drops a key's entry only when a restore meets its
    tombstone or the partition is no longer assigned.
    """
    partitions = getattr(table.data, "_key_partition", None)
    return None if partitions is None else partitions.get(key)


def forget_restored(table: Any, key: Any) -> None:
    """Drop a restored key's partition (`restored_partition`) once the key is deleted: the store
    keeps it otherwise, for every key restored, until the partition is given away."""
    partitions = getattr(table.data, "_key_partition", None)
    if partitions is not None:
        partitions.pop(key, None)


def _by_partition_name(offsets: Mapping[Any, Any]) -> dict[str, Any]:
    return {f"{tp.topic}[{tp.partition}]": offset for tp, offset in offsets.items()}


class StructuredLogWorker(faust.Worker):
    """Faust's worker, logging through onfinish's handler: structured lines that keep each record's
    fields (Faust's own format drops them), at ONFINISH_LOG_LEVEL, in ONFINISH_LOG_FORMAT.

    Assumes: `Worker.on_setup_root_logger` is called once Faust has set up the root logger, so the
    handlers put in place here are the ones that stay.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        configure_logging(LogSettings())  # replaces the handlers Faust set (and its spinner's)
