"""Gap-based sessions: the running state of one conversation, as compact pure state.

Events and later feedback of a session share a Kafka key (session_id), so one worker sees all of a
session. Like windows, a session state remembers the highest raw offset it applied (`version`) and
ignores replays, and its snapshots (latest wins, on the compacted `onfinish.sessions`) carry that
version. Each call's quality score and flags are kept per request, so feedback that arrives later
changes that call's contribution instead of adding a new one. A session is over once the
partition's event time is more than the gap past its last call (the pipeline closes it then, and
drops it from memory and the changelog a little later: processors/pipeline.py).

What a session keeps of its calls is packed, because a worker holds every session of the last
half hour (the gap) and more: at 1,000 events/s about 300,000 of them. The first version kept a
dict of event ids, a dict of per-request records and a dict of quality inputs, each entry an
object: 3,392 bytes for a session of one call. Here (docs/decisions/0016):

- `events`: one 24-byte record per event applied, the event id's 16 bytes (a UUID, exactly: no
  hash, so two events never share a key) and the raw offset it was first read at. Deduplication
  looks an id up with `bytes.find`, in C.
- `calls`: one 42-byte record per request (`_CALL`): an 8-byte keyed hash of the request id
  (BLAKE2b; feedback finds its call by it), the call's current quality score, and what re-scoring
  needs: latency, prompt and completion tokens, the rating and when it was given, and flags
  (regenerated, edited, success, truncated). Two request ids of one session share a hash with
  probability about n^2 / 2^65 for n calls: 10^-13 for a session of a thousand calls.
- Scalars in slots, and the running sums a snapshot needs (regenerations, edits, the quality
  sum), so a snapshot costs the same for a session of one call and of a thousand.

The quality sum is exactly the first version's `sum()` over its calls in insertion order: kept by
adding each new call's score, and summed again in order from the records when feedback or a
repeated request id changes a score. Snapshots are therefore byte-identical to the first
version's, and the same after a restore as without one.

The changelog form (`to_state`) is a JSON list tagged with its format (2), the records as base64;
`from_state` reads it and the first version's dict, so a running deployment upgrades in place.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

from onfinish.processors.calls import EnrichedCall
from onfinish.processors.quality import TRUNCATION_FINISH_REASONS, Behaviour
from onfinish.schemas.models import MAX_TOKENS, SessionSnapshot, Status

DEFAULT_GAP = timedelta(minutes=30)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

# An event: its id's 16 bytes and the raw offset it was first read at.
_EVENT: Final = struct.Struct("<16sq")
# A call (request): request key, quality, latency_ms, prompt and completion tokens, rated_at in
# µs since the epoch, rating, flags. Tokens fit 32 bits: the contract caps them at MAX_TOKENS.
_CALL: Final = struct.Struct("<8sddIIqbB")
_QUALITY_AT: Final = 8  # where the quality score sits in a call record
_NO_RATING: Final = 127
_NO_TIME: Final = -(2**63)
_REGENERATED, _EDITED, _SUCCESS, _TRUNCATED, _SCORABLE = 1, 2, 4, 8, 16
assert MAX_TOKENS < 2**32, "call records keep token counts in 32 bits"

STATE_FORMAT: Final = 2
# The changelog form's fields, in order (format 2).
STATE_FIELDS: Final = (
    "format",
    "partition",
    "version",
    "user_id",
    "service",
    "environment",
    "first_at_us",
    "last_at_us",
    "turns",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "errors",
    "regenerations",
    "edits",
    "cost_usd",
    "quality_sum",
    "models",
    "closed",
    "events",
    "calls",
)


def event_key(event_id: str | UUID) -> bytes:
    """The 16 bytes an event id is kept as: the UUID's own."""
    if isinstance(event_id, UUID):
        return event_id.bytes
    try:
        key = bytes.fromhex(event_id.replace("-", ""))
    except ValueError:
        key = b""
    if len(key) != 16:  # not a UUID's hex (the contract makes it one): a digest of the same size
        key = hashlib.blake2b(event_id.encode(), digest_size=16, person=b"onfinish.event").digest()
    return key


def request_key(request_id: str) -> bytes:
    """The 8 bytes a request id is kept as: a keyed hash (the key is fixed: it must outlive restarts)."""
    return hashlib.blake2b(request_id.encode(), digest_size=8, person=b"onfinish.request").digest()


def is_truncated(finish_reason: str | None) -> bool:
    """What the quality score reads of a finish reason (quality.token_efficiency_signal)."""
    return finish_reason is not None and finish_reason.lower() in TRUNCATION_FINISH_REASONS


# The model lists sessions use, each kept once: most sessions use one of a few models, and a tuple
# of its own cost each of them 48 bytes. At most _MODEL_LISTS_KEPT are shared (model ids come from
# senders: unknown ones must not grow this without bound); lists beyond it are kept per session.
_MODEL_LISTS: dict[tuple[str, ...], tuple[str, ...]] = {}
_MODEL_LISTS_KEPT: Final = 4096


def _models(models: tuple[str, ...]) -> tuple[str, ...]:
    """The one shared copy of a session's model list, while there are few of them."""
    shared = _MODEL_LISTS.get(models)
    if shared is None:
        if len(_MODEL_LISTS) >= _MODEL_LISTS_KEPT:
            return models
        shared = _MODEL_LISTS[models] = tuple(sys.intern(model) for model in models)
    return shared


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _find(records: bytes, key: bytes, size: int) -> int:
    """The index of the record of `records` (each `size` bytes) that starts with `key`, or -1."""
    at = records.find(key)
    while at != -1 and at % size:  # a match across records: look further
        at = records.find(key, at + 1)
    return -1 if at == -1 else at // size


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call as a session keeps it (unpacked, for reading)."""

    quality: float
    regenerated: bool
    edited: bool
    success: bool
    truncated: bool
    scorable: bool  # its quality inputs are known (always, but for calls restored from a format
    # that lacked them)
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    rating: int | None
    rated_at: datetime | None

    def behaviour(self) -> Behaviour:
        """The call's quality inputs, as quality.py scores them: the status and finish reason
        stand for what the score reads of them (success or not, truncated or not)."""
        return Behaviour(
            status=Status.success if self.success else Status.error,
            regenerated=self.regenerated,
            edited=self.edited,
            latency_ms=self.latency_ms,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason="length" if self.truncated else None,
            rating=self.rating,
            rated_at=self.rated_at,
        )


def _pack_call(
    key: bytes,
    quality: float,
    *,
    regenerated: bool,
    edited: bool,
    success: bool,
    truncated: bool,
    scorable: bool,
    latency_ms: float,
    prompt_tokens: int,
    completion_tokens: int,
    rating: int | None,
    rated_at_us: int | None,
) -> bytes:
    flags = (
        regenerated * _REGENERATED
        | edited * _EDITED
        | success * _SUCCESS
        | truncated * _TRUNCATED
        | scorable * _SCORABLE
    )
    return _CALL.pack(
        key,
        quality,
        latency_ms,
        prompt_tokens,
        completion_tokens,
        _NO_TIME if rated_at_us is None else rated_at_us,
        _NO_RATING if rating is None else rating,
        flags,
    )


class SessionState:
    """One session: running totals, and its events and calls packed (see the module docstring)."""

    __slots__ = (
        "cached_tokens",
        "calls",
        "closed",
        "completion_tokens",
        "cost_usd",
        "edits",
        "environment",
        "errors",
        "events",
        "first_at",
        "last_at",
        "models",
        "prompt_tokens",
        "quality_sum",
        "reasoning_tokens",
        "regenerations",
        "service",
        "turns",
        "user_id",
        "version",
    )

    def __init__(self) -> None:
        self.version = -1
        self.user_id: str | None = None
        self.service = ""
        self.environment = ""
        self.first_at: datetime | None = None
        self.last_at: datetime | None = None
        self.turns = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        self.cost_usd = 0.0
        self.errors = 0
        self.regenerations = 0
        self.edits = 0
        self.quality_sum = 0.0
        self.models: tuple[str, ...] = ()
        self.closed = False
        self.events = b""  # _EVENT records
        self.calls = b""  # _CALL records

    # --- events -------------------------------------------------------------------------------

    def first_offset(self, event_id: bytes) -> int | None:
        """The raw offset the event (by `event_key`) was first applied at; None if never."""
        index = _find(self.events, event_id, _EVENT.size)
        if index < 0:
            return None
        offset: int = _EVENT.unpack_from(self.events, index * _EVENT.size)[1]
        return offset

    def apply_event(
        self,
        event: EnrichedCall,
        offset: int,
        *,
        event_id: bytes | None = None,
        finish_reason: str | None = None,
        rating: int | None = None,
    ) -> bool:
        """Add one call read at `offset`; False (and no change) for an offset already applied.

        `event_id` (an `event_key`), `finish_reason` (as sent, before redaction) and `rating` are
        the event's; left out, they are read from `event` itself (an EnrichedEvent).
        """
        if offset <= self.version:
            return False
        if event_id is None:
            source: Any = event
            event_id = event_key(source.event_id)
            finish_reason, rating = source.finish_reason, source.rating
        self.version = offset
        if self.first_at is None:
            user_id = event.user_id
            self.user_id = None if user_id is None else sys.intern(user_id)
            self.service = sys.intern(event.service)
            self.environment = sys.intern(event.environment)
        started, finished = event.started_at, event.finished_at
        if self.first_at is None or started < self.first_at:
            self.first_at = started
        if self.last_at is None or finished > self.last_at:
            self.last_at = finished
        self.turns += 1
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        self.cached_tokens += event.cached_tokens
        self.reasoning_tokens += event.reasoning_tokens
        self.cost_usd += event.cost_usd
        success = event.status is Status.success
        self.errors += not success
        model_id = event.model_id
        if model_id not in self.models:
            self.models = _models((*self.models, model_id))
        self.events += _EVENT.pack(event_id, offset)

        regenerated, edited, quality = event.regenerated, event.edited, event.quality_score
        key = request_key(event.request_id)
        record = _pack_call(
            key,
            quality,
            regenerated=regenerated,
            edited=edited,
            success=success,
            truncated=is_truncated(finish_reason),
            scorable=True,
            latency_ms=event.latency_ms,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            rating=rating,
            rated_at_us=None if rating is None else _micros(finished),
        )
        index = _find(self.calls, key, _CALL.size)
        if index < 0:
            self.calls += record
            self.regenerations += regenerated
            self.edits += edited
            self.quality_sum += quality
        else:  # the request again (another event id): its record is replaced where it stands
            old = self.call(index)
            self._replace_call(index, record)
            self.regenerations += regenerated - old.regenerated
            self.edits += edited - old.edited
            self._sum_quality()
        self.closed = False
        return True

    # --- calls --------------------------------------------------------------------------------

    @property
    def call_count(self) -> int:
        return len(self.calls) // _CALL.size

    def call_index(self, request_id: str) -> int | None:
        index = _find(self.calls, request_key(request_id), _CALL.size)
        return None if index < 0 else index

    def call(self, index: int) -> CallRecord:
        _, quality, latency, prompt, completion, rated_at, rating, flags = _CALL.unpack_from(
            self.calls, index * _CALL.size
        )
        return CallRecord(
            quality=quality,
            regenerated=bool(flags & _REGENERATED),
            edited=bool(flags & _EDITED),
            success=bool(flags & _SUCCESS),
            truncated=bool(flags & _TRUNCATED),
            scorable=bool(flags & _SCORABLE),
            latency_ms=latency,
            prompt_tokens=prompt,
            completion_tokens=completion,
            rating=None if rating == _NO_RATING else rating,
            rated_at=None if rated_at == _NO_TIME else _moment(rated_at),
        )

    def _replace_call(self, index: int, record: bytes) -> None:
        at = index * _CALL.size
        self.calls = self.calls[:at] + record + self.calls[at + _CALL.size :]

    def _sum_quality(self) -> None:
        # sum() in insertion order, as the first version summed its calls: the same float.
        size = _CALL.size
        calls = self.calls
        self.quality_sum = sum(
            (_QUALITY.unpack_from(calls, at + _QUALITY_AT)[0] for at in range(0, len(calls), size)), 0.0
        )

    def apply_feedback(
        self,
        request_id: str,
        *,
        regenerated: bool,
        edited: bool,
        quality: float | None,
        offset: int,
        behaviour: Behaviour | None = None,
    ) -> bool:
        """A user's later reaction to one of the session's calls; unknown calls change nothing.

        `quality` is the call's new score (None: unchanged), and `behaviour` its quality inputs
        once the feedback is merged in (quality.merge_feedback): the rating it keeps.
        """
        if offset <= self.version:
            return False
        self.version = offset
        index = self.call_index(request_id)
        if index is None:
            return True
        old = self.call(index)
        now_regenerated = old.regenerated or regenerated
        now_edited = old.edited or edited
        rating, rated_at = (
            (old.rating, old.rated_at) if behaviour is None else (behaviour.rating, behaviour.rated_at)
        )
        record = _pack_call(
            request_key(request_id),
            old.quality if quality is None else quality,
            regenerated=now_regenerated,
            edited=now_edited,
            success=old.success,
            truncated=old.truncated,
            scorable=old.scorable,
            latency_ms=old.latency_ms,
            prompt_tokens=old.prompt_tokens,
            completion_tokens=old.completion_tokens,
            rating=rating,
            rated_at_us=None if rated_at is None else _micros(rated_at),
        )
        self._replace_call(index, record)
        self.regenerations += now_regenerated - old.regenerated
        self.edits += now_edited - old.edited
        if quality is not None and quality != old.quality:
            self._sum_quality()
        return True

    # --- what it shows ------------------------------------------------------------------------

    def is_over(self, event_time: datetime, gap: timedelta = DEFAULT_GAP) -> bool:
        return self.last_at is not None and event_time - self.last_at > gap

    def datum(
        self, session_id: str, partition: int, emitted_at: datetime, *, closed: bool | None = None
    ) -> dict[str, Any]:
        """The session's snapshot as an Avro datum of SessionSnapshot: what the worker encodes and
        sends (`closed` overrides the state's own flag: the snapshot that closes it)."""
        assert self.first_at is not None and self.last_at is not None, "a session has at least one call"
        calls = self.call_count
        return {
            "session_id": session_id,
            "version": max(self.version, 0),
            "raw_partition": partition,
            "user_id": self.user_id,
            "service": self.service,
            "environment": self.environment,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "duration_ms": (self.last_at - self.first_at).total_seconds() * 1000,
            "turns": self.turns,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": round(self.cost_usd, 9),
            "errors": self.errors,
            "regenerations": self.regenerations,
            "edits": self.edits,
            "models": list(self.models),
            "quality_mean": self.quality_sum / calls if calls else 0.0,
            "closed": self.closed if closed is None else closed,
            "emitted_at": emitted_at,
        }

    def figures(self, names: Sequence[str]) -> dict[str, Any]:
        """Some fields of the snapshot, as `datum` gives them: what session rules read of a state
        before a batch changes it (a whole datum each time cost a tenth of the state stages)."""
        if not self.turns:
            return {}
        figures: dict[str, Any] = {}
        for name in names:
            if name == "cost_usd":
                figures[name] = round(self.cost_usd, 9)
            elif name == "version":
                figures[name] = max(self.version, 0)
            elif name == "duration_ms":
                assert self.first_at is not None and self.last_at is not None
                figures[name] = (self.last_at - self.first_at).total_seconds() * 1000
            elif name == "quality_mean":
                calls = self.call_count
                figures[name] = self.quality_sum / calls if calls else 0.0
            else:
                figures[name] = getattr(self, name, None)
        return figures

    def snapshot(self, session_id: str, partition: int, emitted_at: datetime) -> SessionSnapshot:
        """The snapshot as a validated contract record (the worker sends :meth:`datum` unvalidated)."""
        return SessionSnapshot.model_validate(self.datum(session_id, partition, emitted_at))

    # --- the changelog ------------------------------------------------------------------------

    def to_state(self, partition: int) -> list[Any]:
        """The changelog form (format 2, `STATE_FIELDS`): a JSON list, the records in base64."""
        return [
            STATE_FORMAT,
            partition,
            self.version,
            self.user_id,
            self.service,
            self.environment,
            None if self.first_at is None else _micros(self.first_at),
            None if self.last_at is None else _micros(self.last_at),
            self.turns,
            self.prompt_tokens,
            self.completion_tokens,
            self.cached_tokens,
            self.reasoning_tokens,
            self.errors,
            self.regenerations,
            self.edits,
            self.cost_usd,
            self.quality_sum,
            list(self.models),
            self.closed,
            base64.b64encode(self.events).decode("ascii"),
            base64.b64encode(self.calls).decode("ascii"),
        ]

    @classmethod
    def from_state(cls, stored: Sequence[Any] | Mapping[str, Any]) -> SessionState:
        """A session from its changelog form: format 2, or the first version's dict."""
        if isinstance(stored, Mapping):
            return cls._from_first_format(stored)
        (
            form,
            _partition,
            version,
            user_id,
            service,
            environment,
            first_at,
            last_at,
            turns,
            prompt,
            completion,
            cached,
            reasoning,
            errors,
            regenerations,
            edits,
            cost,
            quality_sum,
            models,
            closed,
            events,
            calls,
        ) = stored
        if form != STATE_FORMAT:
            raise ValueError(f"session state of an unknown format {form!r}")
        state = cls()
        state.version = version
        state.user_id = None if user_id is None else sys.intern(user_id)
        state.service, state.environment = sys.intern(service), sys.intern(environment)
        state.first_at = None if first_at is None else _moment(first_at)
        state.last_at = None if last_at is None else _moment(last_at)
        state.turns, state.prompt_tokens, state.completion_tokens = turns, prompt, completion
        state.cached_tokens, state.reasoning_tokens, state.errors = cached, reasoning, errors
        state.regenerations, state.edits = regenerations, edits
        state.cost_usd, state.quality_sum = cost, quality_sum
        state.models = _models(tuple(models))
        state.closed = closed
        state.events = base64.b64decode(events)
        state.calls = base64.b64decode(calls)
        return state

    @classmethod
    def _from_first_format(cls, stored: Mapping[str, Any]) -> SessionState:
        """The first version's form: {"session": {...}, "events": {event_id: offset},
        "behaviours": {request_id: {...}}}, or its bare session dict."""
        session = stored.get("session", stored)
        state = cls()
        turns, prompt, completion, cached, reasoning, errors = session["counts"]
        state.version = session["version"]
        user_id = session["user_id"]
        state.user_id = None if user_id is None else sys.intern(user_id)
        state.service = sys.intern(session["service"])
        state.environment = sys.intern(session["environment"])
        first_at, last_at = session["first_at"], session["last_at"]
        state.first_at = datetime.fromisoformat(first_at) if first_at else None
        state.last_at = datetime.fromisoformat(last_at) if last_at else None
        state.turns, state.prompt_tokens, state.completion_tokens = turns, prompt, completion
        state.cached_tokens, state.reasoning_tokens, state.errors = cached, reasoning, errors
        state.cost_usd = session["cost_usd"]
        state.models = _models(tuple(session["models"]))
        state.closed = session["closed"]
        state.events = b"".join(
            _EVENT.pack(event_key(event_id), offset) for event_id, offset in stored.get("events", {}).items()
        )
        behaviours = stored.get("behaviours", {})
        records = []
        for request_id, (quality, regenerated, edited) in session["calls"].items():
            behaviour = behaviours.get(request_id)
            regenerated, edited = bool(regenerated), bool(edited)
            state.regenerations += regenerated
            state.edits += edited
            if behaviour is None:
                records.append(
                    _pack_call(
                        request_key(request_id),
                        quality,
                        regenerated=regenerated,
                        edited=edited,
                        success=False,
                        truncated=False,
                        scorable=False,
                        latency_ms=0.0,
                        prompt_tokens=0,
                        completion_tokens=0,
                        rating=None,
                        rated_at_us=None,
                    )
                )
                continue
            rated_at = behaviour.get("rated_at")
            records.append(
                _pack_call(
                    request_key(request_id),
                    quality,
                    regenerated=regenerated,
                    edited=edited,
                    success=behaviour["status"] == Status.success.value,
                    truncated=is_truncated(behaviour["finish_reason"]),
                    scorable=True,
                    latency_ms=behaviour["latency_ms"],
                    prompt_tokens=behaviour["prompt_tokens"],
                    completion_tokens=behaviour["completion_tokens"],
                    rating=behaviour["rating"],
                    rated_at_us=None if not rated_at else _micros(datetime.fromisoformat(rated_at)),
                )
            )
        state.calls = b"".join(records)
        state._sum_quality()
        return state


_QUALITY: Final = struct.Struct("<d")


def stored_last_at(stored: Sequence[Any] | Mapping[str, Any]) -> datetime | None:
    """The last call's finish of a session in its changelog form, without restoring it."""
    if isinstance(stored, Mapping):
        last_at = stored.get("session", stored).get("last_at")
        return datetime.fromisoformat(last_at) if last_at else None
    return None if stored[7] is None else _moment(stored[7])


def stored_partition(stored: Sequence[Any] | Mapping[str, Any]) -> int | None:
    """The raw partition of a session in its changelog form; None in the first format (it had none)."""
    return None if isinstance(stored, Mapping) else int(stored[1])


def stored_closed(stored: Sequence[Any] | Mapping[str, Any]) -> bool:
    if isinstance(stored, Mapping):
        return bool(stored.get("session", stored).get("closed"))
    return bool(stored[19])
