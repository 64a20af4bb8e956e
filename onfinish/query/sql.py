"""Values into SQL: the few values a query needs, formatted here because the endpoint takes no
query parameters (whole seconds as an int, strings through `sql_string`), and look-back periods
as people type them (30m, 1h, 7d).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from onfinish.errors import ConfigurationError

if TYPE_CHECKING:
    pass


# --- Values into SQL -------------------------------------------------------------------------------


def seconds_of(period: timedelta) -> int:
    """A look-back period as the whole number of seconds the SQL uses; at least one second."""
    seconds = int(period.total_seconds())
    if seconds < 1:
        raise ConfigurationError(f"the period must be at least one second, not {period}")
    return seconds


def sql_string(text: str) -> str:
    """`text` as a ClickHouse string literal (backslashes and quotes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_timestamp(moment: datetime) -> str:
    """`moment` as a ClickHouse DateTime64(6, 'UTC') literal, to the second."""
    return f"toDateTime64({sql_string(f'{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}')}, 6, 'UTC')"


_PERIOD = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_period(text: str) -> timedelta:
    """A period such as 30m, 1h, 7d (units s, m, h, d, w); ValueError with the reason otherwise."""
    match = _PERIOD.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a period: use a number and a unit, e.g. 30m, 1h, 7d")
    amount, unit = int(match.group(1)), match.group(2).lower()
    if amount == 0:
        raise ValueError(f"{text!r} is an empty period: use at least 1{unit}")
    return timedelta(**{_UNITS[unit]: amount})


def describe_period(period: timedelta) -> str:
    """30m, 1h, 7d: the shortest exact spelling of a period."""
    seconds = int(period.total_seconds())
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
