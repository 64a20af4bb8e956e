"""Mergeable latency histograms: what the processors fill for each window, on the contract's grid.

The grid (schemas/histogram_grid.py) fixes the buckets every histogram uses, in Python and in SQL;
a `Histogram` here counts values into it, merges, and reads quantiles back with the grid's own rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from onfinish.schemas.histogram_grid import DEFAULT_GRID, BucketGrid, bucket_of_rank, quantile_rank


class Histogram:
    """Counts on a :class:`BucketGrid` plus the exact count, sum, minimum and maximum.

    ``min`` and ``max`` are None while the histogram is empty. ``sum`` is a float, so histograms
    merged in a different order may differ in its last bits; counts, count, min and max are exact.

    The counts are kept sparse (bucket index -> count): a worker holds two histograms per live
    window, thousands of windows, and most of a window's 393 buckets stay empty. Dense, each took
    3.2 KB; `counts` still reads as the dense array.
    """

    __slots__ = ("_buckets", "_index", "_max", "_min", "count", "grid", "sum")

    def __init__(self, grid: BucketGrid = DEFAULT_GRID) -> None:
        self.grid = grid
        self._buckets: dict[int, int] = {}  # index -> count, of the non-empty buckets
        self.count = 0
        self.sum = 0.0
        # Infinite sentinels keep add() to two comparisons; the public min/max turn them into None.
        self._min = math.inf
        self._max = -math.inf
        # add() runs per event: a bound method saved once spares an attribute lookup per call.
        self._index = grid.index

    @property
    def counts(self) -> list[int]:
        """The dense counts array, one count per bucket of the grid (a new list)."""
        dense = [0] * self.grid.bucket_count
        for index, count in self._buckets.items():
            dense[index] = count
        return dense

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
        buckets = self._buckets
        index = self._index(value)
        buckets[index] = buckets.get(index, 0) + weight
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
        buckets = self._buckets
        for index, count in other._buckets.items():
            buckets[index] = buckets.get(index, 0) + count
        self.count += other.count
        self.sum += other.sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def copy(self) -> Histogram:
        """An independent histogram with the same contents."""
        duplicate = Histogram(self.grid)
        duplicate._buckets = dict(self._buckets)
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
        estimate = self.grid.representative(bucket_of_rank(self.counts, rank))
        return min(max(estimate, self._min), self._max)

    def to_counts(self) -> list[int]:
        """The dense counts array (a copy), as stored in ``windows_1m``."""
        return self.counts

    def to_sparse(self) -> tuple[list[int], list[int]]:
        """Indexes and counts of the non-empty buckets, in index order: the compact wire form."""
        buckets = self._buckets
        indexes = sorted(buckets)
        return indexes, [buckets[i] for i in indexes]

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
        if any(count < 0 for count in counts):
            raise ValueError("bucket counts must be non-negative")
        buckets = {index: count for index, count in enumerate(counts) if count}
        return cls._restore(grid, buckets, sum, min, max)

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
        buckets = {}
        previous = -1
        for index, count in zip(indexes, counts, strict=True):
            if not previous < index < grid.bucket_count:
                raise ValueError(f"sparse indexes must increase within 0..{grid.bucket_count - 1}")
            if count < 0:
                raise ValueError("bucket counts must be non-negative")
            if count:
                buckets[index] = count
            previous = index
        return cls._restore(grid, buckets, sum, min, max)

    @classmethod
    def _restore(
        cls,
        grid: BucketGrid,
        buckets: dict[int, int],
        total: float,
        minimum: float | None,
        maximum: float | None,
    ) -> Histogram:
        histogram = cls(grid)
        histogram._buckets = buckets
        histogram.count = sum(buckets.values())
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
            and self._buckets == other._buckets
            and self.count == other.count
            and self.sum == other.sum
            and self.min == other.min
            and self.max == other.max
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum!r}, min={self.min!r}, max={self.max!r})"
