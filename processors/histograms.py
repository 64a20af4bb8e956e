"""Mergeable latency histograms: the shape in which 1-minute windows carry latency and TTFT.

The processors fill one histogram per window and dimension set; ``windows_1m`` in ClickHouse stores
its counts as a fixed-length array, and hourly or daily quantiles come from arrays summed element by
element (``sumForEach``). That only works because every histogram, in Python and in SQL, uses one
FIXED bucket grid: DDSketch's logarithmic mapping cut to a bounded range, so a histogram is a plain
list of ``bucket_count`` integers and merging is addition.

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
from itertools import compress

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
    return grid.representative(_bucket_of_rank(counts, quantile_rank(q, total)))


class Histogram:
    """Counts on a :class:`BucketGrid` plus the exact count, sum, minimum and maximum.

    ``min`` and ``max`` are None while the histogram is empty. ``sum`` is a float, so histograms
    merged in a different order may differ in its last bits; counts, count, min and max are exact.
    """

    __slots__ = ("_index", "_max", "_min", "count", "counts", "grid", "sum")

    def __init__(self, grid: BucketGrid = DEFAULT_GRID) -> None:
        self.grid = grid
        self.counts: list[int] = [0] * grid.bucket_count
        self.count = 0
        self.sum = 0.0
        # Infinite sentinels keep add() to two comparisons; the public min/max turn them into None.
        self._min = math.inf
        self._max = -math.inf
        # add() runs per event: a bound method saved once spares an attribute lookup per call.
        self._index = grid.index

    @property
    def min(self) -> float | None:
        """The exact smallest value added, None when empty."""
        return self._min if self.count else None

    @property
    def max(self) -> float | None:
        """The exact largest value added, None when empty."""
        return self._max if self.count else None

    def add(self, value: float, weight: int = 1) -> None:
        """Count ``value`` ``weight`` times; NaN, infinite or negative values raise ValueError."""
        if weight < 1:
            raise ValueError(f"weight must be a positive integer, got {weight!r}")
        self.counts[self._index(value)] += weight
        self.count += weight
        self.sum += value * weight
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value

    def merge(self, other: Histogram) -> Histogram:
        """A new histogram holding the values of both."""
        merged = self.copy()
        merged.merge_into(other)
        return merged

    def merge_into(self, other: Histogram) -> None:
        """Add ``other``'s values to this histogram, in place."""
        if other.grid != self.grid:
            raise ValueError("cannot merge histograms on different bucket grids")
        self.counts = [mine + theirs for mine, theirs in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.sum += other.sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def copy(self) -> Histogram:
        """An independent histogram with the same contents."""
        duplicate = Histogram(self.grid)
        duplicate.counts = list(self.counts)
        duplicate.count = self.count
        duplicate.sum = self.sum
        duplicate._min = self._min
        duplicate._max = self._max
        return duplicate

    def quantile(self, q: float) -> float | None:
        """The q-quantile (q in [0, 1]) within alpha of the value of rank ``ceil(q * n)``.

        None when empty. Ranks 1 and n return the exact minimum and maximum, and every answer is
        clamped to them, which also bounds the answer in the underflow and overflow buckets.
        """
        rank = quantile_rank(q, self.count)
        if self.count == 0:
            return None
        if rank <= 1:
            return self._min
        if rank >= self.count:
            return self._max
        estimate = self.grid.representative(_bucket_of_rank(self.counts, rank))
        return min(max(estimate, self._min), self._max)

    def to_counts(self) -> list[int]:
        """The dense counts array (a copy), as stored in ``windows_1m``."""
        return list(self.counts)

    def to_sparse(self) -> tuple[list[int], list[int]]:
        """Indexes and counts of the non-empty buckets, in index order: the compact wire form."""
        # compress() walks the counts in C: this runs for every snapshot and state write.
        indexes = list(compress(range(len(self.counts)), self.counts))
        return indexes, [self.counts[i] for i in indexes]

    @classmethod
    def from_counts(
        cls,
        counts: Sequence[int],
        grid: BucketGrid = DEFAULT_GRID,
        *,
        sum: float,
        min: float | None,
        max: float | None,
    ) -> Histogram:
        """Rebuild a histogram from a dense counts array and its exact sum, minimum and maximum."""
        if len(counts) != grid.bucket_count:
            raise ValueError(f"expected {grid.bucket_count} counts for this grid, got {len(counts)}")
        return cls._restore(grid, list(counts), sum, min, max)

    @classmethod
    def from_sparse(
        cls,
        indexes: Sequence[int],
        counts: Sequence[int],
        grid: BucketGrid = DEFAULT_GRID,
        *,
        sum: float,
        min: float | None,
        max: float | None,
    ) -> Histogram:
        """Rebuild a histogram from :meth:`to_sparse` output and its exact sum, minimum and maximum."""
        if len(indexes) != len(counts):
            raise ValueError("sparse indexes and counts differ in length")
        dense = [0] * grid.bucket_count
        previous = -1
        for index, count in zip(indexes, counts, strict=True):
            if not previous < index < grid.bucket_count:
                raise ValueError(f"sparse indexes must increase within 0..{grid.bucket_count - 1}")
            dense[index] = count
            previous = index
        return cls._restore(grid, dense, sum, min, max)

    @classmethod
    def _restore(
        cls, grid: BucketGrid, counts: list[int], total: float, minimum: float | None, maximum: float | None
    ) -> Histogram:
        if counts and min(counts) < 0:
            raise ValueError("bucket counts must be non-negative")
        histogram = cls(grid)
        histogram.counts = counts
        histogram.count = sum(counts)
        histogram.sum = total
        if histogram.count:
            if minimum is None or maximum is None or not 0.0 <= minimum <= maximum:
                raise ValueError("a non-empty histogram needs its exact min and max, with 0 <= min <= max")
            histogram._min = minimum
            histogram._max = maximum
        return histogram

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (
            self.grid == other.grid
            and self.counts == other.counts
            and self.count == other.count
            and self.sum == other.sum
            and self.min == other.min
            and self.max == other.max
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum!r}, min={self.min!r}, max={self.max!r})"


def _bucket_of_rank(counts: Iterable[int], rank: int) -> int:
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
