"""What onfinish's long-running workers set up in their own process before they start."""

from __future__ import annotations

import faulthandler
import gc
import signal
from typing import Any

from pydantic import Field, PositiveInt

GcThresholds = tuple[PositiveInt, PositiveInt, PositiveInt]


def gc_thresholds_field(measured: str) -> Any:
    """The `gc_thresholds` setting of a worker kind; `measured` says what Python's default cost it."""
    return Field(
        default=(50_000, 20, 100),
        description=(
            "The worker's garbage-collector thresholds (gc.set_threshold), set after start-up with "
            f"what was loaded by then frozen; Python's (700, 10, 10) {measured}. JSON, e.g. "
            "[50000, 20, 100]."
        ),
    )


def tune_gc(thresholds: tuple[int, int, int]) -> None:
    """Collect garbage less often: workers allocate a few container objects per record (messages,
    decoded records, closures, tuples) and keep a batch of them alive, so Python's default of a
    young collection every 700 allocations, and full collections that walk every live object, took
    a tenth of a worker's time (py-spy). What start-up loaded (modules, the app, catalogs) is frozen
    first, so full collections no longer walk it. Reference counting frees almost everything
    anyway; only cycles wait for a collection, and they are few and small here."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


def dump_stacks_on_signal(signum: int = signal.SIGUSR1) -> None:
    """`kill -USR1 <pid>` writes the stack of every thread of the worker to its stderr (its log),
    and the worker goes on: what a worker that stopped making progress waits on, seen without
    stopping it. faulthandler (the standard library) does it from the signal handler itself, so it
    answers even when every Python thread is blocked in a C call (a Kafka client, a ClickHouse one)."""
    faulthandler.register(signum, all_threads=True, chain=False)


def prepare_worker(gc_thresholds: tuple[int, int, int]) -> None:
    """What every long-running worker does once it has started up, before its loop."""
    tune_gc(gc_thresholds)
    dump_stacks_on_signal()
