"""The alert conditions on the stored minutes: the query at the edge, and one round per minute.

Rounds run at minute boundaries T once T is `settle_s` in the past: the round at T judges every
rule over the minutes [T - window, T). Each minute is read from ClickHouse once, when it has
settled (every raw partition's latest snapshot, summed per finest series), and kept for as long
as the longest window needs it, so a round reads one new minute, not five.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from onfinish.alerting.conditions import ConditionBook, SeriesMinute, judge
from onfinish.alerting.episodes import Finding, Labels, Timing
from onfinish.query.client import Querier, records, timestamp
from onfinish.query.sql import sql_timestamp
from onfinish.sinks.tables import REPRICING_PARTITION

MINUTE = timedelta(minutes=1)
FAMILY = "condition"


def series_minutes_sql(start: datetime, end: datetime) -> str:
    """Per minute in [start, end) and finest series: counts and histograms over every partition."""
    return f"""
SELECT
    window_start AS minute, provider, model_id, feature_id, environment,
    sum(events) AS calls_total,
    sum(errors) AS errors_total,
    sum(fallbacks) AS fallbacks_total,
    sum(ttft_count) AS ttft_total,
    sumForEach(latency_counts) AS latency_histogram,
    sumForEach(ttft_counts) AS ttft_histogram
FROM windows_1m FINAL
WHERE window_start >= {sql_timestamp(start)} AND window_start < {sql_timestamp(end)}
    AND raw_partition != {REPRICING_PARTITION}
GROUP BY minute, provider, model_id, feature_id, environment
ORDER BY minute, provider, model_id, feature_id, environment
"""  # noqa: S608 - timestamps formatted here and a constant


def _counts(value: Any) -> tuple[int, ...]:
    return tuple(int(count) for count in value or ())


def series_minutes(q: Querier, start: datetime, end: datetime) -> list[SeriesMinute]:
    return [
        SeriesMinute(
            minute=timestamp(row["minute"]),
            provider=str(row["provider"]),
            model_id=str(row["model_id"]),
            feature_id=str(row["feature_id"]),
            environment=str(row["environment"]),
            calls=int(row["calls_total"]),
            errors=int(row["errors_total"]),
            fallbacks=int(row["fallbacks_total"]),
            ttft_calls=int(row["ttft_total"]),
            latency_counts=_counts(row["latency_histogram"]),
            ttft_counts=_counts(row["ttft_histogram"]),
        )
        for row in records(q.query(series_minutes_sql(start, end)))
    ]


def settled_until(now: datetime, settle_s: float) -> datetime:
    """The latest minute boundary whose minute before it has settled."""
    return (now - timedelta(seconds=settle_s)).replace(second=0, microsecond=0)


class ConditionRounds:
    """The rounds of the alert conditions, and the minutes they read, kept between rounds."""

    def __init__(self, book: ConditionBook, querier: Querier, settle_s: float) -> None:
        self.book = book
        self.querier = querier
        self.settle_s = settle_s
        self.judged_until: datetime | None = None  # the last round's T
        self._minutes: dict[datetime, list[SeriesMinute]] = {}
        self._read_until: datetime | None = None  # minutes before this are in _minutes

    @property
    def replay_minutes(self) -> int:
        """Rounds replayed at start: enough to rebuild any pending `for` and any cooling down."""
        return max(int(r.for_minutes) + int(r.cooldown_minutes) + 1 for r in self.book.rule)

    def rounds(self, now: datetime) -> Iterator[tuple[datetime, list[Finding]]]:
        """The rounds due at `now`, oldest first, each with the findings that hold (at start: the
        last `replay_minutes` rounds, for the caller to replay quietly)."""
        end = settled_until(now, self.settle_s)
        first = self.judged_until + MINUTE if self.judged_until else end - MINUTE * self.replay_minutes
        if first > end:
            return
        self._read(first - MINUTE * self.book.longest_window, end)
        at = first
        while at <= end:
            findings = self.findings(at)
            self.judged_until = at
            yield at, findings
            at += MINUTE
        oldest = end - MINUTE * self.book.longest_window
        self._minutes = {m: rows for m, rows in self._minutes.items() if m >= oldest}

    def _read(self, start: datetime, end: datetime) -> None:
        if self._read_until is not None:
            start = max(start, self._read_until)
        if start >= end:
            return
        for minute in series_minutes(self.querier, start, end):
            self._minutes.setdefault(minute.minute, []).append(minute)
        self._read_until = end

    def findings(self, at: datetime) -> list[Finding]:
        start = at - MINUTE * self.book.longest_window
        minutes = [row for moment, rows in self._minutes.items() if start <= moment < at for row in rows]
        return [
            Finding(
                family=FAMILY,
                rule=j.rule.name,
                rules_version=self.book.version,
                severity=j.rule.severity,
                subject_kind="series",
                subject=j.subject,
                observed=j.value,
                threshold=j.rule.threshold,
                message=j.message,
                at=at,
                timing=Timing(j.rule.for_duration, j.rule.cooldown),
                labels=Labels(
                    provider=j.labels.get("provider"),
                    model_id=j.labels.get("model_id"),
                    feature_id=j.labels.get("feature_id"),
                    environment=j.labels.get("environment"),
                ),
            )
            for j in judge(self.book, minutes, at)
            if j.holds
        ]
