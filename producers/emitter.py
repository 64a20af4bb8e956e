"""The emitter: what a service's onFinish hook calls, and the worker that does the rest.

`on_finish(event)` appends the event to an in-memory deque and returns: no validation, no
encoding, no I/O on the caller's thread. A background thread then
1. validates and Avro-encodes each event (invalid ones go to a local reject log with the reason),
2. appends it to the durable spool (producers/spool.py),
3. produces spooled records, framed with their schema id, with an idempotent acks=all producer,
4. moves the spool's cursor past each record once Kafka acknowledged it.
When Kafka or the registry is away the records wait in the spool and are produced, in order, when
the path is back; a process killed with records in its spool leaves them to the next process,
which adopts spools no live process holds. Nothing is dropped silently: every drop is counted and
logged at most once per interval.

`Emitter.spool_batch(items)` is the blocking path for a caller that must answer only once its
records are durable (the OpenTelemetry receiver, onfinish/collect/): steps 1 and 2 on the caller's
thread for the whole batch, one flush, and the same worker produces them.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import KafkaError, Message, Producer
from pydantic import BaseModel

from onfinish.producers.encoding import Encoder, RejectedEvent
from onfinish.producers.schema_ids import SchemaIds
from onfinish.producers.settings import ProducerSettings
from onfinish.producers.spool import Position, Spool, SpooledRecord
from onfinish.retry import Backoff
from onfinish.security import librdkafka_config
from onfinish.settings import KafkaSettings, RegistrySettings

log = logging.getLogger(__name__)
_BATCH = 5_000
# What _spool returns instead of a record when the item was not spooled.
_REJECTED = SpooledRecord(Position(-1, 0), Position(-1, 0), -1, b"", b"rejected")
_DROPPED = SpooledRecord(Position(-1, 0), Position(-1, 0), -1, b"", b"dropped")
_IDLE_S = 0.002


class _OncePerInterval(logging.Filter):
    """Lets one record of each kind through per interval: a broker that is away must not flood logs.

    librdkafka logs every failed connection attempt; the kind is its facility (the first word).
    """

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = str(record.msg).split(" ", 1)[0]
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < self.interval_s:
            return False
        self._last[kind] = now
        return True


def client_logger(interval_s: float) -> logging.Logger:
    """The logger the SDK gives librdkafka: its lines, at most one of each kind per interval."""
    logger = logging.getLogger("onfinish.producers.kafka")
    if not any(isinstance(f, _OncePerInterval) for f in logger.filters):
        logger.addFilter(_OncePerInterval(interval_s))
    return logger


@dataclass
class Counters:
    """What happened to the events handed off to one emitter."""

    handed_off: int = 0
    spooled: int = 0
    produced: int = 0
    replayed: int = 0
    rejected: int = 0
    dropped: int = 0
    delivery_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DurableBatch:
    """What `Emitter.spool_batch` did with a batch: each item spooled, rejected or refused."""

    spooled: int
    rejected: list[tuple[int, str]]  # (index in the batch, reason) of items that are not valid records
    refused: int  # items not spooled because the spool was full: the caller should ask for a retry


class _SpoolInstance:
    """This process's own spool folder, held with an exclusive lock for as long as it lives."""

    def __init__(self, root: Path, settings: ProducerSettings) -> None:
        self.root = root
        self.path = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path.mkdir(parents=True)
        self._lock_file = (self.path / "lock").open("w")
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.spool = Spool(
            self.path, max_bytes=settings.spool_max_bytes, segment_bytes=settings.spool_segment_bytes
        )

    @staticmethod
    def adopt_orphans(root: Path, settings: ProducerSettings) -> list[tuple[Path, Spool, TextIO]]:
        """Spools of processes that died before emptying them: no live process holds their lock."""
        orphans: list[tuple[Path, Spool, TextIO]] = []
        for folder in sorted(p for p in root.glob("*") if p.is_dir()):
            lock_path = folder / "lock"
            if not lock_path.exists():
                continue
            handle = lock_path.open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            spool = Spool(
                folder, max_bytes=settings.spool_max_bytes, segment_bytes=settings.spool_segment_bytes
            )
            orphans.append((folder, spool, handle))
        return orphans

    def close(self, *, remove_if_empty: bool) -> None:
        empty = not self.spool.pending()
        self.spool.close()
        if remove_if_empty and empty:
            shutil.rmtree(self.path, ignore_errors=True)
        self._lock_file.close()


class _Worker(threading.Thread):
    """Drains the hand-off queue into the spool and the spool into Kafka."""

    def __init__(self, emitter: Emitter) -> None:
        super().__init__(name="onfinish-producer", daemon=True)
        self.emitter = emitter
        settings = emitter.settings
        self.encoder = Encoder(capture_content=settings.capture_content)
        root = settings.spool_dir
        root.mkdir(parents=True, exist_ok=True)
        self.orphans = _SpoolInstance.adopt_orphans(root, settings)
        self.instance = _SpoolInstance(root, settings)
        self.schema_ids = SchemaIds(
            emitter.registry, settings.topic, root / "schema-ids.json", auto_register=settings.auto_register
        )
        self.producer = Producer(
            {
                **librdkafka_config(emitter.kafka),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": settings.linger_ms,
                "compression.type": settings.compression,
                "message.timeout.ms": settings.message_timeout_ms,
                "queue.buffering.max.messages": settings.max_in_flight + 1_000,
                "batch.size": 1_000_000,
                "logger": client_logger(settings.drop_log_interval_s),
            }
        )
        self.reject_log = root / "rejected.jsonl"
        self.stopping = threading.Event()
        self.recent: deque[SpooledRecord] = deque()  # appended, not yet handed to the Kafka client
        self._spill_lock = threading.Lock()
        self.spilled = [0, 0, 0]  # rejected, dropped, spooled by callers while the queue was full
        self.durable = [0, 0, 0]  # rejected, refused, spooled by spool_batch callers
        self._reset_reading()
        self._backoff = Backoff(0.5, 10.0)  # after a failed delivery; never slept on: a deadline
        self._last_warning: dict[str, float] = {}

    # The reading state of the spool being produced (an orphan first, then our own).
    def _reset_reading(self) -> None:
        self.read_position: Position | None = None
        self.in_flight: dict[int, Position] = {}  # sequence -> position after the record
        self.acked: set[int] = set()
        self.next_sequence = 0
        self.next_commit = 0
        self.outstanding = 0  # produced, delivery not yet reported
        self.failed = False

    @property
    def current(self) -> Spool:
        return self.orphans[0][1] if self.orphans else self.instance.spool

    def _watch_bound(self) -> None:
        """Switch the caller to the checking hand-off while the queue is over its bound, and back."""
        emitter = self.emitter
        queued = len(emitter._queue)
        fast = emitter.on_finish is not emitter._checked
        if fast and queued >= emitter._queue_size:
            emitter.on_finish = emitter._checked
        elif not fast and queued < emitter._queue_size // 2:
            emitter.on_finish = emitter._queue.append

    def run(self) -> None:
        while True:
            self._watch_bound()
            busy = self._drain_queue()
            busy |= self._feed()
            self.producer.poll(0)
            self._commit()
            if self.stopping.is_set() and not self.emitter._queue:
                break
            if not busy:
                time.sleep(_IDLE_S)

    def _drain_queue(self) -> bool:
        queue = self.emitter._queue
        if not queue:
            return False
        spool = self.instance.spool
        counters = self.emitter.counters
        taken = min(len(queue), _BATCH)
        counters.handed_off += taken
        for _ in range(taken):
            record = self._spool(queue.popleft())
            if record is _REJECTED:
                counters.rejected += 1
            elif record is _DROPPED:
                counters.dropped += 1
            else:
                counters.spooled += 1
                self.recent.append(record)
        spool.flush()
        return True

    def _spool(self, item: Any) -> SpooledRecord:
        """Encode and append one item: its record, or _REJECTED, or _DROPPED when the spool is full."""
        try:
            kind, key, value = self.encoder.encode(item)
        except RejectedEvent as rejected:
            self._reject(item, rejected.reason)
            return _REJECTED
        spool = self.instance.spool
        record = spool.append(kind, key, value)
        if record is None:
            self._warn_once("dropped", "spool full: events dropped", spool_bytes=spool.size_bytes)
            return _DROPPED
        return record

    def spill(self, item: Any) -> None:
        """On the caller's thread, when the hand-off queue is full: straight to the spool, not lost.

        The caller pays for the encoding here (tens of microseconds instead of one), which is the
        price of an overloaded worker; counted apart so the worker's counters stay its own.
        """
        with self._spill_lock:
            record = self._spool(item)
            self.spilled[0 if record is _REJECTED else 1 if record is _DROPPED else 2] += 1
            if record is not _REJECTED and record is not _DROPPED:
                self.instance.spool.flush()

    def append_batch(self, items: Sequence[Any], *, sync: bool) -> DurableBatch:
        """On the caller's thread: encode and append a whole batch, then flush (or fsync) it once.

        Under the spill lock, so that concurrent callers' records are not interleaved within a
        batch; the worker finds them in `recent` (or, after an interleaving, on disk) and produces
        them like its own. Counted apart, as spilled items are.
        """
        encode, spool = self.encoder.encode, self.instance.spool
        rejected: list[tuple[int, str]] = []
        records: list[SpooledRecord] = []
        refused = 0
        with self._spill_lock:
            for index, item in enumerate(items):
                try:
                    kind, key, value = encode(item)
                except RejectedEvent as exc:
                    rejected.append((index, exc.reason))
                    continue
                record = spool.append(kind, key, value)
                if record is None:
                    refused = len(items) - index
                    self._warn_once("dropped", "spool full: batch refused", spool_bytes=spool.size_bytes)
                    break
                records.append(record)
            if sync:
                spool.sync()
            else:
                spool.flush()
            self.recent.extend(records)
            self.durable[0] += len(rejected)
            self.durable[1] += refused
            self.durable[2] += len(records)
        return DurableBatch(spooled=len(records), rejected=rejected, refused=refused)

    def _feed(self) -> bool:
        """Hand spooled records to the Kafka client, in order, up to the in-flight bound."""
        if not self._backoff.ready():
            return False
        if self.failed:
            if self.outstanding:
                return False  # wait until every outstanding delivery has been reported
            self._rewind()
            return False
        spool = self.current
        room = self.emitter.settings.max_in_flight - len(self.in_flight)
        if room <= 0:
            return False
        start = self.read_position or spool.committed
        records = self._next_records(spool, start, min(room, _BATCH))
        if not records:
            self._finish_orphan_if_done()
            return False
        replaying = spool is not self.instance.spool
        prefixes: dict[int, bytes] = {}
        for kind in {record.kind for record in records}:
            prefix = self.schema_ids.prefix(kind)
            if prefix is None:
                self._back_off()
                return False
            prefixes[kind] = prefix
        # The hot loop of the SDK: attribute lookups hoisted, one produce call per record.
        produce, topic, delivered = self.producer.produce, self.emitter.settings.topic, self._delivered
        in_flight, sequence = self.in_flight, self.next_sequence
        try:
            for record in records:
                produce(
                    topic,
                    prefixes[record.kind] + record.value,
                    record.key,
                    on_delivery=partial(delivered, sequence, replaying),
                )
                in_flight[sequence] = record.next_position
                sequence += 1
                self.read_position = record.next_position
        except BufferError:
            self.producer.poll(0.01)  # the client's queue is full: let deliveries drain it
        finally:
            self.outstanding += sequence - self.next_sequence
            self.next_sequence = sequence
        return True

    def _next_records(self, spool: Spool, start: Position, limit: int) -> list[SpooledRecord]:
        """Records from `start`: from memory when they were just appended, else from disk.

        Reading back what was written a moment ago would cost more than encoding it; the disk is
        read after a restart, a rewind or a rotation, and for adopted spools.
        """
        recent = self.recent
        if spool is self.instance.spool:
            if len(recent) > 2 * self.emitter.settings.max_in_flight:
                recent.clear()  # the path has been down a while: let the disk hold them
            while recent and recent[0].position < start:
                recent.popleft()
            # Only a gap-free run: a caller spilling into the spool may have appended between them.
            batch: list[SpooledRecord] = []
            expected = start
            while recent and len(batch) < limit and recent[0].position == expected:
                record = recent.popleft()
                batch.append(record)
                expected = record.next_position
            if batch:
                return batch
        return list(spool.read(start, limit))

    def _delivered(self, sequence: int, replaying: bool, error: KafkaError | None, _: Message) -> None:
        """Kafka's verdict on one record (called from producer.poll on this thread)."""
        counters = self.emitter.counters
        self.outstanding -= 1
        if error is not None:
            counters.delivery_failures += 1
            self.failed = True
            self.in_flight.pop(sequence, None)
            self._warn_once("delivery", "Kafka did not acknowledge; records stay spooled", error=error.str())
            return
        self.acked.add(sequence)
        if replaying:
            counters.replayed += 1
        else:
            counters.produced += 1

    def _commit(self) -> None:
        position = None
        while self.next_commit in self.acked:
            self.acked.discard(self.next_commit)
            position = self.in_flight.pop(self.next_commit)
            self.next_commit += 1
        if position is not None:
            self.current.commit(position)

    def _rewind(self) -> None:
        """After a failed delivery: produce again from the first unacknowledged record, after a pause."""
        self._reset_reading()
        self._back_off()

    def _back_off(self) -> None:
        self._backoff.failed()

    def _finish_orphan_if_done(self) -> None:
        if self.orphans and not self.in_flight and not self.current.pending():
            folder, spool, handle = self.orphans.pop(0)
            spool.close()
            shutil.rmtree(folder, ignore_errors=True)
            handle.close()
            self._reset_reading()
        elif not self.in_flight:
            self._backoff.succeeded()

    def _reject(self, item: Any, reason: str) -> None:
        """Keep the rejected record with its reason in a local file (a dead letter, not a log stream)."""
        entry: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(),
            "reason": reason,
            "type": type(item).__name__,
        }
        record = item.model_dump(mode="json") if isinstance(item, BaseModel) else item
        try:
            line = json.dumps({**entry, "record": record}, default=str)
        except (TypeError, ValueError):
            line = json.dumps({**entry, "record": repr(item)})
        with self.reject_log.open("a") as handle:
            handle.write(line + "\n")
        self._warn_once(
            "rejected", "invalid events rejected to the reject log", reject_log=str(self.reject_log)
        )

    def _warn_once(self, topic: str, message: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(topic, -1e9) >= self.emitter.settings.drop_log_interval_s:
            self._last_warning[topic] = now
            log.warning(message, extra={**fields, **self.emitter.counters.as_dict()})

    def pending(self) -> bool:
        return (
            bool(self.emitter._queue)
            or bool(self.in_flight)
            or any(spool.pending() for spool in [*(o[1] for o in self.orphans), self.instance.spool])
        )

    def close(self) -> None:
        self.producer.flush(5)
        self._commit()
        for folder, spool, handle in self.orphans:
            spool.close()
            handle.close()
            del folder
        self.instance.close(remove_if_empty=True)


class Emitter:
    """Owns the configuration, the hand-off queue and the worker of the producer SDK.

    `emitter.on_finish(event)` hands an event off: it never blocks and never raises. While the
    worker runs and the queue is under its bound, `on_finish` *is* the queue's own `append` (a C
    call, no Python frame on the caller's thread); before the worker starts, after a fork, and while
    the queue is over its bound, it is a checking hand-off that starts the worker or counts drops.
    """

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        kafka: KafkaSettings | None = None,
        registry: RegistrySettings | None = None,
    ) -> None:
        self.settings = settings or ProducerSettings()
        self.kafka = kafka or KafkaSettings()
        self.registry = registry or RegistrySettings()
        self.counters = Counters()
        self._queue: deque[Any] = deque()
        self._queue_size = self.settings.queue_size
        self._worker: _Worker | None = None
        self._start_lock = threading.Lock()
        self._pid = os.getpid()
        # Bound once, so the worker can tell by identity which hand-off is in place.
        self._checked: Callable[[Any], None] = self._checked_hand_off
        self.on_finish: Callable[[Any], None] = self._checked
        _EMITTERS.add(self)

    def _checked_hand_off(self, event: Any) -> None:
        """The hand-off when the fast path is off (see the class docstring)."""
        try:
            if self._worker is None:  # first call, or first call in a forked child
                self._start()
            queue = self._queue
            if len(queue) >= self._queue_size:
                worker = self._worker
                if isinstance(worker, _Worker):
                    worker.spill(event)
                else:
                    self.counters.dropped += 1
                return
            queue.append(event)  # handed_off is counted by the worker as it drains: nothing more here
        except Exception:
            self.counters.dropped += 1

    def record_feedback(
        self,
        request_id: str,
        *,
        session_id: str | None = None,
        regenerated: bool = False,
        edited: bool = False,
        rating: int | None = None,
    ) -> None:
        """Hand off a user's reaction that arrives after the completion."""
        # Validated on the worker, like every event: a dict with a feedback_id is a Feedback record.
        self.on_finish(
            {
                "feedback_id": uuid.uuid4(),
                "request_id": request_id,
                "session_id": session_id,
                "regenerated": regenerated,
                "edited": edited,
                "rating": rating,
                "at": datetime.now(UTC),
            }
        )

    def start(self) -> None:
        """Start the worker now rather than at the first hand-off: it adopts the spools of dead
        processes and produces them, which a long-running service wants at once."""
        if self._worker is None or self._pid != os.getpid():
            self._start()

    def spool_batch(self, items: Sequence[Any], *, sync: bool = False) -> DurableBatch:
        """Validate, encode and append `items` to the spool on the caller's thread; return once durable.

        Durable as the spool defines it: handed to the OS, so the records survive the death of this
        process (with `sync`, also forced to the device, which survives power loss at the cost of an
        fsync per batch). The worker then produces them to Kafka like any other spooled record.
        Invalid items are rejected with their reason (not written to the reject log: the caller
        answers for them); when the spool is full the rest of the batch is refused, and nothing of
        it is counted as dropped, since the caller still holds it. Blocking, unlike `on_finish`.
        """
        self.start()
        worker = self._worker
        assert isinstance(worker, _Worker)
        return worker.append_batch(items, sync=sync)

    def spooled_bytes(self) -> int:
        """Bytes in this process's spools (its own and those it adopted), delivered or not yet.

        Whole segments are freed only once every record in them is delivered, so this may exceed
        the undelivered bytes by up to a segment per spool.
        """
        worker = self._worker
        if not isinstance(worker, _Worker):
            return 0
        return worker.instance.spool.size_bytes + sum(spool.size_bytes for _, spool, _ in worker.orphans)

    def _start(self) -> None:
        with self._start_lock:
            if self._worker is not None and self._pid == os.getpid():
                return
            # After a fork the parent's worker thread does not exist here: start this process's own.
            self._pid = os.getpid()
            self._worker = _Worker(self)
            self._worker.start()
            self.on_finish = self._queue.append

    def stats(self) -> dict[str, int]:
        stats = self.counters.as_dict()
        queued = len(self._queue)
        stats["queued"] = queued
        stats["handed_off"] += queued  # the worker counts what it took; the rest is still queued
        worker = self._worker
        if isinstance(worker, _Worker):
            rejected, dropped, spooled = worker.spilled
            stats["rejected"] += rejected
            stats["dropped"] += dropped
            stats["spooled"] += spooled
            stats["handed_off"] += rejected + dropped + spooled
            rejected, _, spooled = worker.durable
            stats["rejected"] += rejected
            stats["spooled"] += spooled
            stats["handed_off"] += rejected + spooled
        return stats

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything handed off so far reached Kafka; False on timeout."""
        worker = self._worker
        if worker is None:
            return not self._queue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not worker.pending():
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 10.0) -> bool:
        """Flush, stop the worker and release the spool (what is still undelivered stays in it).

        A hand-off after `close` starts a worker again, as the first hand-off does: the fast
        hand-off would append to a queue no worker drains. Events handed off while the worker
        stopped are taken by the next hand-off's worker, or by the next `close` (at exit too).
        """
        if self._worker is None and self._queue and self._pid == os.getpid():
            self._start()
        delivered = self.flush(timeout)
        worker = self._worker
        if worker is not None and self._pid == os.getpid():
            worker.stopping.set()
            worker.join(timeout)
            worker.close()
            self._worker = None
            self.on_finish = self._checked
        return delivered


_EMITTERS: weakref.WeakSet[Emitter] = weakref.WeakSet()


def _forget_parent_state() -> None:
    """In a forked child (gunicorn, multiprocessing): the parent's queued events are the parent's to send.

    The child starts with an empty queue, fresh counters and no worker; its first hand-off starts a
    worker and a spool folder of its own.
    """
    for emitter in list(_EMITTERS):
        emitter._queue = deque()
        emitter.on_finish = emitter._checked
        emitter.counters = Counters()
        emitter._worker = None
        emitter._start_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_parent_state)


@atexit.register
def _flush_at_exit() -> None:
    for emitter in list(_EMITTERS):
        with contextlib.suppress(Exception):
            emitter.close(timeout=5.0)
