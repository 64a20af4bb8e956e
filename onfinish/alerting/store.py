"""Episodes as published: read back from what the sink stored of onfinish.alerts.

A worker that starts must know which episodes it (or its predecessor) left open, so that it neither
fires them again nor forgets to resolve them. The records are on onfinish.alerts; the sink stores
them in ClickHouse's `alerts` table with the Kafka partition and offset each came from. At start,
the reader first waits until the table holds every record the topic held when it looked (per
partition, the highest stored offset has reached the topic's end), so an episode published just
before a crash is not missed, then reads the `alert_episodes` view. If the sink does not catch up
within `restore_wait_s` (it is down, or it refused the last record), it reads what is there and
says so: an episode missed that way fires once more, with the same start and id where the data
allows, rather than never resolving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from onfinish.alerting.episodes import Episode
from onfinish.alerting.records import episode_from_row
from onfinish.query.client import Querier, records
from onfinish.query.sql import sql_timestamp

log = logging.getLogger(__name__)

# Per partition of onfinish.alerts, the offset of the next record (what the topic holds is below).
TopicEnds = Callable[[], Mapping[int, int]]

STORED_OFFSETS_SQL = "SELECT kafka_partition, max(kafka_offset) AS last FROM alerts GROUP BY kafka_partition"


def episodes_sql(resolved_since: datetime) -> str:
    return f"""
SELECT *
FROM alert_episodes
WHERE open OR resolved_at >= {sql_timestamp(resolved_since)}
ORDER BY started_at, episode_id
"""  # noqa: S608 - a timestamp formatted here


@dataclass(frozen=True)
class Published:
    """The episodes still open, and those resolved within the horizon asked for."""

    open: list[Episode]
    resolved: list[Episode]


class StoredEpisodes:
    def __init__(self, querier: Querier, topic_ends: TopicEnds | None, wait_s: float) -> None:
        self.querier = querier
        self.topic_ends = topic_ends
        self.wait_s = wait_s

    def caught_up(self) -> bool:
        """Whether the alerts table holds every record onfinish.alerts held when asked."""
        if self.topic_ends is None:
            return True
        ends = {p: end for p, end in self.topic_ends().items() if end > 0}
        if not ends:
            return True
        stored = {
            int(row["kafka_partition"]): int(row["last"])
            for row in records(self.querier.query(STORED_OFFSETS_SQL))
        }
        return all(stored.get(partition, -1) >= end - 1 for partition, end in ends.items())

    def read(self, now: datetime, resolved_within: timedelta) -> Published:
        deadline = time.monotonic() + self.wait_s
        while not self.caught_up():
            if time.monotonic() >= deadline:
                log.warning(
                    "the sink has not stored every alert record yet; reading the episodes it has",
                    extra={"waited_s": self.wait_s},
                )
                break
            time.sleep(0.5)
        episodes = [
            episode_from_row(row) for row in records(self.querier.query(episodes_sql(now - resolved_within)))
        ]
        return Published([e for e in episodes if e.open], [e for e in episodes if not e.open])
