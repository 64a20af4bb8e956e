"""A query's answer as the endpoint sends it, and its JSON and CSV renderings.

Shared by the server, which renders it, and by the clients, which read it back.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeAlias
from uuid import UUID

from onfinish.errors import OnfinishError

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None


class QueryFailed(OnfinishError):
    """The query endpoint could not answer: a ClickHouse error, a transport failure or a bad reply."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


# --- Results as JSON and CSV -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A query's answer as the endpoint sends it.

    Rows are tuples, as in clickhouse-connect's `result_rows`, of JSON-safe values (`JsonValue`, see
    `json_safe`); typed `Any` because a caller knows each column's type from `types` and the query,
    which a union over every JSON value would make it re-prove at each use.
    """

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    elapsed_ms: float = 0.0


def json_safe(value: object) -> JsonValue:
    """`value`, as clickhouse-connect returns it, in a form JSON can carry without loss of meaning.

    Datetimes and dates become ISO 8601, Decimals, UUIDs and IP addresses strings (a float would
    round a Decimal), bytes base64, tuples lists, map keys strings, and NaN or infinities the
    strings "nan", "inf" and "-inf" (JSON has no literal for them).
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | UUID | IPv4Address | IPv6Address):
        return str(value)
    if isinstance(value, Enum):
        return json_safe(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {_json_key(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    return str(value)


def _json_key(key: object) -> str:
    safe = json_safe(key)
    return safe if isinstance(safe, str) else json.dumps(safe)


def render_json(result: QueryResult) -> bytes:
    document = {
        "columns": result.columns,
        "types": result.types,
        "rows": result.rows,
        "elapsed_ms": result.elapsed_ms,
    }
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _csv_cell(value: JsonValue) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def render_csv(result: QueryResult) -> bytes:
    """The result as CSV with a header row; arrays, tuples and maps are cells holding JSON."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows([_csv_cell(value) for value in row] for row in result.rows)
    return buffer.getvalue().encode()
