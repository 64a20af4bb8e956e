"""The processors' whole path for one raw record, over table-like state: what a worker does.

decode and validate -> deduplicate -> enrich and redact -> session -> window -> alerts, with
every output (enriched event, dead letter, snapshots, alerts) returned as `Output`s for the caller
to send. State lives in two mappings the caller provides (Faust tables in the worker, dicts in
tests): sessions keyed by the Kafka key, and windows keyed by raw partition and window key.

Exactly-once in effect, without Kafka transactions:
- a record is identified by its raw (partition, offset); session and window states ignore offsets
  they already applied, so replaying a partition after a crash changes nothing;
- duplicates of an event (the same event_id at another offset, e.g. an SDK re-send) are found in
  the session state, which remembers the first offset of each event_id, and are dropped;
- snapshots are full state with a deterministic identity, so re-emitting one replaces it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from onfinish.processors.alerts import RuleBook, event_alerts, session_alerts, window_alerts
from onfinish.processors.decoding import Decoder, Refused
from onfinish.processors.enrichment import Enricher
from onfinish.processors.quality import Behaviour, merge_feedback, score_behaviour
from onfinish.processors.sessions import SessionState
from onfinish.processors.windows import Watermark, WindowKey, WindowState, window_start
from onfinish.schemas.contract import ALERT, ENRICHED_EVENT, SESSION_SNAPSHOT, WINDOW_SNAPSHOT, RecordType
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.models import Feedback, OnFinishEvent, _Record

Encode = Callable[[RecordType, _Record], bytes]


class StateStore(Protocol):
    """Keyed state that survives the worker: a Faust table's changelog in the worker, a dict in tests.

    Writes name the raw partition the state belongs to: its changelog partition, which the worker
    that takes that raw partition over restores.
    """

    def get(self, key: str) -> Any: ...

    def put(self, key: str, value: Any, partition: int) -> None: ...

    def delete(self, key: str, partition: int) -> None: ...

    def keys(self) -> Iterable[str]: ...


class DictStore:
    """A StateStore over a plain dict (tests, benchmarks)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = {} if data is None else data

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any, partition: int) -> None:
        self.data[key] = value

    def delete(self, key: str, partition: int) -> None:
        self.data.pop(key, None)

    def keys(self) -> Iterable[str]:
        return list(self.data)


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

    processed: int = 0
    duplicates: int = 0
    replayed: int = 0
    late: int = 0
    feedback: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)


def _session_key(record: OnFinishEvent | Feedback) -> str:
    return record.session_id or record.request_id


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
    ) -> None:
        self.decoder = decoder
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

    # --- the path of one record ----------------------------------------------------------------

    def process(
        self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int
    ) -> list[Output]:
        try:
            record = self.decoder.decode(value)
        except Refused as refused:
            return [
                self._dead_letter(
                    Stage.decode if refused.reason is not Reason.contract_violation else Stage.validate,
                    refused.reason,
                    refused.message,
                    key,
                    value,
                    topic,
                    partition,
                    offset,
                )
            ]
        try:
            if isinstance(record, Feedback):
                return self._feedback(record, partition, offset)
            return self._event(record, partition, offset)
        except Exception as exc:  # a bug must not stop the worker: the record goes to the DLQ
            return [
                self._dead_letter(
                    Stage.enrich,
                    Reason.processing_error,
                    f"{type(exc).__name__}: {exc}",
                    key,
                    value,
                    topic,
                    partition,
                    offset,
                )
            ]

    def _event(self, event: OnFinishEvent, partition: int, offset: int) -> list[Output]:
        session_key = _session_key(event)
        session = self._session(session_key)
        event_id = str(event.event_id)
        first_offset = session.event_offsets.get(event_id)
        if first_offset is not None and first_offset != offset:
            self.counts.duplicates += 1
            return []
        now = self.clock()
        enriched = self.enricher.enrich(event, partition, offset, now)
        outputs = [Output(ENRICHED_EVENT, event.key.encode(), self.encode(ENRICHED_EVENT, enriched))]
        outputs += [self._alert(alert) for alert in event_alerts(self.rules, enriched)]

        before = session.state.snapshot(session_key, partition, now) if session.state.turns else None
        if session.state.apply_event(enriched, offset):
            session.event_offsets[event_id] = offset
            session.behaviours[event.request_id] = Behaviour.of(event)
            after = session.state.snapshot(session_key, partition, now)
            outputs.append(
                Output(SESSION_SNAPSHOT, session_key.encode(), self.encode(SESSION_SNAPSHOT, after))
            )
            outputs += [self._alert(alert) for alert in session_alerts(self.rules, before, after)]
            self.sessions.put(session_key, session.to_state(), partition)
        else:
            self.counts.replayed += 1

        watermark = self._watermark(partition)
        window_key = WindowKey.of(enriched)
        if watermark.is_closed(window_key.window_start):
            self.counts.late += 1  # still in the events table; its closed window is not reopened
        else:
            outputs += self._window(window_key, enriched, partition, offset, now)
        watermark.observe(event.finished_at)
        outputs += self._close_windows(partition, now)
        self.counts.processed += 1
        return outputs

    def _window(
        self, key: WindowKey, enriched: Any, partition: int, offset: int, now: datetime
    ) -> list[Output]:
        table_key = f"{partition}|{key.as_text()}"
        stored = self.windows.get(table_key)
        state = WindowState.from_state(stored) if stored is not None else WindowState()
        before = state.snapshot(key, partition, now) if state.events else None
        if not state.apply(enriched, offset):
            return []
        self.windows.put(table_key, state.to_state(), partition)
        self.dirty_windows.add(table_key)
        after = state.snapshot(key, partition, now)
        return [self._alert(alert) for alert in window_alerts(self.rules, before, after)]

    def _feedback(self, feedback: Feedback, partition: int, offset: int) -> list[Output]:
        self.counts.feedback += 1
        session_key = _session_key(feedback)
        session = self._session(session_key)
        behaviour = session.behaviours.get(feedback.request_id)
        quality = None
        if behaviour is not None:
            behaviour = merge_feedback(behaviour, feedback)
            session.behaviours[feedback.request_id] = behaviour
            quality = score_behaviour(behaviour, self.enricher.weights)
        if not session.state.apply_feedback(
            feedback.request_id,
            regenerated=feedback.regenerated,
            edited=feedback.edited,
            quality=quality,
            offset=offset,
        ):
            self.counts.replayed += 1
            return []
        self.sessions.put(session_key, session.to_state(), partition)
        if session.state.turns == 0:
            return []  # feedback about a call this worker has not seen (yet): nothing to show
        snapshot = session.state.snapshot(session_key, partition, self.clock())
        return [Output(SESSION_SNAPSHOT, session_key.encode(), self.encode(SESSION_SNAPSHOT, snapshot))]

    # --- windows over time ---------------------------------------------------------------------

    def _watermark(self, partition: int) -> Watermark:
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
        return watermark

    def _partition_windows(self, partition: int) -> set[str]:
        prefix = f"{partition}|"
        keys = self.windows.keys()  # a StateStore, not a dict
        return {k for k in keys if k.startswith(prefix) and k != _watermark_key(partition)}

    def _close_windows(self, partition: int, now: datetime) -> list[Output]:
        """Send the final snapshot of windows the watermark closed; drop them from state later.

        A closed window stays in the table for as long again as the allowed lateness (at least a
        minute): by the time its tombstone is written, its final snapshot has long been flushed by a
        commit, so a worker killed in between never leaves a window deleted but unreported.
        """
        watermark = self.watermarks[partition]
        # Windows only close when the watermark enters a new minute: most events need no check.
        assert watermark.max_event_time is not None
        boundary = window_start(watermark.max_event_time - self.allowed_lateness)
        if self.close_checked.get(partition) == boundary:
            return []
        self.close_checked[partition] = boundary
        candidates = self.dirty_windows | self._partition_windows(partition)
        outputs: list[Output | None] = []
        expired = []
        for table_key in candidates:
            if not table_key.startswith(f"{partition}|") or table_key == _watermark_key(partition):
                continue
            start = WindowKey.from_text(table_key.split("|", 1)[1]).window_start
            if watermark.is_closed(start) and table_key not in self.closed_windows:
                outputs.append(self._window_snapshot(table_key, now))
                self.closed_windows.add(table_key)
                self.dirty_windows.discard(table_key)
            if watermark.is_closed(start + self.retention):
                expired.append(table_key)
        if expired:
            # The watermark reaches the changelog before the windows leave it (a partition keeps order).
            assert watermark.max_event_time is not None
            self.windows.put(_watermark_key(partition), watermark.max_event_time.isoformat(), partition)
            for table_key in expired:
                self.dirty_windows.discard(table_key)
                self.closed_windows.discard(table_key)
                self.windows.delete(table_key, partition)
        return [o for o in outputs if o is not None]

    def dirty_snapshots(self) -> list[Output]:
        """Snapshots of the windows that changed since the last call (sent every few seconds)."""
        now = self.clock()
        outputs = [self._window_snapshot(k, now) for k in sorted(self.dirty_windows)]
        self.dirty_windows.clear()
        return [o for o in outputs if o is not None]

    def _window_snapshot(self, table_key: str, now: datetime) -> Output | None:
        stored = self.windows.get(table_key)
        if stored is None:
            return None
        partition, text = table_key.split("|", 1)
        key = WindowKey.from_text(text)
        snapshot = WindowState.from_state(stored).snapshot(key, int(partition), now)
        return Output(WINDOW_SNAPSHOT, snapshot.window_id.encode(), self.encode(WINDOW_SNAPSHOT, snapshot))

    # --- helpers -------------------------------------------------------------------------------

    def _session(self, session_key: str) -> _Session:
        stored = self.sessions.get(session_key)
        return _Session.from_state(stored) if stored is not None else _Session()

    def _alert(self, alert: Any) -> Output:
        return Output(ALERT, alert.alert_id.encode(), self.encode(ALERT, alert))

    def _dead_letter(
        self,
        stage: Stage,
        reason: Reason,
        message: str,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
    ) -> Output:
        self.counts.dead_lettered[reason.value] = self.counts.dead_lettered.get(reason.value, 0) + 1
        letter = DeadLetter(stage, reason, message, key, value, topic, partition, offset)
        return Output(None, key, value, letter.headers())


def _watermark_key(partition: int) -> str:
    return f"{partition}|watermark"


@dataclass
class _Session:
    """A session's state plus what deduplication and re-scoring need of its calls."""

    state: SessionState = field(default_factory=SessionState)
    event_offsets: dict[str, int] = field(default_factory=dict)  # event_id -> offset first seen
    behaviours: dict[str, Behaviour] = field(default_factory=dict)  # request_id -> quality inputs

    def to_state(self) -> dict[str, Any]:
        return {
            "session": self.state.to_state(),
            "events": self.event_offsets,
            "behaviours": {rid: _behaviour_state(b) for rid, b in self.behaviours.items()},
        }

    @classmethod
    def from_state(cls, stored: dict[str, Any]) -> _Session:
        return cls(
            state=SessionState.from_state(stored["session"]),
            event_offsets=dict(stored["events"]),
            behaviours={rid: _behaviour_from_state(b) for rid, b in stored["behaviours"].items()},
        )


def _behaviour_state(behaviour: Behaviour) -> dict[str, Any]:
    return {
        name: (value.isoformat() if isinstance(value, datetime) else getattr(value, "value", value))
        for name, value in behaviour.__dict__.items()
    }


def _behaviour_from_state(stored: dict[str, Any]) -> Behaviour:
    fields = dict(stored)
    for name, value in stored.items():
        if isinstance(value, str) and name.endswith("_at"):
            fields[name] = datetime.fromisoformat(value)
    return Behaviour(**fields)
