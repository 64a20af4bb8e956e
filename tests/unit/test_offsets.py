"""Committing what a consumer is done with (onfinish/offsets.py): once, and again on a later pass
with what was done since, the loop consuming in between; given up when the partitions moved on."""

from __future__ import annotations

import threading
from typing import Any

import confluent_kafka
import pytest

from onfinish.offsets import Committer
from onfinish.retry import Backoff

TOPIC = "t.enriched"
WAIT_COORD = confluent_kafka.KafkaError._WAIT_COORD


class _Consumer:
    """Fails its first commits with the given errors, then succeeds."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.attempts = 0
        self.committed: list[tuple[str, int, int]] = []

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        assert asynchronous is False
        self.attempts += 1
        if self.errors:
            raise confluent_kafka.KafkaException(confluent_kafka.KafkaError(self.errors.pop(0)))
        self.committed = sorted((tp.topic, tp.partition, tp.offset) for tp in offsets)


def _committer(consumer: _Consumer, failures: list[int] | None = None) -> Committer:
    committer = Committer(
        consumer, Backoff(0.01, 0.02), "events", lambda: failures.append(1) if failures is not None else None
    )
    committer.assigned([confluent_kafka.TopicPartition(TOPIC, 0), confluent_kafka.TopicPartition(TOPIC, 1)])
    return committer


def test_a_refused_commit_returns_at_once_and_a_later_pass_commits_the_newest_offsets() -> None:
    consumer, failures = _Consumer(WAIT_COORD), list[int]()
    committer = _committer(consumer, failures)
    committer.done_with({(TOPIC, 0): 42})
    committer.commit()
    assert consumer.attempts == 1 and consumer.committed == [] and failures == [1]
    committer.done_with({(TOPIC, 0): 50, (TOPIC, 1): 7})  # later batches, done with meanwhile
    committer.commit()  # within the backoff: not tried
    assert consumer.attempts == 1
    threading.Event().wait(0.03)
    committer.commit()
    assert consumer.attempts == 2 and consumer.committed == [(TOPIC, 0, 50), (TOPIC, 1, 7)]
    assert committer.waiting == {}


def test_offsets_only_move_forward() -> None:
    committer = _committer(_Consumer(WAIT_COORD))
    committer.done_with({(TOPIC, 0): 50})
    committer.done_with({(TOPIC, 0): 42})
    assert committer.waiting == {(TOPIC, 0): 50}


@pytest.mark.parametrize(
    "code", [confluent_kafka.KafkaError.ILLEGAL_GENERATION, confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID]
)
def test_a_commit_after_the_partitions_moved_on_is_given_up(code: int) -> None:
    consumer = _Consumer(code, code)
    committer = _committer(consumer)
    committer.done_with({(TOPIC, 0): 42})
    committer.commit()
    threading.Event().wait(0.03)
    committer.commit()
    assert consumer.attempts == 1 and consumer.committed == [] and committer.waiting == {}


def test_the_last_chance_before_a_revoke_or_a_stop_ignores_the_backoff_and_then_forgets() -> None:
    consumer = _Consumer(WAIT_COORD, WAIT_COORD)
    committer = _committer(consumer)
    committer.done_with({(TOPIC, 0): 42})
    committer.commit()
    committer.commit(last_chance=True)
    assert consumer.attempts == 2 and committer.waiting == {}


def test_a_partition_lost_or_revoked_is_no_longer_committed_for() -> None:
    consumer = _Consumer()
    committer = _committer(consumer)
    committer.done_with({(TOPIC, 0): 42, (TOPIC, 1): 7})
    assert committer.forget([confluent_kafka.TopicPartition(TOPIC, 1)]) == {(TOPIC, 1)}
    committer.done_with({(TOPIC, 1): 9})  # a batch in flight when it went
    committer.commit()
    assert consumer.committed == [(TOPIC, 0, 42)]
