"""`onfinish dlq`: the dead letters by stage and reason, one reason's letters, and their replay.

Dead letters are read from the `dlq` table (with FINAL) through a `Querier`
(onfinish/query/client.py), not from the topic, because the table is where they are kept for as long
as anyone needs them. Their key and value bytes are sealed (schemas/sealing.py, decision 0017):
shown as base64 only when asked, and opened only to be replayed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from confluent_kafka import (
    KafkaError,
    Message,
    Producer,
)

from onfinish.errors import ConfigurationError
from onfinish.inspection.topics import QUIET_LOG_LEVEL, InspectError
from onfinish.query.client import Querier, records, timestamp
from onfinish.query.sql import seconds_of, sql_string
from onfinish.schemas.deadletter import Reason
from onfinish.schemas.sealing import Seal
from onfinish.security import librdkafka_config
from onfinish.settings import KafkaSettings

REPLAYED_HEADER = ("onfinish.replayed", b"1")
"""Marks a record `onfinish dlq replay` sent back, so it can be told apart from the original."""
REPLAY_PAGE = 1000
"""Dead letters read per query while replaying (each carries its whole value)."""


# --- Dead letters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterGroup:
    stage: str
    reason: str
    source_topic: str
    letters: int
    value_bytes: int
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True)
class DeadLetterRow:
    stage: str
    reason: str
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    value_bytes: int
    base64_chars: int
    received_at: datetime
    value_base64: str | None
    """The value's bytes as base64, only when asked for: they may hold personal data."""


def reason_of(text: str) -> Reason:
    """A dead-letter reason by its value, refused with the list of reasons when unknown."""
    try:
        return Reason(text)
    except ValueError:
        raise ConfigurationError(
            f"{text!r} is not a dead-letter reason; choose from {', '.join(r.value for r in Reason)}"
        ) from None


def dlq_list_sql(seconds: int) -> str:
    return f"""
SELECT stage, reason, source_topic, count() AS letters, sum(value_bytes) AS value_bytes_total,
    min(received_at) AS first_received, max(received_at) AS last_received
FROM dlq FINAL
WHERE received_at >= now() - toIntervalSecond({int(seconds)})
GROUP BY stage, reason, source_topic
ORDER BY letters DESC, stage, reason, source_topic
"""  # noqa: S608 - numbers only


def dlq_list(q: Querier, since: timedelta) -> list[DeadLetterGroup]:
    """Dead letters received within `since`, counted by stage, reason and source topic."""
    return [
        DeadLetterGroup(
            stage=str(row["stage"]),
            reason=str(row["reason"]),
            source_topic=str(row["source_topic"]),
            letters=int(row["letters"]),
            value_bytes=int(row["value_bytes_total"]),
            first_at=timestamp(row["first_received"]),
            last_at=timestamp(row["last_received"]),
        )
        for row in records(q.query(dlq_list_sql(seconds_of(since))))
    ]


def dlq_show_sql(reason: Reason, limit: int, include_bytes: bool) -> str:
    # Named apart from the column, so that length(value) still reads the column.
    value = "value" if include_bytes else "CAST(NULL, 'Nullable(String)')"
    return f"""
SELECT stage, reason, message, source_topic, source_partition, source_offset, value_bytes,
    length(value) AS base64_chars, received_at, {value} AS value_base64
FROM dlq FINAL
WHERE reason = {sql_string(reason.value)}
ORDER BY received_at DESC, source_topic, source_partition, source_offset
LIMIT {int(limit)}
"""  # noqa: S608 - an enumerated reason, quoted, and numbers


def dlq_show(q: Querier, reason: str, limit: int, *, include_bytes: bool = False) -> list[DeadLetterRow]:
    """The latest `limit` dead letters of `reason`; their values only with `include_bytes`."""
    if limit < 1:
        raise ConfigurationError(f"the limit must be at least 1, not {limit}")
    return [
        DeadLetterRow(
            stage=str(row["stage"]),
            reason=str(row["reason"]),
            message=str(row["message"]),
            source_topic=str(row["source_topic"]),
            source_partition=int(row["source_partition"]),
            source_offset=int(row["source_offset"]),
            value_bytes=int(row["value_bytes"]),
            base64_chars=int(row["base64_chars"]),
            received_at=timestamp(row["received_at"]),
            value_base64=None if row["value_base64"] is None else str(row["value_base64"]),
        )
        for row in records(q.query(dlq_show_sql(reason_of(reason), limit, include_bytes)))
    ]


def _replay_filter(reason: Reason, source_topic: str | None) -> str:
    # Letters whose headers lacked their origin have nowhere to go back to.
    condition = f"reason = {sql_string(reason.value)} AND source_topic != ''"
    if source_topic is not None:
        condition += f" AND source_topic = {sql_string(source_topic)}"
    return condition


def replay_count_sql(reason: Reason, source_topic: str | None) -> str:
    return f"""
SELECT uniqExact(source_topic, source_partition, source_offset) AS letters
FROM dlq FINAL
WHERE {_replay_filter(reason, source_topic)}
"""  # noqa: S608 - quoted literals only


def replay_page_sql(
    reason: Reason, source_topic: str | None, after: tuple[str, int, int] | None, page: int
) -> str:
    """One page of letters to replay, in origin order, each origin once, after the origin `after`."""
    condition = _replay_filter(reason, source_topic)
    if after is not None:
        topic, partition, offset = after
        condition += (
            f" AND (source_topic, source_partition, source_offset) > "
            f"({sql_string(topic)}, {int(partition)}, {int(offset)})"
        )
    return f"""
SELECT source_topic, source_partition, source_offset, key, value
FROM dlq FINAL
WHERE {condition}
ORDER BY source_topic, source_partition, source_offset
LIMIT 1 BY source_topic, source_partition, source_offset
LIMIT {int(page)}
"""  # noqa: S608 - quoted literals and numbers


class ReplayProducer(Protocol):
    """What replay needs of a confluent_kafka Producer."""

    def produce(
        self,
        topic: str,
        value: bytes | None = ...,
        key: bytes | None = ...,
        *,
        on_delivery: Callable[[KafkaError | None, Message[bytes, bytes]], None] | None = ...,
        headers: list[tuple[str, str | bytes | None]] | None = ...,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


def _producer(kafka: KafkaSettings) -> ReplayProducer:
    return Producer(
        {
            **librdkafka_config(kafka),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "log_level": QUIET_LOG_LEVEL,
        }
    )


def _bytes_or_none(text: str) -> bytes | None:
    return base64.b64decode(text) if text else None


def dlq_replay(
    kafka: KafkaSettings,
    q: Querier,
    *,
    reason: str,
    source_topic: str | None,
    dry_run: bool,
    producer: ReplayProducer | None = None,
    seal: Seal | None = None,
) -> int:
    """Send the dead letters of `reason` back to the topics they came from; how many were (or would be).

    For records refused because of a bug that has since been fixed: each letter's original key and
    value bytes go back to its source topic (by key, so to the partition its siblings are on), with
    the header onfinish.replayed=1. Letters are read from the `dlq` table, each origin once, and
    opened with `ONFINISH_DLQ_SEAL_KEY`'s seal (letters from before sealing go back as stored). A
    replayed record that is refused again becomes a new dead letter.
    """
    opener = seal or Seal.configured()
    wanted = reason_of(reason)
    if dry_run:
        rows = records(q.query(replay_count_sql(wanted, source_topic)))
        return int(rows[0]["letters"]) if rows else 0
    sender = producer or _producer(kafka)
    failures: list[str] = []

    def delivered(error: KafkaError | None, _: Message[bytes, bytes]) -> None:
        if error is not None:
            failures.append(error.str())

    sent = 0
    after: tuple[str, int, int] | None = None
    while True:
        page = records(q.query(replay_page_sql(wanted, source_topic, after, REPLAY_PAGE)))
        for letter in page:
            while True:
                try:
                    sender.produce(
                        str(letter["source_topic"]),
                        value=opener.open(_bytes_or_none(str(letter["value"]))),
                        key=opener.open(_bytes_or_none(str(letter["key"]))),
                        headers=[(REPLAYED_HEADER[0], REPLAYED_HEADER[1])],
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    sender.poll(0.5)
            sent += 1
            sender.poll(0)
        if len(page) < REPLAY_PAGE:
            break
        last = page[-1]
        after = (str(last["source_topic"]), int(last["source_partition"]), int(last["source_offset"]))
    unsent = sender.flush(kafka.request_timeout_s * 2)
    if unsent or failures:
        detail = f": {failures[0]}" if failures else ""
        raise InspectError(
            f"{unsent + len(failures)} of {sent} replayed records were not acknowledged by Kafka at "
            f"{kafka.bootstrap_servers}{detail}; replaying again is safe, duplicates are dropped downstream"
        )
    return sent
