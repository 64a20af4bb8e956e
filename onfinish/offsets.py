"""Offsets a Kafka consumer is done with, committed without holding its loop: the one way onfinish's
librdkafka consumers commit (the sink's table families, the Collector-topic worker).

A worker hands over the next offsets of what it is done with (ClickHouse holds it, or Kafka
acknowledged what was made of it) and they are committed synchronously, once. A commit Kafka
refuses is *not* retried on the spot: its offsets wait, merged with those handed over after them
(offsets only move forward), for a later `commit()` once the backoff is over, and the worker goes
on consuming meanwhile. It must: librdkafka serves a rebalance, and a group session that timed out
while the coordinator was away, only inside consume, and until then a commit only waits for the
coordinator. Retried in place, a broker restarted for longer than the session timeout stopped a
sink family for good (docs/decisions/0008).

Giving a commit up loses nothing, since what it covers is done with: whoever consumes those
partitions next reads it again, and the downstream identities drop it (ClickHouse's insert tokens,
the events' ids). That is what happens when the worker left the group meanwhile (its generation is
over), and, on the `last_chance` before partitions are revoked or the worker stops, on any failure.
Partitions lost (the session timed out) are forgotten, not committed for: they may be another
worker's already.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import confluent_kafka

from onfinish.retry import Backoff

log = logging.getLogger(__name__)

Partition = tuple[str, int]

# Commit errors that mean this member no longer owns the partitions: retrying cannot succeed.
MEMBERSHIP_LOST = frozenset(
    {
        confluent_kafka.KafkaError.ILLEGAL_GENERATION,
        confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID,
        confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS,
        confluent_kafka.KafkaError.FENCED_INSTANCE_ID,
        confluent_kafka.KafkaError._ASSIGNMENT_LOST,
    }
)


class Committer:
    """The offsets one consumer is done with and has not committed yet."""

    def __init__(
        self, consumer: Any, backoff: Backoff, name: str, on_failure: Callable[[], None] = lambda: None
    ) -> None:
        self.consumer = consumer
        self.backoff = backoff
        self.name = name  # in log lines: the family, or the worker
        self.on_failure = on_failure  # counts a refused commit
        self.owned: set[Partition] = set()
        self.waiting: dict[Partition, int] = {}  # next offset of what is done with, per partition

    def done_with(self, next_offsets: Mapping[Partition, int]) -> None:
        """Everything before these offsets is done with; of partitions lost meanwhile, nothing is kept."""
        for partition, offset in next_offsets.items():
            if partition in self.owned:
                self.waiting[partition] = max(self.waiting.get(partition, 0), offset)

    def commit(self, *, last_chance: bool = False) -> None:
        """Commit what is waiting, once; on `last_chance` (before a revoke, at a stop) whatever the
        backoff says, and what could not be committed is then forgotten."""
        if self.waiting and (last_chance or self.backoff.ready()):
            self._try()
        if last_chance and self.waiting:
            log.info(
                "a commit not done before the partitions go; their records are read again and dropped",
                extra={"consumer": self.name},
            )
            self.waiting.clear()

    def _try(self) -> None:
        offsets = [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in self.waiting.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0]
            if error.code() in MEMBERSHIP_LOST:
                self.waiting.clear()
                log.info(
                    "commit refused: the partitions moved on; their next owner reads them again",
                    extra={"consumer": self.name, "error": error.str()},
                )
                return
            self.on_failure()
            log.warning(
                "commit failed; consuming on, and retrying",
                extra={"consumer": self.name, "error": error.str(), "retry_in_s": self.backoff.failed()},
            )
            return
        self.waiting.clear()
        self.backoff.succeeded()

    # What the consumer's rebalance callbacks tell it (they run inside consume).

    def assigned(self, partitions: Iterable[Any]) -> None:
        self.owned |= {(tp.topic, tp.partition) for tp in partitions}

    def forget(self, partitions: Iterable[Any]) -> set[Partition]:
        """Partitions revoked or lost: nothing more of theirs is committed. Returns them."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.owned -= gone
        for partition in gone:
            self.waiting.pop(partition, None)
        return gone
