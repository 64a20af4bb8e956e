"""The processors' whole path, over table-like state: what a worker does with a batch of records.

decode and validate -> deduplicate -> enrich and redact -> session -> window -> alerts, with
every output (enriched event, dead letter, snapshots, alerts) returned as `Output`s for the caller
to send. State lives in two stores the caller provides (Faust tables in the worker, dicts in
tests): sessions keyed by the Kafka key, and windows keyed by raw partition and window key.

A worker hands the pipeline its records a consumer batch at a time (`Pipeline.batch()`): each
record changes live state objects in memory, and the batch's end writes every state it touched
once, sends one snapshot per touched session and evaluates session and window rules once. The
cost of state serialisation, snapshots and rules is therefore paid per touched key and batch, not
per event; a batch of one record behaves exactly like the per-record path (`Pipeline.process`).

The per-event part (decode, validate, enrich, redact, encode) runs on one of two engines
(processors/engines.py): record by record in Python, the reference; or, with a `NativeCore`, in
one call into Rust at the batch's end, after which each record is applied to state in offset
order exactly where the reference would have applied it, and each record the core hands back
takes the reference path in its place.

Exactly-once in effect, without Kafka transactions:
- a record is identified by its raw (partition, offset); session and window states ignore offsets
  they already applied, so replaying a partition after a crash changes nothing;
- duplicates of an event (the same event_id at another offset, e.g. an SDK re-send) are found in
  the session state, which remembers the first offset of each event_id, and are dropped;
- snapshots are full state with a deterministic identity, so re-emitting one replaces it;
- the worker acks a batch only once all its outputs and state writes are delivered.

Memory is bounded by time, not by traffic (docs/decisions/0016): a session closes once its
partition's event time passes its last call by the gap plus the allowed lateness (a last snapshot,
`closed`), and leaves memory and its changelog (a tombstone) one retention later, as a closed
window does. The partition's session floor, persisted before the tombstones in the same changelog
partition, keeps a re-delivered event of a session that left from opening it again: an event older
than the floor, of a session not in memory, joins no session (it is late, as for its window).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from onfinish.errors import AccessDenied, describe_exception
from onfinish.processors.alerts import (
    RuleBook,
    event_alerts,
    session_alerts,
    window_alerts,
    window_breached,
)
from onfinish.processors.calls import EnrichedCall
from onfinish.processors.decoding import Decoder
from onfinish.processors.engines import NativeCore, Result, feedback_of
from onfinish.processors.enrichment import Enricher
from onfinish.processors.quality import merge_feedback, score_behaviour
from onfinish.processors.sessions import (
    DEFAULT_GAP,
    SessionState,
    event_key,
    stored_last_at,
    stored_partition,
)
from onfinish.processors.windows import WINDOW, Watermark, WindowKey, WindowState, window_start
from onfinish.schemas.contract import (
    ALERT,
    ENRICHED_EVENT,
    QUALITY_UPDATE,
    SESSION_SNAPSHOT,
    WINDOW_SNAPSHOT,
    RecordType,
)
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.models import MAX_ID_CHARS, Alert, Feedback, OnFinishEvent
from onfinish.schemas.sealing import Seal
from onfinish.schemas.wire import Refused, RegistryUnavailable, SchemaRefused

if TYPE_CHECKING:
    from onfinish_native import Call

log = logging.getLogger(__name__)

Datum = dict[str, Any]
Encode = Callable[[RecordType, Datum], bytes]


class StateStore(Protocol):
    """Keyed state that survives the worker: a Faust table and its changelog in the worker.

    A store holds each key's live value in memory, or the persisted form a restore brought back
    (the pipeline turns that into a live value on first use and `remember`s it). Writes name the
    raw partition the state belongs to: its changelog partition, which the worker that takes that
    raw partition over restores.
    """

    def get(self, key: str) -> Any: ...

    def put(self, key: str, value: Any, state: Any, partition: int) -> None:
        """Keep `value` in memory and persist `state`, its JSON form."""

    def remember(self, key: str, value: Any) -> None:
        """Replace the in-memory value only (a restored state made live)."""

    def delete(self, key: str, partition: int) -> None: ...

    def keys(self) -> Iterable[str]: ...

    def partition_of(self, key: str) -> int | None:
        """The partition of a key written here or restored; None if it is not known."""


class DictStore:
    """A StateStore over dicts (tests, benchmarks): `data` as a table holds it, `changelog` as
    Kafka would keep it (the persisted forms, what a restore starts from)."""

    def __init__(
        self,
        data: dict[str, Any] | None = None,
        *,
        changelog: dict[str, Any] | None = None,
        partitions: dict[str, int] | None = None,
    ) -> None:
        self.data: dict[str, Any] = {} if data is None else data
        self.changelog = changelog
        # The partitions of the keys in `data` as restored (Faust's store knows each restored key's).
        self.partitions: dict[str, int] = {} if partitions is None else partitions

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any, state: Any, partition: int) -> None:
        self.data[key] = value
        if self.changelog is not None:
            self.changelog[key] = state

    def remember(self, key: str, value: Any) -> None:
        self.data[key] = value

    def delete(self, key: str, partition: int) -> None:
        self.data.pop(key, None)
        self.partitions.pop(key, None)
        if self.changelog is not None:
            self.changelog.pop(key, None)

    def keys(self) -> Iterable[str]:
        return list(self.data)

    def partition_of(self, key: str) -> int | None:
        return self.partitions.get(key)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record read from the raw topic."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Output:
    """One record to send: to the topic of `record_type` (or the DLQ when it is None)."""

    record_type: RecordType | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Counts:
    """What the pipeline did, for /metrics."""

    records_in: int = 0  # raw records handed to the pipeline, bad ones included
    processed: int = 0
    duplicates: int = 0
    replayed: int = 0
    late: int = 0
    feedback: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)


# What a batch's time is spent on (`Batch.seconds`, /metrics): decode and validate; deduplicate,
# price, score and redact; encode the outputs; apply sessions and windows; and the batch's end
# (state written once per touched key, session and window snapshots, rules).
STAGES = ("decode", "enrich", "encode", "state", "finish")

# Sessions closed or evicted per batch, at most (whole minutes of a partition's, so a little more):
# each costs up to three records (its last snapshot, its state, its tombstone). At 1,000 events/s
# a minute's sessions closed at once were 13,700 (in loadgen traffic, about 190 new sessions a
# second): one batch of 27,000 more records, a second's stall and 120 MiB more resident memory in
# the soak (bench/soak.py). Spread this way they take a few batches; an upgrade, that restores
# every session the first version kept, closes them over many.
SWEEP_SESSIONS = 2_000
WINDOW_KEYS_KEPT = 4_096  # Pipeline.window_key's cache, cleared when full
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Pipeline:
    def __init__(
        self,
        decoder: Decoder,
        enricher: Enricher,
        rules: RuleBook,
        encode: Encode,
        sessions: StateStore,
        windows: StateStore,
        *,
        allowed_lateness: timedelta,
        clock: Callable[[], datetime],
        native: NativeCore | None = None,
        session_gap: timedelta = DEFAULT_GAP,
        seal: Seal | None = None,
    ) -> None:
        self.decoder = decoder
        # Dead letters leave sealed: they are records as they came, before redaction (decision 0017).
        self.seal = seal or Seal.configured()
        self.enricher = enricher
        self.rules = rules
        self.encode = encode
        self.sessions = sessions
        self.windows = windows
        self.allowed_lateness = allowed_lateness
        self.clock = clock
        self.watermarks: dict[int, Watermark] = {}
        self.dirty_windows: set[str] = set()
        self.closed_windows: set[str] = set()  # final snapshot sent, state kept a while longer
        self.close_checked: dict[int, datetime] = {}  # partition -> minute up to which closing was checked
        self.retention = max(allowed_lateness, timedelta(minutes=1))
        self.counts = Counts()
        self._window_rules = bool(rules.of_kind("window"))
        # What window and session rules read of a state before a batch changes it.
        self._window_figures = tuple(
            {"events", "errors"} | {r.metric for r in rules.of_kind("window") if r.metric != "error_rate"}
        )
        self._session_figures = tuple({r.metric for r in rules.of_kind("session")})
        # A call's window and its table key's text, by the call's minute and dimensions: building
        # them (a frozen dataclass, a minute's arithmetic, an isoformat) was a quarter of a call's
        # state work, for the few hundred windows that are open at a time.
        self._window_keys: dict[tuple[Any, ...], tuple[WindowKey, str]] = {}
        # Sessions over time: partition -> minute of the last call -> session keys, for closing
        # sessions without a look at the others; the boundary each partition was swept up to; and
        # its floor (`session_floor`). Partitions whose restored sessions are not indexed yet wait
        # in `_unindexed`. The keys are lists, not sets (9 bytes a session rather than 52, of a
        # live session's 1 KB budget): a session whose last call moves to a later minute is
        # appended there and left stale in the earlier list, which the sweep skips.
        self.session_gap = session_gap
        self.session_index: dict[int, dict[datetime, list[str]]] = {}
        self.session_swept: dict[int, datetime] = {}
        self.session_floors: dict[int, datetime | None] = {}
        self._unindexed: set[int] = set()
        # The per-event engine (processors/engines.py): None runs the Python reference per record.
        self.native = native

    def batch(self) -> Batch:
        """Start a batch: `add` its records in offset order, then `finish` it."""
        return Batch(self)

    def process(
        self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int
    ) -> list[Output]:
        """One record as a batch of its own."""
        batch = self.batch()
        batch.add(RawRecord(key, value, topic, partition, offset))
        return batch.finish()

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the in-memory state of partitions this worker no longer owns (their state is in the
        changelog, for the worker that took them)."""
        prefixes = tuple(f"{p}|" for p in partitions)
        if not prefixes:
            return
        for partition in partitions:
            self.watermarks.pop(partition, None)
            self.close_checked.pop(partition, None)
            self.session_index.pop(partition, None)
            self.session_swept.pop(partition, None)
            self.session_floors.pop(partition, None)
            self._unindexed.discard(partition)
        self.dirty_windows = {k for k in self.dirty_windows if not k.startswith(prefixes)}
        self.closed_windows = {k for k in self.closed_windows if not k.startswith(prefixes)}

    # --- windows over time ---------------------------------------------------------------------

    def watermark(self, partition: int) -> Watermark:
        watermark = self.watermarks.get(partition)
        if watermark is None:
            # A worker that took over the partition resumes from the watermark its predecessor
            # persisted, so windows it closed stay closed when their events are replayed...
            stored = self.windows.get(_watermark_key(partition))
            watermark = Watermark(self.allowed_lateness, datetime.fromisoformat(stored) if stored else None)
            self.watermarks[partition] = watermark
            # ...and it sends the snapshots of every window it restored once more: the predecessor
            # may have died before its last snapshots left its producer.
            self.dirty_windows |= self._partition_windows(partition)
            self._unindexed.add(partition)  # its restored sessions join the index at the batch's end
        return watermark

    def _partition_windows(self, partition: int) -> set[str]:
        prefix = f"{partition}|"
        watermark_key = _watermark_key(partition)
        keys = self.windows.keys()  # a StateStore, not a dict
        return {k for k in keys if k.startswith(prefix) and k != watermark_key}

    def _closing(self, partition: int, now: datetime) -> tuple[list[Output], list[str], list[str]]:
        """Final snapshots of windows the watermark closed, the windows closed and those expired.

        A closed window stays in the table for as long again as the allowed lateness (at least a
        minute): by the time its tombstone is written, its final snapshot has long been flushed by
        a commit, so a worker killed in between never leaves a window deleted but unreported.
        """
        boundary = self._close_boundary(partition)
        # Windows only close when the watermark enters a new minute: most batches need no check.
        if boundary is None or self.close_checked.get(partition) == boundary:
            return [], [], []
        watermark = self.watermarks[partition]
        prefix = f"{partition}|"
        candidates = {k for k in self.dirty_windows if k.startswith(prefix)} | self._partition_windows(
            partition
        )
        outputs: list[Output] = []
        closed: list[str] = []
        expired: list[str] = []
        for table_key in sorted(candidates):
            start = WindowKey.from_text(table_key.split("|", 1)[1]).window_start
            if watermark.is_closed(start) and table_key not in self.closed_windows:
                output = self._window_snapshot(table_key, now)
                if output is not None:
                    outputs.append(output)
                closed.append(table_key)
            if watermark.is_closed(start + self.retention):
                expired.append(table_key)
        return outputs, closed, expired

    def _close_boundary(self, partition: int) -> datetime | None:
        moment = self.watermarks[partition].max_event_time
        return None if moment is None else window_start(moment - self.allowed_lateness)

    def _close(self, partition: int, closed: list[str], expired: list[str]) -> None:
        """Record what `_closing` found, once its snapshots are encoded."""
        boundary = self._close_boundary(partition)
        if boundary is None or self.close_checked.get(partition) == boundary:
            return
        self.close_checked[partition] = boundary
        for table_key in closed:
            self.closed_windows.add(table_key)
            self.dirty_windows.discard(table_key)
        if expired:
            # The watermark reaches the changelog before the windows leave it (a partition keeps order).
            moment = self.watermarks[partition].max_event_time
            assert moment is not None
            stamp = moment.isoformat()
            self.windows.put(_watermark_key(partition), stamp, stamp, partition)
            for table_key in expired:
                self.dirty_windows.discard(table_key)
                self.closed_windows.discard(table_key)
                self.windows.delete(table_key, partition)

    def dirty_snapshots(self) -> list[Output]:
        """Snapshots of the windows that changed since the last call (sent every few seconds)."""
        now = self.clock()
        outputs = [self._window_snapshot(k, now) for k in sorted(self.dirty_windows)]
        self.dirty_windows.clear()
        return [o for o in outputs if o is not None]

    def _window_snapshot(self, table_key: str, now: datetime) -> Output | None:
        state = self.window_state(table_key)
        if state is None or state.version < 0:
            return None
        partition, text = table_key.split("|", 1)
        datum = state.datum(WindowKey.from_text(text), int(partition), now)
        return Output(WINDOW_SNAPSHOT, datum["window_id"].encode(), self.encode(WINDOW_SNAPSHOT, datum))

    # --- state ---------------------------------------------------------------------------------

    def session(self, session_key: str) -> SessionState | None:
        """The session in memory, made live from its changelog form if a restore brought it; None
        if there is none (never seen, or gone: closed and evicted)."""
        stored = self.sessions.get(session_key)
        if stored is None or isinstance(stored, SessionState):
            return stored
        if not isinstance(stored, list | dict):
            return None  # not a session: a partition's floor
        live = SessionState.from_state(stored)
        self.sessions.remember(session_key, live)
        # Restored: into the index (again: it may be there already), by the partition it names
        # or, in the first format, the one the store restored it from.
        partition = stored_partition(stored)
        if partition is None:
            partition = self.sessions.partition_of(session_key)
        if partition is not None:
            self._index_session(partition, session_key, live.last_at)
        return live

    def window_key(self, call: EnrichedCall) -> tuple[WindowKey, str]:
        """The call's WindowKey and its text (`WindowKey.as_text`)."""
        finished_at = call.finished_at
        if finished_at.tzinfo is not UTC:  # an offset may hold seconds: its minute is not UTC's
            key = WindowKey.of(call)
            return key, key.as_text()
        dimensions = (
            finished_at.replace(second=0, microsecond=0),
            call.provider,
            call.model_id,
            call.feature_id,
            call.variant_id,
            call.environment,
            call.status,
        )
        found = self._window_keys.get(dimensions)
        if found is None:
            if len(self._window_keys) >= WINDOW_KEYS_KEPT:
                self._window_keys.clear()
            key = WindowKey.of(call)
            found = self._window_keys[dimensions] = (key, key.as_text())
        return found

    def window_state(self, table_key: str) -> WindowState | None:
        stored = self.windows.get(table_key)
        if stored is None or isinstance(stored, WindowState):
            return stored
        live = WindowState.from_state(stored)
        self.windows.remember(table_key, live)
        return live

    # --- sessions over time --------------------------------------------------------------------

    def session_floor(self, partition: int) -> datetime | None:
        """The partition's session floor: every session whose last call finished before it has left
        memory and the changelog, so an event before it, of a session not in memory, is late (it
        may be a re-delivery of one of theirs). None until the partition's first eviction."""
        if partition not in self.session_floors:
            stored = self.sessions.get(_floor_key(partition))
            floor = None
            if isinstance(stored, datetime):
                floor = stored
            elif isinstance(stored, int):
                floor = _EPOCH + stored * _MICROSECOND
            self.session_floors[partition] = floor
        return self.session_floors[partition]

    def _session_boundary(self, partition: int) -> datetime | None:
        """Sessions whose last call finished in a minute before this one are over: the partition's
        event time is more than the gap plus the allowed lateness past them."""
        moment = self.watermarks[partition].max_event_time
        return None if moment is None else window_start(moment - self.allowed_lateness - self.session_gap)

    def _index_session(self, partition: int, key: str, last_at: datetime | None) -> None:
        minute = _EPOCH if last_at is None else window_start(last_at)
        self.session_index.setdefault(partition, {}).setdefault(minute, []).append(key)

    def _move_session(
        self, partition: int, key: str, before: datetime | None, after: datetime | None
    ) -> None:
        """Keep the index in step with a session's last call: indexed again when it moves to a
        later minute (the earlier entry goes stale), as it is when new."""
        if before is None or after is None or window_start(after) != window_start(before):
            self._index_session(partition, key, after)

    def _index_restored(self) -> None:
        """Index the sessions a restore brought for the partitions this worker just took (they are
        made live only when used: most never are again)."""
        partitions, self._unindexed = self._unindexed, set()
        for key in self.sessions.keys():  # noqa: SIM118 - a StateStore, not a dict
            stored = self.sessions.get(key)
            if not isinstance(stored, list | dict):
                continue  # live (indexed when written), or a floor
            partition = stored_partition(stored)
            if partition is None:  # the first format did not say: the store knows
                partition = self.sessions.partition_of(key)
                if partition is None:
                    log.warning(
                        "a restored session of an unknown partition stays", extra={"key_chars": len(key)}
                    )
                    continue
            if partition in partitions:
                self._index_session(partition, key, stored_last_at(stored))

    def _sweep(self, partition: int, budget: int) -> Sweep | None:
        """The sessions of `partition` to close and to evict, once its boundary entered a new minute.

        A session over (in a minute before the boundary) gets its last snapshot, `closed`; one over
        for a retention more (as long as a window is kept after it closed) leaves memory and the
        changelog. Sessions are closed or evicted while `budget` lasts (whole minutes of them):
        the rest wait for the next batch. Sessions already closed that stay cost none of it.
        """
        boundary = self._session_boundary(partition)
        if boundary is None or self.session_swept.get(partition) == boundary:
            return None
        index = self.session_index.get(partition, {})
        evict_before = boundary - self.retention
        sweep = Sweep(partition, boundary)
        handled = 0
        for minute in sorted(m for m in index if m < boundary):
            if handled >= budget:
                sweep.complete = False
                break
            evicted = minute < evict_before
            # dict.fromkeys: a key indexed twice in a minute (restored again) counts once.
            for key in dict.fromkeys(index[minute]):
                session = self.session(key)
                if session is None:
                    continue
                if (_EPOCH if session.last_at is None else window_start(session.last_at)) != minute:
                    continue  # stale: the session moved on, and is indexed at its later minute
                if not session.closed:
                    sweep.closing.append((key, session))
                    handled += 1
                if evicted:
                    sweep.evicted.append(key)
                    handled += 1
            if evicted:
                sweep.minutes.append(minute)
                sweep.floor = minute + WINDOW
        sweep.handled = handled
        return sweep

    def _evict(self, sweep: Sweep) -> None:
        """Write what a sweep decided (its closed sessions were written by the batch): the
        partition's new floor first, then the tombstones (one changelog partition keeps order)."""
        partition = sweep.partition
        if sweep.floor is not None:
            floor = max(sweep.floor, self.session_floor(partition) or sweep.floor)
            self.session_floors[partition] = floor
            self.sessions.put(_floor_key(partition), floor, (floor - _EPOCH) // _MICROSECOND, partition)
        for key in sweep.evicted:
            self.sessions.delete(key, partition)
        index = self.session_index.get(partition, {})
        for minute in sweep.minutes:
            index.pop(minute, None)
        if sweep.complete:
            self.session_swept[partition] = sweep.boundary

    # --- outputs -------------------------------------------------------------------------------

    def alert_output(self, alert: Alert) -> Output:
        return Output(ALERT, alert.alert_id.encode(), self.encode(ALERT, ALERT.to_datum(alert)))

    def dead_letter(self, stage: Stage, reason: Reason, message: str, record: RawRecord) -> Output:
        self.counts.dead_lettered[reason.value] = self.counts.dead_lettered.get(reason.value, 0) + 1
        letter = DeadLetter.of_record(self.seal, stage, reason, message, record)
        return Output(None, letter.key, letter.value, letter.headers())


class Batch:
    """The records of one consumer batch, applied to live state; `finish` writes what they touched.

    `add` and `finish` may raise RegistryUnavailable (an output's schema could not be registered,
    or a writer schema fetched); both leave state as it was before the call, so the worker retries
    the same call once the registry answers. They raise SchemaRefused when the registry refuses an
    output's schema, which the worker does not outlive.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.outputs: list[Output] = []
        # session key -> what the batch found of it: its state, raw partition, its figures, version
        # and last call before the batch
        self.sessions: dict[str, _Touched] = {}
        # window table key -> (state, window key, raw partition, its figures before the batch)
        self.windows: dict[str, tuple[WindowState, WindowKey, int, Datum | None]] = {}
        self.partitions: set[int] = set()
        self.last_offsets: dict[int, int] = {}  # the highest offset read, per raw partition
        self.now = pipeline.clock()
        self.records = 0
        self.seconds = dict.fromkeys(STAGES, 0.0)  # time spent in each of STAGES
        # With the native engine, records wait here for one call at the batch's end; `applied` of
        # them are in state (a registry outage may stop the batch's end part way, to be retried).
        self.pending: list[RawRecord] = []
        self.results: list[Result] | None = None
        self.applied = 0

    def add(self, record: RawRecord) -> None:
        # RegistryUnavailable leaves the record uncounted: the caller retries it.
        native = self.pipeline.native
        if native is None:
            self._add(record)
        else:
            started = perf_counter()
            native.prepare(record.value)
            self.pending.append(record)
            self.seconds["decode"] += perf_counter() - started
        self.records += 1
        self.pipeline.counts.records_in += 1
        self.last_offsets[record.partition] = record.offset

    def _apply_pending(self) -> None:
        """The native engine's records: one call for all, then each applied to state in offset
        order, exactly where the reference path would apply it; a record the core handed back
        takes the reference path (`_add`) in its place."""
        native = self.pipeline.native
        if native is None or not self.pending:
            return
        if self.results is None:
            self.results, seconds = native.run(self.pending, self.now)
            for stage, spent in seconds.items():
                self.seconds[stage] += spent
        while self.applied < len(self.pending):
            record, result = self.pending[self.applied], self.results[self.applied]
            if result is None:
                self._add(record)
            else:
                try:
                    if isinstance(result, tuple):
                        started = perf_counter()
                        self._feedback(feedback_of(result), record.partition, record.offset)
                        self.seconds["state"] += perf_counter() - started
                    else:
                        self._call(result, record.partition, record.offset)
                except (RegistryUnavailable, SchemaRefused, AccessDenied):
                    raise
                except Exception as exc:  # as in `_add`: a bug must not stop the worker
                    self._processing_error(exc, record)
            self.applied += 1
        self.pending, self.results, self.applied = [], None, 0

    def _add(self, record: RawRecord) -> None:
        pipeline = self.pipeline
        seconds = self.seconds
        started = perf_counter()
        try:
            decoded = pipeline.decoder.decode(record.value)
        except Refused as refused:
            stage = Stage.decode if refused.reason is not Reason.contract_violation else Stage.validate
            self.outputs.append(pipeline.dead_letter(stage, refused.reason, refused.message, record))
            seconds["decode"] += perf_counter() - started
            return
        decoded_at = perf_counter()
        seconds["decode"] += decoded_at - started
        try:
            if isinstance(decoded, Feedback):
                self._feedback(pipeline.enricher.feedback(decoded), record.partition, record.offset)
                seconds["state"] += perf_counter() - decoded_at
            else:
                self._event(decoded, record.partition, record.offset, decoded_at)
        except (RegistryUnavailable, SchemaRefused, AccessDenied):
            raise
        except Exception as exc:  # a bug must not stop the worker: the record goes to the DLQ
            self._processing_error(exc, record)

    def _processing_error(self, exc: Exception, record: RawRecord) -> None:
        """The record to the DLQ as a processing_error; the message gives the exception's type and
        place, not its text, which may quote the record (unredacted: it failed before redaction)."""
        message = describe_exception(exc)
        self.outputs.append(self.pipeline.dead_letter(Stage.enrich, Reason.processing_error, message, record))

    def _touch_session(self, session_key: str, partition: int) -> SessionState | None:
        """The session in memory (None if there is none), noted as touched by this batch."""
        entry = self.sessions.get(session_key)
        if entry is not None:
            return entry.session
        session = self.pipeline.session(session_key)
        if session is None:
            return None
        figures = self.pipeline._session_figures
        before = session.figures(figures) if figures and session.turns else None
        self.sessions[session_key] = _Touched(session, partition, before, session.version, session.last_at)
        return session

    def _open_session(self, session_key: str, partition: int) -> SessionState:
        session = SessionState()
        self.sessions[session_key] = _Touched(session, partition, None, session.version, None)
        return session

    def _event(self, event: OnFinishEvent, partition: int, offset: int, since: float) -> None:
        pipeline = self.pipeline
        seconds = self.seconds
        # The session key as the enriched record has it (an id holding PII is pseudonymised): what
        # state, snapshots and the outputs' Kafka keys use, never the raw value.
        session_key = pipeline.enricher.key(event)
        session = self._touch_session(session_key, partition)
        event_id = event.event_id.bytes
        if session is not None:
            first_offset = session.first_offset(event_id)
            if first_offset is not None and first_offset != offset:
                pipeline.counts.duplicates += 1
                seconds["enrich"] += perf_counter() - since
                return
        enriched = pipeline.enricher.enrich(event, partition, offset, self.now)
        enriched_at = perf_counter()
        seconds["enrich"] += enriched_at - since
        # Everything that may fail for want of the registry comes before any change of state.
        outputs = [
            Output(
                ENRICHED_EVENT,
                session_key.encode(),
                pipeline.encode(ENRICHED_EVENT, ENRICHED_EVENT.to_datum(enriched)),
            )
        ]
        outputs += [pipeline.alert_output(alert) for alert in event_alerts(pipeline.rules, enriched)]
        self.outputs += outputs
        self.partitions.add(partition)
        encoded_at = perf_counter()
        seconds["encode"] += encoded_at - enriched_at
        # Kept in the session's state with the finish reason as redacted (whether it is a truncation:
        # it scores as the raw one does, since no truncation reason holds anything a pattern masks).
        self._apply(
            session, session_key, enriched, event_id, enriched.finish_reason, event.rating, partition, offset
        )
        seconds["state"] += perf_counter() - encoded_at

    def _call(self, call: Call, partition: int, offset: int) -> None:
        """`_event` for a call the native core decoded, enriched and encoded."""
        pipeline = self.pipeline
        seconds = self.seconds
        # Stages as `_event` counts them: the session's lookup and deduplication with enrichment,
        # the outputs (event alerts included) with encoding.
        started = perf_counter()
        session_key = call.key
        session = self._touch_session(session_key, partition)
        event_id = event_key(call.event_id)
        if session is not None:
            first_offset = session.first_offset(event_id)
            if first_offset is not None and first_offset != offset:
                pipeline.counts.duplicates += 1
                seconds["enrich"] += perf_counter() - started
                return
        looked_up = perf_counter()
        seconds["enrich"] += looked_up - started
        outputs = [Output(ENRICHED_EVENT, session_key.encode(), call.value)]
        outputs += [pipeline.alert_output(alert) for alert in event_alerts(pipeline.rules, call)]
        self.outputs += outputs
        self.partitions.add(partition)
        encoded_at = perf_counter()
        seconds["encode"] += encoded_at - looked_up
        self._apply(session, session_key, call, event_id, call.finish_reason, call.rating, partition, offset)
        seconds["state"] += perf_counter() - encoded_at

    def _apply(
        self,
        session: SessionState | None,
        session_key: str,
        call: EnrichedCall,
        event_id: bytes,
        finish_reason: str | None,
        rating: int | None,
        partition: int,
        offset: int,
    ) -> None:
        """An enriched call into its session, its window and the partition's watermark."""
        pipeline = self.pipeline
        if session is None:
            floor = pipeline.session_floor(partition)
            if floor is None or call.finished_at >= floor:
                session = self._open_session(session_key, partition)
        # else: a session that left, or one over before it began: late (counted with its window)
        if session is not None and not session.apply_event(
            call, offset, event_id=event_id, finish_reason=finish_reason, rating=rating
        ):
            pipeline.counts.replayed += 1

        watermark = pipeline.watermark(partition)
        window_key, window_text = pipeline.window_key(call)
        if watermark.is_closed(window_key.window_start):
            pipeline.counts.late += 1  # still in the events table; its closed window is not reopened
        else:
            self._window(window_key, window_text, call, partition, offset)
        watermark.observe(call.finished_at)
        pipeline.counts.processed += 1

    def _window(self, key: WindowKey, text: str, enriched: EnrichedCall, partition: int, offset: int) -> None:
        table_key = f"{partition}|{text}"
        entry = self.windows.get(table_key)
        if entry is None:
            pipeline = self.pipeline
            state = pipeline.window_state(table_key)
            if state is None:
                state = WindowState()
                pipeline.windows.remember(table_key, state)
                before = None
            else:
                before = state.figures(pipeline._window_figures) if pipeline._window_rules else None
            entry = self.windows[table_key] = (state, key, partition, before)
        entry[0].apply(enriched, offset)

    def _feedback(self, feedback: Feedback, partition: int, offset: int) -> None:
        """A Feedback whose ids are cleaned as its call's were (`Enricher.feedback`)."""
        pipeline = self.pipeline
        session_key = feedback.key
        session = self._touch_session(session_key, partition)
        if session is None:  # about a session not in memory: no call of it to correct
            pipeline.counts.feedback += 1
            return
        if offset <= session.version:
            pipeline.counts.feedback += 1
            pipeline.counts.replayed += 1
            return
        index = session.call_index(feedback.request_id)
        quality = behaviour = None
        if index is not None and (call := session.call(index)).scorable:
            behaviour = merge_feedback(call.behaviour(), feedback)
            quality = score_behaviour(behaviour, pipeline.enricher.weights)
            # The event was stored with the score it had then: this update replaces it downstream.
            update = {
                "request_id": feedback.request_id,
                "session_id": feedback.session_id,
                "quality_score": quality,
                "regenerated": behaviour.regenerated,
                "edited": behaviour.edited,
                "rating": behaviour.rating,
                "version": offset,
                "raw_partition": partition,
                "updated_at": self.now,
            }
            self.outputs.append(
                Output(QUALITY_UPDATE, session_key.encode(), pipeline.encode(QUALITY_UPDATE, update))
            )
        pipeline.counts.feedback += 1
        session.apply_feedback(
            feedback.request_id,
            regenerated=feedback.regenerated,
            edited=feedback.edited,
            quality=quality,
            offset=offset,
            behaviour=behaviour,
        )

    def finish(self) -> list[Output]:
        """The batch's outputs, once every state it touched is written.

        In order: the sessions the batch touched join the index at their last call; the sweep of
        each partition finds the sessions to close and to evict; every output is encoded (session
        snapshots, the last ones `closed`, alerts, the final snapshots of closed windows); then the
        states are written, the floors, and the tombstones of what left.
        """
        self._apply_pending()
        started = perf_counter()
        pipeline = self.pipeline
        rules = pipeline.rules
        outputs = list(self.outputs)
        if pipeline._unindexed:
            pipeline._index_restored()
        for session_key, touched in self.sessions.items():
            if touched.session.version != touched.version:
                pipeline._move_session(
                    touched.partition, session_key, touched.last_at, touched.session.last_at
                )
        sweeps: list[Sweep] = []
        budget = SWEEP_SESSIONS  # for the batch, across its partitions
        for partition in sorted(self.partitions):
            sweep = pipeline._sweep(partition, budget)
            if sweep is not None:
                sweeps.append(sweep)
                budget = max(budget - sweep.handled, 0)
        closing: dict[str, tuple[SessionState, int]] = {}
        for sweep in sweeps:
            for session_key, session in sweep.closing:
                closing[session_key] = (session, sweep.partition)

        writes: list[tuple[str, SessionState, int]] = []
        for session_key, touched in self.sessions.items():
            session, partition = touched.session, touched.partition
            if session.version == touched.version:
                continue  # nothing changed (every record a replay or a duplicate)
            writes.append((session_key, session, partition))
            if session.turns == 0 or session_key in closing:
                continue  # nothing to show (feedback only), or its last snapshot is below
            after = session.datum(session_key, partition, self.now)
            outputs.append(
                Output(SESSION_SNAPSHOT, session_key.encode(), pipeline.encode(SESSION_SNAPSHOT, after))
            )
            outputs += [
                pipeline.alert_output(alert) for alert in session_alerts(rules, touched.before, after)
            ]
        # The last snapshot of a session that closes: its version is the partition's offset this
        # batch reached (the session reflects every record of the partition up to it), so that it
        # replaces the snapshots before it downstream.
        for session_key, (session, partition) in closing.items():
            if session.turns == 0:
                continue
            version = max(session.version, self.last_offsets.get(partition, session.version))
            after = session.datum(session_key, partition, self.now, closed=True)
            after["version"] = max(version, 0)
            outputs.append(
                Output(SESSION_SNAPSHOT, session_key.encode(), pipeline.encode(SESSION_SNAPSHOT, after))
            )
            changed = self.sessions.get(session_key)
            if changed is not None and changed.session.version != changed.version:
                outputs += [
                    pipeline.alert_output(alert) for alert in session_alerts(rules, changed.before, after)
                ]
        if pipeline._window_rules:
            names = pipeline._window_figures
            for state, key, partition, before in self.windows.values():
                if state.events and window_breached(rules, before, state.figures(names)):
                    after = state.summary(key, partition)
                    outputs += [pipeline.alert_output(alert) for alert in window_alerts(rules, before, after)]
        closing_windows = [(p, pipeline._closing(p, self.now)) for p in sorted(self.partitions)]
        for _, (closed_outputs, _, _) in closing_windows:
            outputs += closed_outputs
        # Every output is encoded: from here on nothing waits for the registry.
        written = {session_key for session_key, _, _ in writes}
        for session_key, (session, partition) in closing.items():
            session.closed = True
            session.version = max(session.version, self.last_offsets.get(partition, session.version))
            if session_key not in written:
                writes.append((session_key, session, partition))
        sessions = pipeline.sessions
        for session_key, session, partition in writes:
            sessions.put(session_key, session, session.to_state(partition), partition)
        for sweep in sweeps:
            pipeline._evict(sweep)
        for table_key, (state, _, partition, _) in self.windows.items():
            if state.version >= 0:
                pipeline.windows.put(table_key, state, state.to_state(), partition)
                pipeline.dirty_windows.add(table_key)
        for partition, (_, closed, expired) in closing_windows:
            pipeline._close(partition, closed, expired)
        self.seconds["finish"] += perf_counter() - started
        return outputs


@dataclass(slots=True)
class _Touched:
    """A session a batch touched, and what it was before the batch."""

    session: SessionState
    partition: int
    before: Datum | None  # the figures session rules read
    version: int
    last_at: datetime | None


@dataclass
class Sweep:
    """What a partition's sweep found (`Pipeline._sweep`): sessions to close, sessions to evict
    and the index minutes they leave, and the floor once they left."""

    partition: int
    boundary: datetime
    closing: list[tuple[str, SessionState]] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    minutes: list[datetime] = field(default_factory=list)
    floor: datetime | None = None
    complete: bool = True
    handled: int = 0  # sessions closed or evicted


def _watermark_key(partition: int) -> str:
    return f"{partition}|watermark"


def _floor_key(partition: int) -> str:
    """The sessions table's key of a partition's floor: longer than any session key can be (the
    contract's identifiers have at most MAX_ID_CHARS characters), so no session can take it."""
    return f"{partition}|session floor|".ljust(MAX_ID_CHARS + 1, "~")
