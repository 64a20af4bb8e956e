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

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
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

    And it hands the records of a topic taken in batches (`RecordBatches`) to that, instead of to
    Faust's conductor. Assumes: Faust's consumer keeps its delivery callback (the conductor's
    `on_message`) in `self.callback`, set in `__init__`, and `_drain_messages` reads it when the
    fetcher starts.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        routes: dict[str, RecordBatches] = getattr(self.app, "onfinish_batches", {})
        to_conductor: Callable[[Any], Awaitable[Any]] = self.callback

        async def deliver(message: Any) -> None:
            batches = routes.get(message.topic)
            if batches is None:
                await to_conductor(message)
            else:
                await batches.put(message)

        self.callback = deliver

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


class RecordBatches:
    """The records of one topic, a batch at a time, without a stream event per record.

    Faust hands every fetched record to its conductor, which wraps it in an event and queues it for
    a stream; the stream takes it off the queue, calls its sensors and sets the current event, and
    `take_events` buffers it again: about a third of a worker's time went there (py-spy, issue 21).
    Here the consumer appends each record to a list (`DirectDeliveryConsumer`), and `take` returns
    the records as they are. What Faust's path does that matters is kept:

    - a record is tracked as handed out (`track_message`) and holds one reference, which the one
      who took it releases with `message.ack(consumer)` once done: Faust commits nothing before,
      and a stop waits for it (decision 0007);
    - records fetched in a generation of the group that has ended, or while flow is suspended (a
      rebalance, a stop), are not taken, as Faust's stream skips them; the next owner reads them;
    - Faust clears the buffer when it clears the streams' at a rebalance and at a stop (it suspends
      `flow_control`, then calls `flow_control.clear()`): those records were not handed out and are
      read again from the last commit. mode's `flow_control.resume()` clears the managed queues
      too, once the flow is active again; those records are kept (`clear`);
    - the consumer waits while `maxsize` records are buffered (Faust's full stream queue does too).

    Assumes: `app.flow_control.manage_queue` takes any object with `clear()` and calls it from
    `flow_control.clear()`, which `flow_control.resume()` calls after marking the flow active;
    Faust's rebalance and stop call `flow_control.suspend()` before `flow_control.clear()`; a
    `ConsumerMessage` carries `generation_id`, compared with `app.consumer_generation_id`, and
    `tracked`.
    """

    def __init__(self, app: faust.App, maxsize: int) -> None:
        self.app = app
        self.maxsize = maxsize
        self._messages: list[Any] = []
        self._wanted = 1  # how many buffered records wake `take`
        self._oldest_at = 0.0  # when the oldest buffered record came (time.monotonic)
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        app.flow_control.manage_queue(self)  # type: ignore[arg-type]  # it needs clear() alone

    def __len__(self) -> int:
        return len(self._messages)

    async def put(self, message: Any) -> None:
        """Buffer a fetched record (the consumer's delivery, for this topic)."""
        while len(self._messages) >= self.maxsize:
            self._drained.clear()
            await self._drained.wait()
        app = self.app
        if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
            return  # never acked: the partition's next owner, or this worker again, reads it
        message.incref()
        message.tracked = True
        app.consumer.track_message(message)
        if not self._messages:
            self._oldest_at = time.monotonic()  # records left after a take are older still
        self._messages.append(message)
        if len(self._messages) >= self._wanted:
            self._ready.set()

    async def take(self, max_: int, within: float) -> list[Any]:
        """Up to `max_` records: once `max_` are buffered, or once the oldest buffered record has
        waited `within` seconds (a batch taken while the last was processed may go at once)."""
        if not self._messages:
            self._wanted = 1
            self._ready.clear()
            await self._ready.wait()
        left = self._oldest_at + within - time.monotonic()
        if len(self._messages) < max_ and left > 0:
            self._wanted = max_
            self._ready.clear()
            with contextlib.suppress(TimeoutError):  # then what came within the wait
                await asyncio.wait_for(self._ready.wait(), left)
        taken = self._messages[:max_]
        del self._messages[:max_]
        self._drained.set()
        return taken

    def clear(self) -> None:
        """Drop what is buffered (Faust's `flow_control.clear()` at a rebalance or a stop): never
        handed out, never acked, read again from the last commit by the partition's next owner.

        Not when the flow is active: that is `flow_control.resume()`, which a worker's recovery
        calls after its consumer sought to the committed offsets, while its fetcher runs. Faust's
        fetcher may still be delivering a fetch made before that seek, and it counts what it
        delivers as read: the same offsets fetched again after the seek are dropped as already
        read. Records dropped here at that moment were never read again, and nothing after them
        showed the gap: a processor started with a backlog lost the head of it (1,088 events of one
        partition in CI). They are records of this generation in their partitions' order,
        so they stay; any delivered twice are skipped by the continuity guard (processors/continuity.py).
        """
        if self.app.flow_control.is_active():
            return
        self._messages.clear()
        self._drained.set()


class OverriddenApp(faust.App):
    """A Faust app with onfinish's consumer, its data directory made whole, and the stop's commit
    completed. The processors' app (processors/app.py) derives from it."""

    onfinish_fetch_max_wait_ms: int | None = None  # None: Faust's own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.onfinish_batches: dict[str, RecordBatches] = {}  # topic -> its batches

    def batches(self, topic: faust.TopicT, maxsize: int) -> RecordBatches:
        """Subscribe to `topic`, whose records are then taken a batch at a time from the returned
        `RecordBatches` rather than through a stream. Needs `use_direct_delivery()`.

        Assumes: the conductor subscribes to and acks (`acks_enabled_for`) the topics added to it
        with `app.topics.add`, as an agent's iterated topic is added.
        """
        batches = RecordBatches(self, maxsize)
        for name in topic.topics:
            self.onfinish_batches[name] = batches
        self.topics.add(topic)
        return batches

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


def untrack(consumer: Any, message: Any) -> None:
    """Stop waiting for a record that will never be acked: one the continuity guard skipped (read
    twice, or past a hole; processors/continuity.py). Its partition's commit does not depend on it
    (commits follow acked offsets), but a stop waits until every tracked record is acked, and a
    skipped record still referenced, as the last record the fetcher delivered is, held a stop for
    the whole stop timeout.

    Assumes: Faust's consumer keeps the records handed out and not yet acked in
    `_unacked_messages`, which `wait_empty` waits to be empty at a stop.
    """
    consumer._unacked_messages.discard(message)


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
