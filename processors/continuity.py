"""Offset continuity of the raw topic: every record of a partition reaches the pipeline, in order.

onfinish.raw is written without transactions, so a partition's offsets are contiguous: a record
whose offset jumps ahead of the next one expected means records never reached the worker's stream
(a processor started while the registry was away once received offsets 195..329 and then 454..,
and the records between were lost). `Continuity` tells the worker, per record, whether to process
it, skip it, or skip it and read the partition again from the first missing offset; the worker
processes nothing past a hole until the records of the hole came, so state, which ignores offsets
older than what it applied, never jumps over them.

A partition revoked is forgotten: whatever its next assignment starts from (the committed offset,
which may replay records) is taken as it comes. Within one assignment, a record whose offset goes
back is one this worker took already and is skipped: the consumer read it twice, as when a worker
starting up seeks to the committed offsets while its fetcher still delivers what it fetched before
(processors/faust_overrides.py, `RecordBatches.clear`). Records skipped, for a hole or as repeats,
are never acknowledged by the skipping, so no commit passes a hole before its records were
processed.

The fault suite makes such a hole on purpose (tests/drills.py), so that a test proves the guard
against a real broker and Faust's consumer.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum


class Verdict(Enum):
    process = "process"
    skip = "skip"  # a record after a hole while the partition is read again, or one taken already
    rewind = "rewind"  # the first record after a hole: skip it and read again from `missing_from`


@dataclass
class Continuity:
    expected: dict[Hashable, int] = field(default_factory=dict)  # partition -> next offset
    rewinding: dict[Hashable, int] = field(default_factory=dict)  # partition -> first missing offset
    holes: int = 0
    repeats: int = 0  # records skipped because this assignment took them already

    def check(self, partition: Hashable, offset: int) -> Verdict:
        missing = self.rewinding.get(partition)
        if missing is not None:
            if offset != missing:
                return Verdict.skip
            del self.rewinding[partition]  # the hole's first record: the partition is whole again
        else:
            expected = self.expected.get(partition)
            if expected is not None and offset > expected:
                self.rewinding[partition] = expected
                self.holes += 1
                return Verdict.rewind
            if expected is not None and offset < expected:
                self.repeats += 1
                return Verdict.skip
        self.expected[partition] = offset + 1
        return Verdict.process

    def missing_from(self, partition: Hashable) -> int:
        return self.rewinding[partition]

    def forget(self, partitions: set[Hashable]) -> None:
        for partition in partitions:
            self.expected.pop(partition, None)
            self.rewinding.pop(partition, None)
