"""Mergeable latency histograms: bucket bounds, quantile error, merging, wire forms, and SQL agreement."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction
from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onfinish.processors.histograms import Histogram
from onfinish.schemas.histogram_grid import DEFAULT_GRID, BucketGrid, quantile_from_counts, quantile_rank
from tests.conftest import scaled_examples

GRID = DEFAULT_GRID
ALPHA = GRID.relative_accuracy
# Floating point may put an edge value a hair past alpha: the guarantee is alpha, not alpha - ulp.
TOLERANCE = ALPHA * (1 + 1e-9)
QUANTILES = (0.5, 0.9, 0.95, 0.99)

in_range = st.floats(min_value=GRID.min_value, max_value=GRID.max_value, exclude_min=True)
any_value = st.one_of(
    in_range,
    st.floats(min_value=0.0, max_value=GRID.min_value),
    st.floats(min_value=GRID.max_value, max_value=1e12),
)
samples = st.lists(any_value, min_size=1, max_size=200)


def true_quantile(ordered: list[float], q: float) -> float:
    """The value of rank ceil(q * n), 1-based, with q read as the decimal it is written as."""
    rank = max(1, math.ceil(Fraction(str(q)) * len(ordered)))
    return ordered[rank - 1]


def histogram_of(values: list[float]) -> Histogram:
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    return histogram


def relative_error(estimate: float, truth: float) -> float:
    return abs(estimate - truth) / truth


def same_contents(a: Histogram, b: Histogram) -> bool:
    # The float sum depends on addition order; everything else must match exactly.
    return (
        a.counts == b.counts
        and a.count == b.count
        and a.min == b.min
        and a.max == b.max
        and math.isclose(a.sum, b.sum, rel_tol=1e-9)
    )


def regular_buckets() -> range:
    return range(1, GRID.overflow_index)


# --- the grid -------------------------------------------------------------------------------------


def test_default_grid_has_a_modest_fixed_size():
    assert GRID.gamma == pytest.approx(1.02 / 0.98)
    assert 380 <= GRID.bucket_count <= 400
    assert GRID.overflow_index == GRID.bucket_count - 1
    assert GRID.upper_bound(0) == GRID.min_value
    assert GRID.upper_bound(GRID.overflow_index - 1) == GRID.max_value
    assert GRID.upper_bound(GRID.overflow_index) == math.inf


def test_edges_grow_by_gamma_and_are_strictly_increasing():
    uppers = [GRID.upper_bound(i) for i in range(GRID.overflow_index)]
    assert all(lo < hi for lo, hi in itertools.pairwise(uppers))
    # Every bucket but the last regular one (cut at max_value) spans exactly one factor of gamma.
    for i in range(1, GRID.overflow_index - 1):
        assert GRID.upper_bound(i) / GRID.lower_bound(i) == pytest.approx(GRID.gamma, rel=1e-12)


@given(in_range)
def test_every_value_in_range_lies_in_its_bucket(value):
    index = GRID.index(value)
    assert 1 <= index < GRID.overflow_index
    assert GRID.lower_bound(index) < value <= GRID.upper_bound(index)


def test_bucket_edges_belong_to_the_bucket_below_them():
    for i in regular_buckets():
        upper = GRID.upper_bound(i)
        assert GRID.index(upper) == i
        assert GRID.index(math.nextafter(upper, math.inf)) == i + 1
        assert GRID.index(math.nextafter(GRID.lower_bound(i), math.inf)) == i


@given(in_range)
def test_representative_is_within_alpha_of_any_value_of_its_bucket(value):
    assert relative_error(GRID.representative(GRID.index(value)), value) <= TOLERANCE


def test_representative_is_within_alpha_of_both_edges_of_every_bucket():
    # Relative error against a representative is largest at a bucket's edges.
    for i in regular_buckets():
        representative = GRID.representative(i)
        assert GRID.lower_bound(i) < representative <= GRID.upper_bound(i)
        assert relative_error(representative, GRID.upper_bound(i)) <= TOLERANCE
        assert relative_error(representative, math.nextafter(GRID.lower_bound(i), math.inf)) <= TOLERANCE


def test_invalid_grids_are_refused():
    for arguments in (
        {"relative_accuracy": 0.0},
        {"relative_accuracy": 1.0},
        {"min_value": 0.0},
        {"min_value": 10.0, "max_value": 1.0},
        {"max_value": math.inf},
        {"relative_accuracy": 1e-6, "min_value": 1e-9, "max_value": 1e9},
    ):
        with pytest.raises(ValueError):
            BucketGrid(**arguments)


# --- values outside the range and invalid values --------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, -1.0, -1e-300, math.inf, -math.inf])
def test_nan_negative_and_infinite_values_raise(value):
    with pytest.raises(ValueError):
        GRID.index(value)
    with pytest.raises(ValueError):
        Histogram().add(value)


@pytest.mark.parametrize("value", [0.0, -0.0, 5e-324, 1e-9, 0.05, GRID.min_value])
def test_zero_and_tiny_values_go_to_bucket_zero(value):
    assert GRID.index(value) == 0


@pytest.mark.parametrize("value", [math.nextafter(GRID.max_value, math.inf), 1e9, 1e300])
def test_huge_values_go_to_the_overflow_bucket(value):
    assert GRID.index(value) == GRID.overflow_index


def test_quantiles_in_the_overflow_bucket_are_clamped_to_the_exact_maximum():
    histogram = histogram_of([2e6, 3e6, 4e6, 9e6])
    assert histogram.counts[GRID.overflow_index] == 4
    # The overflow representative (max_value) lies below every value: clamping lifts it to min.
    assert histogram.quantile(0.5) == 2e6
    assert histogram.quantile(0.99) == 9e6
    mixed = histogram_of([10.0] * 98 + [5e6, 7e6])
    assert mixed.quantile(0.995) == 7e6


def test_quantiles_in_bucket_zero_stay_within_the_exact_values():
    histogram = histogram_of([0.0, 0.0, 0.01, 0.02])
    assert histogram.quantile(0.5) == 0.02  # min_value / 2 clamped to the exact maximum
    assert histogram.quantile(0.0) == 0.0


def test_weights_count_a_value_many_times():
    weighted = Histogram()
    weighted.add(12.5, weight=3)
    assert weighted == histogram_of([12.5, 12.5, 12.5])
    with pytest.raises(ValueError):
        weighted.add(1.0, weight=0)


# --- quantiles ------------------------------------------------------------------------------------


def test_quantile_rank_is_the_ceiling_of_q_times_n_as_written():
    assert quantile_rank(0.07, 100) == 7  # 0.07 * 100 == 7.000000000000001 in binary floating point
    assert quantile_rank(0.5, 5) == 3
    assert quantile_rank(0.0, 5) == 1
    assert quantile_rank(1.0, 5) == 5
    for n in range(1, 400):
        for percent in range(101):
            assert quantile_rank(percent / 100, n) == max(1, math.ceil(Fraction(percent, 100) * n))
    for q in (-0.01, 1.01, math.nan):
        with pytest.raises(ValueError):
            quantile_rank(q, 10)


@given(st.lists(in_range, min_size=1, max_size=300))
def test_quantiles_are_within_alpha_of_the_true_quantile(values):
    histogram = histogram_of(values)
    ordered = sorted(values)
    for q in QUANTILES:
        estimate = histogram.quantile(q)
        assert estimate is not None
        assert relative_error(estimate, true_quantile(ordered, q)) <= TOLERANCE


@given(samples)
def test_extreme_quantiles_are_exact(values):
    histogram = histogram_of(values)
    assert histogram.quantile(0.0) == min(values) == histogram.min
    assert histogram.quantile(1.0) == max(values) == histogram.max


def test_quantiles_of_a_heavy_tailed_sample_are_within_alpha():
    generator = random.Random(20240611)
    # Median around 300 ms, p99 several seconds: a lognormal tail like real LLM latencies.
    values = [generator.lognormvariate(math.log(300.0), 1.3) for _ in range(100_000)]
    histogram = histogram_of(values)
    ordered = sorted(values)
    for q in QUANTILES:
        estimate = histogram.quantile(q)
        assert estimate is not None
        assert relative_error(estimate, true_quantile(ordered, q)) <= TOLERANCE
    assert quantile_from_counts(histogram.to_counts(), 0.99) == GRID.representative(
        GRID.index(true_quantile(ordered, 0.99))
    )


def test_empty_histograms_have_no_quantiles():
    assert Histogram().quantile(0.5) is None
    assert quantile_from_counts([0] * GRID.bucket_count, 0.5) is None
    assert Histogram().min is None
    assert Histogram().max is None
    with pytest.raises(ValueError):
        Histogram().quantile(1.5)


def test_quantile_from_counts_checks_the_array_length():
    with pytest.raises(ValueError):
        quantile_from_counts([1, 2, 3], 0.5)


# --- merging --------------------------------------------------------------------------------------


@settings(max_examples=scaled_examples(60))
@given(st.lists(samples, min_size=1, max_size=6))
def test_merging_parts_equals_the_histogram_of_the_whole(parts):
    merged = reduce(Histogram.merge, (histogram_of(part) for part in parts))
    whole = histogram_of([value for part in parts for value in part])
    assert same_contents(merged, whole)
    # Quantiles therefore agree too: minutes merged into an hour answer as the hour itself would.
    for q in QUANTILES:
        assert merged.quantile(q) == whole.quantile(q)


@settings(max_examples=scaled_examples(60))
@given(samples, samples, samples)
def test_merge_is_associative_and_commutative(a, b, c):
    x, y, z = histogram_of(a), histogram_of(b), histogram_of(c)
    assert same_contents(x.merge(y), y.merge(x))
    assert same_contents(x.merge(y).merge(z), x.merge(y.merge(z)))
    assert same_contents(x.merge(Histogram()), x)


def test_merge_returns_a_new_histogram_and_merge_into_changes_in_place():
    x, y = histogram_of([1.0, 2.0]), histogram_of([3.0])
    merged = x.merge(y)
    assert x.count == 2
    assert merged.count == 3
    x.merge_into(y)
    assert x == merged


def test_histograms_on_different_grids_do_not_merge():
    other = Histogram(BucketGrid(relative_accuracy=0.01))
    with pytest.raises(ValueError):
        Histogram().merge(other)


# --- wire forms -----------------------------------------------------------------------------------


@given(st.lists(any_value, max_size=200))
def test_sparse_and_dense_forms_round_trip(values):
    histogram = histogram_of(values)
    indexes, counts = histogram.to_sparse()
    assert len(indexes) == len({GRID.index(value) for value in values})
    restored_sparse = Histogram.from_sparse(
        indexes, counts, sum=histogram.sum, min=histogram.min, max=histogram.max
    )
    restored_dense = Histogram.from_counts(
        histogram.to_counts(), sum=histogram.sum, min=histogram.min, max=histogram.max
    )
    assert restored_sparse == histogram
    assert restored_dense == histogram


def test_malformed_wire_forms_are_refused():
    with pytest.raises(ValueError):
        Histogram.from_sparse([3, 2], [1, 1], sum=1.0, min=1.0, max=1.0)
    with pytest.raises(ValueError):
        Histogram.from_sparse([GRID.bucket_count], [1], sum=1.0, min=1.0, max=1.0)
    with pytest.raises(ValueError):
        Histogram.from_sparse([1], [1, 2], sum=1.0, min=1.0, max=1.0)
    with pytest.raises(ValueError):
        Histogram.from_counts([0] * (GRID.bucket_count - 1), sum=1.0, min=1.0, max=1.0)
    with pytest.raises(ValueError):
        Histogram.from_counts([-1] + [0] * (GRID.bucket_count - 1), sum=1.0, min=1.0, max=1.0)
    with pytest.raises(ValueError):
        Histogram.from_counts([1] + [0] * (GRID.bucket_count - 1), sum=0.0, min=None, max=None)


# --- agreement with ClickHouse (chDB, in memory) --------------------------------------------------


def _chdb_rows(sql: str) -> list[str]:
    chdb = pytest.importorskip("chdb")
    return str(chdb.query(sql, "CSV")).splitlines()


def _values_for_sql() -> list[float]:
    values = [0.0, 5e-324, 1e-9, GRID.min_value, GRID.max_value, 1e9, 1e300]
    for i in range(GRID.overflow_index):
        edge = GRID.upper_bound(i)
        values += [math.nextafter(edge, 0.0), edge, math.nextafter(edge, math.inf)]
    generator = random.Random(7)
    values += [generator.lognormvariate(math.log(300.0), 3.0) for _ in range(500)]  # beside every edge
    return values


def test_clickhouse_index_expression_matches_python_index():
    values = _values_for_sql()
    expression = GRID.clickhouse_index_expression("latency_ms")
    rows = []
    # Chunks keep each query well under ClickHouse's max_query_size (256 KiB).
    for start in range(0, len(values), 1_000):
        literal = "[" + ", ".join(repr(value) for value in values[start : start + 1_000]) + "]"
        rows += _chdb_rows(
            f"SELECT position, {expression} FROM "
            f"(SELECT arrayJoin(arrayZip(range(length({literal})), {literal})) AS pair, "
            f"pair.1 AS position, pair.2 AS latency_ms) ORDER BY position"
        )
    assert len(rows) == len(values)
    assert [int(row.split(",")[1]) for row in rows] == [GRID.index(value) for value in values]


def test_clickhouse_refuses_nan_rather_than_bucketing_it():
    chdb = pytest.importorskip("chdb")
    with pytest.raises(Exception, match="nan"):
        chdb.query(
            f"SELECT {GRID.clickhouse_index_expression('latency_ms')} FROM (SELECT nan AS latency_ms)", "CSV"
        )


def test_clickhouse_representatives_are_python_representatives():
    rows = _chdb_rows(f"SELECT arrayJoin({GRID.clickhouse_representatives()})")
    assert [float(row) for row in rows] == list(GRID.representatives())


def test_clickhouse_quantile_of_summed_minutes_matches_quantile_from_counts():
    generator = random.Random(11)
    minutes = [
        histogram_of(
            [generator.lognormvariate(math.log(200.0), 1.5) for _ in range(generator.randint(0, 500))]
        )
        for _ in range(30)
    ]
    summed = reduce(Histogram.merge, minutes).to_counts()
    arrays = "[" + ", ".join(str(minute.to_counts()) for minute in minutes) + "]"
    quantiles = (0.0, 0.07, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
    selected = ", ".join(GRID.clickhouse_quantile_expression("sumForEach(counts)", q) for q in quantiles)
    (row,) = _chdb_rows(f"SELECT {selected} FROM (SELECT arrayJoin({arrays}) AS counts)")
    assert [float(cell) for cell in row.split(",")] == [quantile_from_counts(summed, q) for q in quantiles]


def test_clickhouse_quantile_of_empty_counts_is_null():
    empty = str([0] * GRID.bucket_count)
    (row,) = _chdb_rows(f"SELECT {GRID.clickhouse_quantile_expression(empty, 0.5)}")
    assert row == "\\N"
