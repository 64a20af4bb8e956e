"""Exponential back-off, the one retry mechanism of onfinish's loops.

Every loop that waits out an outage uses it: the sink's connect, insert and commit loops, the
processors' wait for the schema registry, and the SDK's drain thread. It is a small class rather
than tenacity because the loops wait in three ways tenacity's blocking `Retrying` does not cover
as one: the SDK's drain thread must never sleep (it backs off by a deadline and goes on draining the
hand-off queue), the workers' waits must end at once when they are asked to stop (an Event), and
the processors wait in the event loop (asyncio.sleep).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Backoff:
    """Delays that start at `initial_s` and double after each failure up to `max_s`; a success resets
    them. `failed()` gives the delay to wait now; `ready()` says whether a deadline-based waiter may
    try again."""

    initial_s: float
    max_s: float
    factor: float = 2.0
    _next_s: float = field(init=False)
    _until: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"back-off needs 0 < initial ({self.initial_s}) <= max ({self.max_s})")
        self._next_s = self.initial_s

    def failed(self) -> float:
        """The delay to wait before the next try; the one after it is longer, up to the maximum."""
        delay = self._next_s
        self._next_s = min(self._next_s * self.factor, self.max_s)
        self._until = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self._next_s = self.initial_s
        self._until = 0.0

    def ready(self) -> bool:
        """Whether the delay of the last failure is over (for loops that must not sleep)."""
        return time.monotonic() >= self._until


class Stopped(Exception):
    """The stop event was set while a step was being retried."""


def retry_until_stopped(
    step: Callable[[], T],
    *,
    backoff: Backoff,
    stop: threading.Event,
    on_failure: Callable[[Exception, float], None],
    retry_on: tuple[type[Exception], ...] = (Exception,),
) -> T:
    """`step()`'s result once it succeeds, retrying failures of `retry_on` with `backoff`.

    `on_failure(error, delay)` is called before each wait (to log and count; it may re-raise to
    give up). Raises Stopped when `stop` is set during a wait.
    """
    while True:
        try:
            result = step()
        except retry_on as exc:
            delay = backoff.failed()
            on_failure(exc, delay)
            if stop.wait(delay):
                raise Stopped from exc
            continue
        backoff.succeeded()
        return result
