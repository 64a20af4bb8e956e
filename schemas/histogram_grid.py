"""The contract's latency histogram grid: the bucket layout windows carry latency and TTFT in.

1-minute windows carry latency and TTFT as histograms; ``windows_1m`` in ClickHouse stores their
counts as a fixed-length array, and hourly or daily quantiles come from arrays summed element by
element (``sumForEach``). That only works because every histogram, in Python and in SQL, uses one
FIXED bucket grid: DDSketch's logarithmic mapping cut to a bounded range, so a histogram is a plain
list of ``bucket_count`` integers and merging is addition. The grid is part of the data contract,
so it lives with the schemas: the processors fill histograms on it (processors/histograms.py), the
sinks size the arrays with it and the analysts' queries read quantiles back with it.

Error guarantee: for every value in ``(min_value, max_value]`` the bucket representative is within
relative error ``relative_accuracy`` (alpha, default 2 %) of the value. A quantile is the
representative of the bucket holding the value of rank ``ceil(q * n)`` (1-based, rank 1 for q = 0),
so it is within alpha of that true sample value, however many histograms were merged to get it.
Values in ``[0, min_value]`` share bucket 0 (absolute error at most ``min_value / 2``); values above
``max_value`` share the overflow bucket, where only the exact maximum kept beside the counts helps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# ceil(q * n) must give the rank a person means by q: 0.07 * 100 is 7.000000000000001 in binary
# floating point, and a bare ceil would make p7 of 100 values the 8th. Shrinking by one part in 1e12
# undoes such representation error without moving any rank that is meant to be fractional; the SQL
# quantile expression multiplies by the same constant so both sides pick the same rank.
_RANK_SHRINK = 1.0 - 1e-12

# A grid is a contract with stored data; absurd grids (alpha 1e-6 over twelve decades) would make
# every window row megabytes, so they are refused instead of silently produced.
_MAX_BUCKETS = 65_535


@dataclass(frozen=True)
class BucketGrid:
    """A fixed logarithmic bucket grid, shared by every producer and reader of histogram counts.

    Bucket 0 holds ``[0, min_value]``; bucket ``i`` in ``1 .. n`` holds ``(b[i-1], b[i]]`` with
    ``b[i] = min_value * gamma**i`` except that the last regular edge ``b[n]`` is ``max_value``
    itself; bucket ``n + 1`` (the last) holds everything above ``max_value``.
    ``gamma = (1 + alpha) / (1 - alpha)``, so a bucket's representative ``2*lo*hi / (lo + hi)`` is
    within alpha of anything in it.

    Changing any field changes the meaning of stored counts: treat a new grid as a schema change.
    """

    relative_accuracy: float = 0.02
    """alpha: the largest relative error of a representative against a value of its bucket."""
    min_value: float = 0.1
    """Upper edge of bucket 0, in the unit of the values (milliseconds for latencies)."""
    max_value: float = 600_000.0
    """Values above this (10 minutes in ms) go to the overflow bucket."""

    gamma: float = field(init=False, repr=False, compare=False)
    _bounds: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _representatives: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _log_min: float = field(init=False, repr=False, compare=False)
    _inverse_log_gamma: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        alpha = self.relative_accuracy
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {alpha!r}")
        if not (math.isfinite(self.min_value) and math.isfinite(self.max_value)):
            raise ValueError("min_value and max_value must be finite")
        if not 0.0 < self.min_value < self.max_value:
            raise ValueError(f"need 0 < min_value < max_value, got {self.min_value!r}, {self.max_value!r}")
        gamma = (1.0 + alpha) / (1.0 - alpha)
        regular = math.ceil(math.log(self.max_value / self.min_value) / math.log(gamma))
        if regular + 2 > _MAX_BUCKETS:
            raise ValueError(f"grid would need {regular + 2} buckets, more than {_MAX_BUCKETS}")
        # Each edge from its own power, not by repeated multiplication, so rounding does not drift;
        # the loop trims an edge that rounding put at or above max_value, keeping edges increasing.
        edges = [self.min_value]
        for i in range(1, regular + 1):
            edge = self.min_value * gamma**i
            if edge >= self.max_value:
                break
            edges.append(edge)
        edges.append(self.max_value)
        representatives = [self.min_value / 2.0]
        representatives += [2.0 * lo * hi / (lo + hi) for lo, hi in itertools.pairwise(edges)]
        representatives.append(self.max_value)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "_bounds", tuple(edges))
        object.__setattr__(self, "_representatives", tuple(representatives))
        object.__setattr__(self, "_log_min", math.log(self.min_value))
        object.__setattr__(self, "_inverse_log_gamma", 1.0 / math.log(gamma))

    @property
    def bucket_count(self) -> int:
        """Length of every counts array on this grid: underflow, regular buckets, overflow."""
        return len(self._bounds) + 1

    @property
    def overflow_index(self) -> int:
        """Index of the last bucket, which holds values above ``max_value``."""
        return len(self._bounds)

    def index(self, value: float) -> int:
        """The 0-based bucket of ``value``; NaN, infinite and negative values raise ValueError."""
        # Comparisons come first because NaN fails all of them and falls through to the error.
        if value > self.min_value:
            if value > self.max_value:
                if value == math.inf:
                    raise ValueError("histogram values must be finite, got inf")
                return len(self._bounds)
            bounds = self._bounds
            last = len(bounds) - 1
            candidate = math.ceil((math.log(value) - self._log_min) * self._inverse_log_gamma)
            if candidate < 1:
                candidate = 1
            elif candidate > last:
                candidate = last
            # log() is off by an ulp now and then (and differs between libms, e.g. Python's and
            # ClickHouse's); near an edge that moves the candidate by one. Comparing against the
            # stored edges makes the stored edges, not log(), define the buckets, on both sides.
            if value > bounds[candidate]:
                return candidate + 1
            if value <= bounds[candidate - 1]:
                return candidate - 1
            return candidate
        if value >= 0.0:
            return 0
        raise ValueError(f"histogram values must be non-negative numbers, got {value!r}")

    def lower_bound(self, index: int) -> float:
        """Exclusive lower edge of bucket ``index`` (bucket 0 includes its lower edge, 0)."""
        self._check_index(index)
        return 0.0 if index == 0 else self._bounds[index - 1]

    def upper_bound(self, index: int) -> float:
        """Inclusive upper edge of bucket ``index``; ``inf`` for the overflow bucket."""
        self._check_index(index)
        return math.inf if index == len(self._bounds) else self._bounds[index]

    def representative(self, index: int) -> float:
        """The value reported for bucket ``index``.

        For regular buckets it is ``2*lo*hi / (lo + hi)``, the point whose relative error is the
        same, at most alpha, against both edges (for a full bucket it equals DDSketch's
        ``2 * gamma**i / (gamma + 1)``). Bucket 0 reports ``min_value / 2`` and the overflow bucket
        ``max_value``; Histogram.quantile clamps both to the exact minimum and maximum.
        """
        self._check_index(index)
        return self._representatives[index]

    def representatives(self) -> tuple[float, ...]:
        """Every bucket's representative, by index."""
        return self._representatives

    def clickhouse_index_expression(self, column: str) -> str:
        """A ClickHouse expression giving the same bucket index as :meth:`index` for ``column``.

        Same two steps as in Python: a log estimate, then a correction against the literal edges,
        which ClickHouse parses to the same doubles as Python prints them. Validation upstream
        must stop what Python refuses: here negatives land in bucket 0 and +inf in the overflow
        bucket; NaN makes ClickHouse raise, as converting NaN to an integer is an error there.
        """
        value = f"toFloat64({column})"
        edges = _array_literal(self._bounds)
        last = len(self._bounds) - 1
        estimate = f"ceil((log({value}) - {self._log_min!r}) * {self._inverse_log_gamma!r})"
        candidate = f"least(greatest(toInt64({estimate}), 1), {last})"
        # ClickHouse arrays are 1-based: edge b[i] is element i + 1.
        corrected = f"{candidate} + ({value} > {edges}[{candidate} + 1]) - ({value} <= {edges}[{candidate}])"
        return (
            f"toUInt32(multiIf({value} <= {self.min_value!r}, 0, {value} > {self.max_value!r}, "
            f"{len(self._bounds)}, {corrected}))"
        )

    def clickhouse_representatives(self) -> str:
        """The representatives as a ClickHouse Array(Float64) literal (element i + 1 = bucket i)."""
        return _array_literal(self._representatives)

    def clickhouse_quantile_expression(self, counts: str, q: float) -> str:
        """A ClickHouse expression for the q-quantile of an Array(UInt64) counts column or expression.

        Matches :func:`quantile_from_counts` (same rank, same representatives), so views can read
        quantiles straight off ``sumForEach`` of minute arrays; NULL when the counts are empty.
        """
        _check_quantile(q)
        total = f"arraySum({counts})"
        rank = f"greatest(1, ceil({q!r} * {total} * {_RANK_SHRINK!r}))"
        bucket = f"arrayFirstIndex(running -> running >= {rank}, arrayCumSum({counts}))"
        return f"if({total} = 0, NULL, {self.clickhouse_representatives()}[{bucket}])"

    def _check_index(self, index: int) -> None:
        if not 0 <= index <= len(self._bounds):
            raise IndexError(f"bucket index {index} outside 0..{len(self._bounds)}")


DEFAULT_GRID = BucketGrid()
"""The pipeline's grid: 2 % relative error from 0.1 ms to 10 minutes."""


def quantile_rank(q: float, count: int) -> int:
    """1-based rank of the q-quantile among ``count`` values: ``ceil(q * count)``, at least 1."""
    _check_quantile(q)
    return max(1, math.ceil(q * count * _RANK_SHRINK))


def quantile_from_counts(counts: Sequence[int], q: float, grid: BucketGrid = DEFAULT_GRID) -> float | None:
    """The q-quantile of a counts array (e.g. summed across windows); None when it is empty.

    Returns the representative of the bucket holding the value of rank ``quantile_rank(q, n)``,
    hence within alpha of that value when it lies in ``(min_value, max_value]``.
    """
    if len(counts) != grid.bucket_count:
        raise ValueError(f"expected {grid.bucket_count} counts for this grid, got {len(counts)}")
    total = sum(counts)
    if total == 0:
        _check_quantile(q)
        return None
    return grid.representative(bucket_of_rank(counts, quantile_rank(q, total)))


def bucket_of_rank(counts: Iterable[int], rank: int) -> int:
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= rank:
            return index
    raise ValueError(f"rank {rank} exceeds the number of counted values")


def _check_quantile(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q!r}")


def _array_literal(values: Iterable[float]) -> str:
    # repr() is the shortest string that parses back to the same double, in Python and in ClickHouse.
    return "[" + ", ".join(repr(value) for value in values) + "]"
