"""Fault drills, installed into a worker process by the tests alone: `python -m tests.drills KIND ...`.

Production code carries no drill and reads no drill setting. The fault suite starts a worker through
this launcher instead of its own entry point; the launcher patches the drill in (from the
ONFINISH_DRILL_* variables the test sets), then runs the worker's real `main`:

- `processor`: the hole drill. Once ONFINISH_DRILL_HOLE_AFTER_RECORDS raw records have reached the
  worker, the next ONFINISH_DRILL_HOLE_RECORDS offsets of the partition of the record that comes
  next are passed over, once, as if they never reached its stream, as Faust was seen to do
  (processors/continuity.py); the continuity guard must find the hole and read them again.
- `processor`, also: the slow-start drill. The first ONFINISH_DRILL_SLOW_START_RECORDS raw records
  reach the worker's batches ONFINISH_DRILL_SLOW_START_MS apart, and the worker's recovery waits
  for the first of them (5 s at most) before it seeks the stream partitions to their committed
  offsets, so the fetcher is still delivering its first fetch when the seek is made and the flow
  resumed (processors/faust_overrides.py, `RecordBatches.clear`), as it was once seen to: the
  records it delivered around the seek must be processed, once.
- `sink`: once a family has stored ONFINISH_DRILL_SINK_EXIT_AFTER_BATCHES batches in ClickHouse,
  the process exits hard (code 86) before committing their offsets: the restart must re-insert the
  batch, and ClickHouse must drop it by its insert token.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("onfinish.drills")
SINK_EXIT_CODE = 86


@dataclass
class HoleDrill:
    """Once `after` records were seen, the next `size` offsets of the partition of the record that
    came next are passed over, once, as if they never reached the stream."""

    after: int
    size: int
    seen: int = 0
    hole: tuple[Hashable, int] | None = None  # partition, first offset passed over
    finished: bool = False

    def passes_over(self, partition: Hashable, offset: int) -> bool:
        if self.after <= 0 or self.finished:
            return False
        if self.hole is None:
            self.seen += 1
            if self.seen <= self.after:
                return False
            self.hole = (partition, offset)
        hole_partition, first = self.hole
        if partition != hole_partition:
            return False
        if offset >= first + self.size:
            self.finished = True  # the record after the hole: from now on every record passes
            return False
        return offset >= first


def install_hole(drill: HoleDrill) -> None:
    """Records of the raw topic that the drill passes over are skipped as a hole's records are: the
    worker's continuity guard is asked about them first, and for these it answers `skip`, so they are
    never processed nor acknowledged, and the guard only learns of the hole from the record after it.

    (Dropping them one level earlier, in the consumer's delivery callback, made the worker enrich
    most of its stream twice in a trial: left for whoever chases the offset hole of decision 0007.)
    """
    from onfinish.processors.continuity import Continuity, Verdict

    original_check = Continuity.check

    def check(self: Continuity, partition: Hashable, offset: int) -> Verdict:
        if drill.passes_over(partition, offset):
            return Verdict.skip  # not a rewind: nothing asks the guard to seek
        return original_check(self, partition, offset)

    Continuity.check = check  # type: ignore[method-assign]


def install_slow_start(records: int, delay_s: float) -> None:
    """The first `records` raw records wait `delay_s` each before they reach the worker's batches;
    the recovery's seek to the committed offsets waits until the first of them is on its way."""
    import asyncio
    import contextlib

    from faust.transport.consumer import Consumer

    from onfinish.processors.faust_overrides import DirectDeliveryConsumer, RecordBatches

    original_put, original_seek = RecordBatches.put, Consumer.perform_seek
    left = records
    delivering = asyncio.Event()

    async def put(self: RecordBatches, message: Any) -> None:
        nonlocal left
        if left > 0:
            left -= 1
            delivering.set()
            await asyncio.sleep(delay_s)
        await original_put(self, message)

    async def perform_seek(self: Consumer) -> None:
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(delivering.wait(), 5)
        await original_seek(self)

    RecordBatches.put = put  # type: ignore[method-assign]
    DirectDeliveryConsumer.perform_seek = perform_seek  # type: ignore[method-assign]


def install_sink_exit(after_batches: int) -> None:
    """The sink process exits once a family stored `after_batches` batches, before their commit."""
    from onfinish.sinks.worker import FamilySink

    original_commit = FamilySink._commit
    stored: dict[int, int] = {}

    def _commit(self: Any, inflight: Any) -> None:
        inflight.future.result()  # stored in ClickHouse (or raises, as the real commit would)
        stored[id(self)] = stored.get(id(self), 0) + 1
        if stored[id(self)] == after_batches:
            log.warning("fault drill: exiting between insert and commit")
            logging.shutdown()
            os._exit(SINK_EXIT_CODE)
        original_commit(self, inflight)

    FamilySink._commit = _commit  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    kind, rest = argv[0], argv[1:]
    if kind == "processor":
        install_hole(
            HoleDrill(
                int(os.environ.get("ONFINISH_DRILL_HOLE_AFTER_RECORDS", "0")),
                int(os.environ.get("ONFINISH_DRILL_HOLE_RECORDS", "100")),
            )
        )
        install_slow_start(
            int(os.environ.get("ONFINISH_DRILL_SLOW_START_RECORDS", "0")),
            int(os.environ.get("ONFINISH_DRILL_SLOW_START_MS", "0")) / 1000,
        )
        from onfinish.processors.worker import main as run_processor

        sys.argv = [sys.argv[0], *rest]  # Faust's command line: `worker`
        run_processor()
    elif kind == "sink":
        install_sink_exit(int(os.environ.get("ONFINISH_DRILL_SINK_EXIT_AFTER_BATCHES", "0")))
        from onfinish.cli import main as run_cli

        sys.argv = [sys.argv[0], "sink", *rest]
        run_cli()
    else:
        raise SystemExit(f"unknown drill {kind!r}: processor or sink")


if __name__ == "__main__":
    main(sys.argv[1:])
