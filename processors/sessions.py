"""Gap-based sessions: the running state of one conversation, as pure state.

Events and later feedback of a session share a Kafka key (session_id), so one worker sees all of a
session. Like windows, a session state remembers the highest raw offset it applied (`version`) and
ignores replays, and its snapshots (latest wins, on the compacted `onfinish.sessions`) carry that
version. Each call's quality score and flags are kept per request, so feedback that arrives later
changes that call's contribution instead of adding a new one. A session is closed once the
partition's event time is more than the gap past its last call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from onfinish.processors.calls import EnrichedCall
from onfinish.schemas.models import SessionSnapshot, Status

DEFAULT_GAP = timedelta(minutes=30)


@dataclass
class CallRecord:
    """What a session remembers of one call: enough to re-score it and recount flags."""

    quality: float
    regenerated: bool
    edited: bool


@dataclass
class SessionState:
    version: int = -1
    user_id: str | None = None
    service: str = ""
    environment: str = ""
    first_at: datetime | None = None
    last_at: datetime | None = None
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0
    models: list[str] = field(default_factory=list)
    calls: dict[str, CallRecord] = field(default_factory=dict)
    closed: bool = False

    def apply_event(self, event: EnrichedCall, offset: int) -> bool:
        """Add one call read at `offset`; False (and no change) for an offset already applied."""
        if offset <= self.version:
            return False
        self.version = offset
        if self.first_at is None:
            self.user_id, self.service, self.environment = event.user_id, event.service, event.environment
        self.first_at = min(self.first_at or event.started_at, event.started_at)
        self.last_at = max(self.last_at or event.finished_at, event.finished_at)
        self.turns += 1
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        self.cached_tokens += event.cached_tokens
        self.reasoning_tokens += event.reasoning_tokens
        self.cost_usd += event.cost_usd
        self.errors += event.status is not Status.success
        if event.model_id not in self.models:
            self.models.append(event.model_id)
        self.calls[event.request_id] = CallRecord(event.quality_score, event.regenerated, event.edited)
        self.closed = False
        return True

    def apply_feedback(
        self, request_id: str, *, regenerated: bool, edited: bool, quality: float | None, offset: int
    ) -> bool:
        """A user's later reaction to one of the session's calls; unknown calls change nothing."""
        if offset <= self.version:
            return False
        self.version = offset
        call = self.calls.get(request_id)
        if call is None:
            return True
        call.regenerated = call.regenerated or regenerated
        call.edited = call.edited or edited
        if quality is not None:
            call.quality = quality
        return True

    def is_over(self, event_time: datetime, gap: timedelta = DEFAULT_GAP) -> bool:
        return self.last_at is not None and event_time - self.last_at > gap

    def datum(self, session_id: str, partition: int, emitted_at: datetime) -> dict[str, Any]:
        """The session's snapshot as an Avro datum of SessionSnapshot: what the worker encodes and sends."""
        assert self.first_at is not None and self.last_at is not None, "a session has at least one call"
        calls = self.calls.values()
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
            "regenerations": sum(c.regenerated for c in calls),
            "edits": sum(c.edited for c in calls),
            "models": list(self.models),
            "quality_mean": sum(c.quality for c in calls) / len(calls) if calls else 0.0,
            "closed": self.closed,
            "emitted_at": emitted_at,
        }

    def snapshot(self, session_id: str, partition: int, emitted_at: datetime) -> SessionSnapshot:
        """The snapshot as a validated contract record (the worker sends :meth:`datum` unvalidated)."""
        return SessionSnapshot.model_validate(self.datum(session_id, partition, emitted_at))

    def to_state(self) -> dict[str, Any]:
        """A compact, JSON-able form for the worker's table and its changelog."""
        return {
            "version": self.version,
            "user_id": self.user_id,
            "service": self.service,
            "environment": self.environment,
            "first_at": self.first_at.isoformat() if self.first_at else None,
            "last_at": self.last_at.isoformat() if self.last_at else None,
            "counts": [
                self.turns,
                self.prompt_tokens,
                self.completion_tokens,
                self.cached_tokens,
                self.reasoning_tokens,
                self.errors,
            ],
            "cost_usd": self.cost_usd,
            "models": self.models,
            "closed": self.closed,
            "calls": {rid: [c.quality, c.regenerated, c.edited] for rid, c in self.calls.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SessionState:
        turns, prompt, completion, cached, reasoning, errors = state["counts"]
        return cls(
            version=state["version"],
            user_id=state["user_id"],
            service=state["service"],
            environment=state["environment"],
            first_at=datetime.fromisoformat(state["first_at"]) if state["first_at"] else None,
            last_at=datetime.fromisoformat(state["last_at"]) if state["last_at"] else None,
            turns=turns,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            reasoning_tokens=reasoning,
            errors=errors,
            cost_usd=state["cost_usd"],
            models=list(state["models"]),
            closed=state["closed"],
            calls={rid: CallRecord(q, bool(r), bool(e)) for rid, (q, r, e) in state["calls"].items()},
        )
