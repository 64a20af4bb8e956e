"""Timing an LLM call from the service's side: latency, time to first token and chunk counts.

    tracker = CallTracker()
    for chunk in tracker.stream(client.chat(..., stream=True)):
        ...
    event = OnFinishEvent(**tracker.timing(), ...)

A monotonic clock measures durations; wall-clock timestamps are taken once at start and finish.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")


class CallTracker:
    """Measures one call; `stream()` / `astream()` wrap a streamed response to count its chunks."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.started_at = datetime.now(UTC)
        self._start = clock()
        self._first_chunk: float | None = None
        self._end: float | None = None
        self.chunks = 0

    def chunk(self) -> None:
        """Record one chunk of a streamed response (the first one fixes the time to first token)."""
        if self._first_chunk is None:
            self._first_chunk = self._clock()
        self.chunks += 1

    def finish(self) -> None:
        if self._end is None:
            self._end = self._clock()

    def stream(self, chunks: Iterable[T]) -> Iterator[T]:
        try:
            for item in chunks:
                self.chunk()
                yield item
        finally:
            self.finish()

    async def astream(self, chunks: AsyncIterable[T]) -> AsyncIterator[T]:
        try:
            async for item in chunks:
                self.chunk()
                yield item
        finally:
            self.finish()

    def timing(self) -> dict[str, Any]:
        """started_at, finished_at, latency_ms, ttft_ms, streamed and stream_chunks for OnFinishEvent."""
        self.finish()
        assert self._end is not None
        latency_ms = (self._end - self._start) * 1000
        streamed = self.chunks > 0
        return {
            "started_at": self.started_at,
            "finished_at": self.started_at + timedelta(milliseconds=latency_ms),
            "latency_ms": latency_ms,
            "ttft_ms": (self._first_chunk - self._start) * 1000 if self._first_chunk is not None else None,
            "streamed": streamed,
            "stream_chunks": self.chunks,
        }
