"""1-minute tumbling windows in event time: what is aggregated per window and dimension set.

Pure state, no Faust: the worker keeps one `WindowState` per (raw partition, `WindowKey`) in a
table and emits its snapshot. Two properties make the numbers trustworthy:
- Idempotence by offset: a state remembers the highest raw offset it applied (its `version`), and
  ignores any event at or below it. A worker that replays its partition after a crash, with some of
  its state already restored from the changelog, therefore never counts an event twice.
- Full-state snapshots with a deterministic identity (`window_id`: partition, window, dimensions)
  and the version: a re-emitted snapshot replaces the earlier one downstream instead of adding to it.
Events whose window already closed (older than the partition's watermark minus the allowed
lateness) are not aggregated; the worker counts them (they still reach the events table).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from onfinish.processors.calls import EnrichedCall
from onfinish.processors.histograms import Histogram
from onfinish.schemas.histogram_grid import DEFAULT_GRID
from onfinish.schemas.models import RoutingStrategy, Status, WindowSnapshot

WINDOW = timedelta(minutes=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def window_start(moment: datetime) -> datetime:
    """The start of the 1-minute window holding `moment`."""
    return _EPOCH + ((moment - _EPOCH) // WINDOW) * WINDOW


@dataclass(frozen=True, order=True)
class WindowKey:
    """A window and the dimension set it aggregates."""

    window_start: datetime
    provider: str
    model_id: str
    feature_id: str
    variant_id: str
    environment: str
    status: str

    @classmethod
    def of(cls, event: EnrichedCall) -> WindowKey:
        return cls(
            window_start=window_start(event.finished_at),
            provider=event.provider,
            model_id=event.model_id,
            feature_id=event.feature_id or "",
            variant_id=event.variant_id or "",
            environment=event.environment,
            status=event.status.value,
        )

    def window_id(self, partition: int) -> str:
        """Deterministic identity of this window's snapshot from one raw partition."""
        return hashlib.sha256(f"{partition}\x1f{self.as_text()}".encode()).hexdigest()[:32]

    def as_text(self) -> str:
        """A stable text form, for table keys."""
        return "\x1f".join(
            (
                self.window_start.isoformat(),
                self.provider,
                self.model_id,
                self.feature_id,
                self.variant_id,
                self.environment,
                self.status,
            )
        )

    @classmethod
    def from_text(cls, text: str) -> WindowKey:
        start, provider, model, feature, variant, environment, status = text.split("\x1f")
        return cls(datetime.fromisoformat(start), provider, model, feature, variant, environment, status)


@dataclass
class WindowState:
    """Running aggregates of one window for one dimension set on one raw partition."""

    version: int = -1  # highest raw offset applied
    events: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0
    fallbacks: int = 0
    tool_use: int = 0
    streamed: int = 0
    quality_sum: float = 0.0
    latency: Histogram = field(default_factory=lambda: Histogram(DEFAULT_GRID))
    ttft: Histogram = field(default_factory=lambda: Histogram(DEFAULT_GRID))

    def apply(self, event: EnrichedCall, offset: int) -> bool:
        """Add one event read at `offset`; False (and no change) when that offset was applied already."""
        if offset <= self.version:
            return False
        self.version = offset
        self.events += 1
        self.errors += event.status is not Status.success
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        self.cached_tokens += event.cached_tokens
        self.reasoning_tokens += event.reasoning_tokens
        self.cost_usd += event.cost_usd
        self.cache_hits += event.cache_hit
        self.fallbacks += event.routing_strategy is RoutingStrategy.fallback
        self.tool_use += event.tool_call_count > 0
        self.streamed += event.streamed
        self.quality_sum += event.quality_score
        self.latency.add(event.latency_ms)
        if event.ttft_ms is not None:
            self.ttft.add(event.ttft_ms)
        return True

    def datum(self, key: WindowKey, partition: int, emitted_at: datetime) -> dict[str, Any]:
        """The window's snapshot as an Avro datum of WindowSnapshot: what the worker encodes and sends."""
        latency_buckets, latency_counts = self.latency.to_sparse()
        ttft_buckets, ttft_counts = self.ttft.to_sparse()
        return {
            "window_id": key.window_id(partition),
            "version": max(self.version, 0),
            "raw_partition": partition,
            "window_start": key.window_start,
            "window_end": key.window_start + WINDOW,
            "provider": key.provider,
            "model_id": key.model_id,
            "feature_id": key.feature_id,
            "variant_id": key.variant_id,
            "environment": key.environment,
            "status": key.status,
            "events": self.events,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": round(self.cost_usd, 9),
            "cache_hits": self.cache_hits,
            "fallbacks": self.fallbacks,
            "tool_use": self.tool_use,
            "streamed": self.streamed,
            "quality_sum": self.quality_sum,
            "latency_count": self.latency.count,
            "latency_sum_ms": self.latency.sum,
            "latency_min_ms": self.latency.min,
            "latency_max_ms": self.latency.max,
            "latency_buckets": latency_buckets,
            "latency_counts": latency_counts,
            "ttft_count": self.ttft.count,
            "ttft_sum_ms": self.ttft.sum,
            "ttft_min_ms": self.ttft.min,
            "ttft_max_ms": self.ttft.max,
            "ttft_buckets": ttft_buckets,
            "ttft_counts": ttft_counts,
            "emitted_at": emitted_at,
        }

    def figures(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """The window's numbers as in its snapshot, without identity or bucket arrays: what window
        rules measure (the pipeline reads them twice per window and batch, so no hashing here);
        only `names` of them when given (the rules' metrics, and events and errors)."""
        if names is not None:
            return {name: self._figure(name) for name in names}
        figures = {name: getattr(self, name) for name in _SCALARS}
        for name in ("latency", "ttft"):
            histogram: Histogram = getattr(self, name)
            figures[f"{name}_count"] = histogram.count
            figures[f"{name}_sum_ms"] = histogram.sum
            figures[f"{name}_min_ms"] = histogram.min
            figures[f"{name}_max_ms"] = histogram.max
        figures["version"] = max(self.version, 0)
        figures["cost_usd"] = round(self.cost_usd, 9)
        return figures

    def _figure(self, name: str) -> Any:
        if name == "version":
            return max(self.version, 0)
        if name == "cost_usd":
            return round(self.cost_usd, 9)
        if name in _SCALARS:
            return getattr(self, name)
        histogram, _, measure = name.partition("_")
        if histogram in ("latency", "ttft"):
            figures: Histogram = getattr(self, histogram)
            return {
                "count": figures.count,
                "sum_ms": figures.sum,
                "min_ms": figures.min,
                "max_ms": figures.max,
            }.get(measure)
        return None

    def summary(self, key: WindowKey, partition: int) -> dict[str, Any]:
        """What an alert on this window names: its figures, the snapshot's identity and dimensions."""
        summary = self.figures()
        summary.update(
            window_id=key.window_id(partition),
            raw_partition=partition,
            window_start=key.window_start,
            provider=key.provider,
            model_id=key.model_id,
        )
        return summary

    def snapshot(self, key: WindowKey, partition: int, emitted_at: datetime) -> WindowSnapshot:
        """The snapshot as a validated contract record (the worker sends :meth:`datum` unvalidated)."""
        return WindowSnapshot.model_validate(self.datum(key, partition, emitted_at))

    def to_state(self) -> dict[str, Any]:
        """A compact, JSON-able form for the worker's table and its changelog."""
        state = {name: getattr(self, name) for name in _SCALARS}
        for name in ("latency", "ttft"):
            histogram: Histogram = getattr(self, name)
            indexes, counts = histogram.to_sparse()
            state[name] = [indexes, counts, histogram.sum, histogram.min, histogram.max]
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WindowState:
        window = cls(**{name: state[name] for name in _SCALARS})
        for name in ("latency", "ttft"):
            indexes, counts, total, low, high = state[name]
            setattr(
                window,
                name,
                Histogram.from_sparse(indexes, counts, DEFAULT_GRID, sum=total, min=low, max=high),
            )
        return window


_SCALARS = (
    "version",
    "events",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cache_hits",
    "fallbacks",
    "tool_use",
    "streamed",
    "quality_sum",
)


@dataclass
class Watermark:
    """Event-time progress of one partition, and which windows it has closed."""

    allowed_lateness: timedelta = timedelta(minutes=2)
    max_event_time: datetime | None = None

    def observe(self, moment: datetime) -> None:
        if self.max_event_time is None or moment > self.max_event_time:
            self.max_event_time = moment

    def is_closed(self, start: datetime) -> bool:
        """A window is closed once the partition's event time passed its end plus the allowed lateness."""
        if self.max_event_time is None:
            return False
        return start + WINDOW + self.allowed_lateness <= self.max_event_time
