"""Which ClickHouse table each processed record goes to, and how a decoded record becomes its row.

The sink worker decodes a record with fastavro (timestamps as aware UTC datetimes, event_id as a
UUID, enums as str, absent optionals as None), calls its table's ``to_row`` with the Kafka
partition and offset it was read at, and inserts the rows with ``columns`` as column names. Rows
are plain lists built by ``itemgetter`` in C: the sink targets 100k rows per second, so there is
no validation here beyond what a row needs (the processors wrote only valid records).

Columns follow the Avro schemas' field names (migrations/0001_tables.sql creates them), plus
``kafka_partition`` and ``kafka_offset``; ``inserted_at`` is ClickHouse's default. Window
histograms travel sparse (bucket indexes and counts) and are stored dense, one count per bucket
of the shared grid, so that ClickHouse merges minutes into hours with ``sumForEach``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from onfinish.schemas.contract import (
    ALERT,
    COST_CORRECTION,
    ENRICHED_EVENT,
    QUALITY_UPDATE,
    SESSION_SNAPSHOT,
    WINDOW_COST_CORRECTION,
    WINDOW_SNAPSHOT,
    RecordType,
)
from onfinish.schemas.deadletter import DeadLetter
from onfinish.schemas.histogram_grid import DEFAULT_GRID

RowBuilder = Callable[[dict[str, Any], int, int], list[Any]]

KAFKA_COLUMNS = ("kafka_partition", "kafka_offset")
BUCKET_COUNT = DEFAULT_GRID.bucket_count


@dataclass(frozen=True)
class TableSpec:
    """A sink table: its name, the record type it stores, and how a decoded record becomes a row."""

    name: str
    record_type: RecordType
    columns: tuple[str, ...]
    """Insert column names, in row order."""
    to_row: RowBuilder
    """(decoded datum, Kafka partition, Kafka offset) -> the row's values, in ``columns`` order."""


def _values(fields: Sequence[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The datum's values of ``fields`` as a tuple, read in C (itemgetter)."""
    if len(fields) == 1:
        (only,) = fields
        return lambda datum: (datum[only],)  # itemgetter of one name returns the bare value
    return itemgetter(*fields)


def _copy_row(fields: Sequence[str]) -> RowBuilder:
    """A row builder for a table whose columns are the record's fields, in order, then Kafka's."""
    values = _values(fields)

    def to_row(datum: dict[str, Any], partition: int, offset: int) -> list[Any]:
        return [*values(datum), partition, offset]

    return to_row


def _spec(name: str, record_type: RecordType) -> TableSpec:
    fields = record_type.field_names
    return TableSpec(name, record_type, (*fields, *KAFKA_COLUMNS), _copy_row(fields))


def dense_counts(buckets: Sequence[int], counts: Sequence[int]) -> list[int]:
    """A sparse histogram (bucket indexes, counts) as one count per bucket of the grid."""
    dense = [0] * BUCKET_COUNT
    if buckets and (min(buckets) < 0 or max(buckets) >= BUCKET_COUNT):
        raise ValueError(f"histogram bucket indexes must lie in 0..{BUCKET_COUNT - 1}")
    for index, count in zip(buckets, counts, strict=True):
        dense[index] = count
    return dense


# The window columns are the snapshot's fields with each histogram's sparse pair (<h>_buckets,
# <h>_counts) replaced by one dense <h>_counts column at the place of the pair.
_WINDOW_FIELDS = WINDOW_SNAPSHOT.field_names


def _sparse_pair_at(histogram: str) -> int:
    position = _WINDOW_FIELDS.index(f"{histogram}_buckets")
    if _WINDOW_FIELDS[position + 1] != f"{histogram}_counts":
        raise RuntimeError(f"WindowSnapshot no longer carries {histogram}_counts after {histogram}_buckets")
    return position


_LATENCY = _sparse_pair_at("latency")
_TTFT = _sparse_pair_at("ttft")
_WINDOW_HEAD = _values(_WINDOW_FIELDS[:_LATENCY])
_WINDOW_MIDDLE = _values(_WINDOW_FIELDS[_LATENCY + 2 : _TTFT])
_WINDOW_TAIL = _values(_WINDOW_FIELDS[_TTFT + 2 :])
WINDOW_COLUMNS = (
    *_WINDOW_FIELDS[:_LATENCY],
    "latency_counts",
    *_WINDOW_FIELDS[_LATENCY + 2 : _TTFT],
    "ttft_counts",
    *_WINDOW_FIELDS[_TTFT + 2 :],
    *KAFKA_COLUMNS,
)


def window_row(datum: dict[str, Any], partition: int, offset: int) -> list[Any]:
    """A WindowSnapshot datum as a windows_1m row, histograms dense."""
    return [
        *_WINDOW_HEAD(datum),
        dense_counts(datum["latency_buckets"], datum["latency_counts"]),
        *_WINDOW_MIDDLE(datum),
        dense_counts(datum["ttft_buckets"], datum["ttft_counts"]),
        *_WINDOW_TAIL(datum),
        partition,
        offset,
    ]


# The raw partition of a windows_1m row that is a re-pricing's correction, not a processor's
# snapshot: no raw partition is this high, so corrections never replace snapshots, only each other.
REPRICING_PARTITION = 2**31 - 1
_ZERO_COUNTS = (0,) * BUCKET_COUNT
_WINDOW_DIMENSIONS = ("provider", "model_id", "feature_id", "variant_id", "environment", "status")


def window_correction_row(datum: dict[str, Any], partition: int, offset: int) -> list[Any]:
    """A WindowCostCorrection as a windows_1m row: no calls, empty histograms, the cost delta.

    Sums over the windows (cost per model and hour, per feature, ...) then include the new prices;
    every count, histogram and extreme is untouched (zeros, empty, NULL)."""
    start = datum["window_start"]
    identity = "|".join(str(datum[name]) for name in _WINDOW_DIMENSIONS)
    values = {
        "window_id": f"repricing:{start:%Y%m%dT%H%M}:{identity}"[:256],
        "version": datum["version"],
        "raw_partition": REPRICING_PARTITION,
        "window_start": start,
        "window_end": datum["window_end"],
        "provider": datum["provider"],
        "model_id": datum["model_id"],
        "feature_id": datum["feature_id"],
        "variant_id": datum["variant_id"],
        "environment": datum["environment"],
        "status": datum["status"],
        "cost_usd": datum["cost_delta_usd"],
        "latency_min_ms": None,
        "latency_max_ms": None,
        "latency_counts": list(_ZERO_COUNTS),
        "ttft_min_ms": None,
        "ttft_max_ms": None,
        "ttft_counts": list(_ZERO_COUNTS),
        "emitted_at": datum["repriced_at"],
        "kafka_partition": partition,
        "kafka_offset": offset,
    }
    return [values.get(column, 0) for column in WINDOW_COLUMNS]


EVENTS = _spec("events", ENRICHED_EVENT)
WINDOWS = TableSpec("windows_1m", WINDOW_SNAPSHOT, WINDOW_COLUMNS, window_row)
SESSIONS = _spec("sessions", SESSION_SNAPSHOT)
ALERTS = _spec("alerts", ALERT)
EVENT_QUALITY = _spec("event_quality", QUALITY_UPDATE)
EVENT_COSTS = _spec("event_costs", COST_CORRECTION)
WINDOW_CORRECTIONS = TableSpec("windows_1m", WINDOW_COST_CORRECTION, WINDOW_COLUMNS, window_correction_row)

TABLES: dict[str, TableSpec] = {
    spec.record_type.full_name: spec
    for spec in (EVENTS, EVENT_QUALITY, EVENT_COSTS, WINDOWS, WINDOW_CORRECTIONS, SESSIONS, ALERTS)
}
"""The sink tables by the full name of the record type they store."""

DLQ_COLUMNS: tuple[str, ...] = (
    "stage",
    "reason",
    "message",
    "source_topic",
    "source_partition",
    "source_offset",
    "key",
    "value",
    "value_bytes",
    "received_at",
)


def dlq_row(letter: DeadLetter, received_at: datetime) -> list[Any]:
    """A dead letter as a dlq row, in DLQ_COLUMNS order; key and value bytes base64 ('' when absent)."""
    value = letter.value or b""
    return [
        letter.stage.value,
        letter.reason.value,
        letter.message,
        letter.source_topic,
        letter.source_partition,
        letter.source_offset,
        base64.b64encode(letter.key).decode("ascii") if letter.key else "",
        base64.b64encode(value).decode("ascii"),
        len(value),
        received_at,
    ]
