"""Cost enrichment: the packaged catalog, exact decimal costs, date and version selection, bad catalogs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onfinish.errors import OnfinishError
from onfinish.loadgen.traffic import _MODELS, TRAFFIC_START, TrafficGenerator, TrafficProfile
from onfinish.processors.pricing import (
    CostBreakdown,
    ModelMetadata,
    PriceCatalog,
    PricingError,
    compute_cost,
)
from onfinish.schemas.models import MAX_TOKENS, OnFinishEvent

AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

# Prices chosen so that every kind of token has its own price and a mistake shows in the total.
TEST_CATALOG = """
version = "test-1"
currency = "USD"

[[price]]
provider = "acme"
model = "wile-1"
input_per_mtok = 3.00
cached_input_per_mtok = 0.30
output_per_mtok = 15.00
reasoning_per_mtok = 20.00
effective_from = 2025-01-01
family = "wile"
context_window = 200000

[[price]]
provider = "acme"
model = "wile-1"
model_version = "wile-1-special"
input_per_mtok = 1.00
cached_input_per_mtok = 0.10
output_per_mtok = 5.00
effective_from = 2025-01-01
family = "wile"
context_window = 200000
"""

ENTRY = """
[[price]]
provider = "acme"
model = "road-1"
input_per_mtok = 1.00
cached_input_per_mtok = 0.50
output_per_mtok = 2.00
effective_from = 2025-01-01
family = "road"
context_window = 8000
"""


@pytest.fixture(scope="module")
def packaged() -> PriceCatalog:
    return PriceCatalog.load()


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.from_toml(TEST_CATALOG, source="test")


def _event(
    *,
    provider: str = "acme",
    model_id: str = "wile-1",
    model_version: str | None = None,
    prompt_tokens: int = 0,
    cached_tokens: int = 0,
    completion_tokens: int = 0,
    reasoning_tokens: int = 0,
    reported_cost_usd: float | None = None,
    finished_at: datetime = AT,
) -> OnFinishEvent:
    return OnFinishEvent(
        request_id="req-1",
        service="test",
        provider=provider,
        model_id=model_id,
        model_version=model_version,
        started_at=finished_at - timedelta(seconds=1),
        finished_at=finished_at,
        latency_ms=1000.0,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
        completion_tokens=completion_tokens,
        reasoning_tokens=reasoning_tokens,
        reported_cost_usd=reported_cost_usd,
    )


def _parts_sum(cost: CostBreakdown) -> Decimal:
    return cost.input_usd + cost.cached_input_usd + cost.output_usd + cost.reasoning_usd


# --- The packaged catalog -----------------------------------------------------------------------


def test_packaged_catalog_loads_with_its_version(packaged: PriceCatalog) -> None:
    assert packaged.version == "2026-11-01"
    assert packaged.source == "catalog:2026-11-01"


def test_packaged_catalog_loads_from_an_explicit_path_too() -> None:
    path = Path(__file__).resolve().parents[2] / "processors" / "data" / "price_catalog.v1.toml"
    assert PriceCatalog.load(path).version == PriceCatalog.load().version


@pytest.mark.parametrize("model", _MODELS, ids=lambda model: model.model_id)
def test_packaged_catalog_prices_every_model_of_the_traffic_generator(packaged: PriceCatalog, model) -> None:
    price = packaged.price_for(model.provider, model.model_id, model.model_version, TRAFFIC_START)
    assert price is not None
    assert price.input_per_mtok > 0 and price.output_per_mtok > 0
    assert price.cached_input_per_mtok <= price.input_per_mtok
    metadata = packaged.metadata(model.provider, model.model_id)
    assert metadata is not None
    assert metadata.family and metadata.context_window > 0


def test_every_generated_event_is_priced_from_the_catalog(packaged: PriceCatalog) -> None:
    generator = TrafficGenerator(TrafficProfile(malformed_share=0, feedback_share=0), seed=1)
    events = [item for item in generator.items(3_000) if isinstance(item, OnFinishEvent)]
    assert len(events) == 3_000
    assert {(event.provider, event.model_id) for event in events} == {
        (model.provider, model.model_id) for model in _MODELS
    }
    for event in events:
        cost = compute_cost(packaged, event)
        assert cost.source.startswith("catalog:"), (event.provider, event.model_id, event.model_version)
        assert cost.total_usd == _parts_sum(cost)
        assert cost.total_usd >= 0


def test_packaged_catalog_metadata(packaged: PriceCatalog) -> None:
    assert packaged.metadata("openai", "gpt-4o") == ModelMetadata(family="gpt-4o", context_window=128_000)
    assert packaged.metadata("openai", "no-such-model") is None


def test_packaged_catalog_has_a_price_change_for_gpt_4o(packaged: PriceCatalog) -> None:
    boundary = datetime(2024, 10, 2, tzinfo=UTC)
    before = packaged.price_for("openai", "gpt-4o", None, boundary - timedelta(microseconds=1))
    at = packaged.price_for("openai", "gpt-4o", None, boundary)
    after = packaged.price_for("openai", "gpt-4o", None, boundary + timedelta(days=400))
    assert before is not None and at is not None and after is not None
    assert (before.input_per_mtok, before.output_per_mtok) == (Decimal("5.00"), Decimal("15.00"))
    assert (at.input_per_mtok, at.output_per_mtok) == (Decimal("2.50"), Decimal("10.00"))
    assert after == at
    # The pinned snapshot kept its launch price after the alias moved on.
    pinned = packaged.price_for("openai", "gpt-4o", "gpt-4o-2024-05-13", boundary + timedelta(days=1))
    assert pinned is not None and pinned.input_per_mtok == Decimal("5.00")


# --- Exact costs --------------------------------------------------------------------------------


def test_hand_computed_cost_with_cached_and_reasoning_tokens(catalog: PriceCatalog) -> None:
    event = _event(
        prompt_tokens=12_345, cached_tokens=10_000, completion_tokens=2_345, reasoning_tokens=1_000
    )
    cost = compute_cost(catalog, event)
    # 2,345 fresh x $3 + 10,000 cached x $0.30 + 1,345 visible x $15 + 1,000 reasoning x $20, per million.
    assert cost.input_usd == Decimal("0.007035")
    assert cost.cached_input_usd == Decimal("0.003")
    assert cost.output_usd == Decimal("0.020175")
    assert cost.reasoning_usd == Decimal("0.02")
    assert cost.total_usd == Decimal("0.050210")
    assert cost.total_usd.quantize(Decimal("0.01")) == Decimal("0.05")
    assert cost.total_usd.quantize(Decimal("0.000001")) == Decimal("0.050210")
    assert cost.source == "catalog:test-1"
    assert cost.total_usd_float == pytest.approx(0.05021)


def test_hand_computed_cost_on_the_packaged_catalog(packaged: PriceCatalog) -> None:
    # o3-mini: $1.10 input, $0.55 cached, $4.40 output and reasoning per million tokens.
    event = _event(
        provider="openai",
        model_id="o3-mini",
        model_version="o3-mini-2025-01-31",
        prompt_tokens=1_500,
        cached_tokens=1_024,
        completion_tokens=900,
        reasoning_tokens=640,
    )
    cost = compute_cost(packaged, event)
    assert cost.input_usd == Decimal("0.0005236")  # 476 x 1.10
    assert cost.cached_input_usd == Decimal("0.0005632")  # 1,024 x 0.55
    assert cost.output_usd == Decimal("0.001144")  # 260 x 4.40
    assert cost.reasoning_usd == Decimal("0.002816")  # 640 x 4.40
    assert cost.total_usd == Decimal("0.0050468")


def test_cost_is_priced_at_finished_at_across_a_price_change(packaged: PriceCatalog) -> None:
    boundary = datetime(2024, 10, 2, tzinfo=UTC)

    def total(at: datetime) -> Decimal:
        event = _event(provider="openai", model_id="gpt-4o", prompt_tokens=1_000_000, finished_at=at)
        return compute_cost(packaged, event).total_usd

    assert total(boundary - timedelta(microseconds=1)) == Decimal("5")
    assert total(boundary) == Decimal("2.5")
    assert total(boundary + timedelta(hours=1)) == Decimal("2.5")


def test_effective_dates_are_utc_midnights_whatever_the_timezone_of_the_instant(
    packaged: PriceCatalog,
) -> None:
    # 01:30 on 2 October in UTC+2 is still 1 October in UTC, so the old price applies.
    instant = datetime(2024, 10, 2, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    price = packaged.price_for("openai", "gpt-4o", None, instant)
    assert price is not None and price.input_per_mtok == Decimal("5.00")


def test_naive_instants_are_refused(packaged: PriceCatalog) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        packaged.price_for("openai", "gpt-4o", None, datetime(2025, 1, 1))


def test_before_the_first_period_there_is_no_price(packaged: PriceCatalog) -> None:
    assert packaged.price_for("openai", "gpt-4o", None, datetime(2024, 5, 12, 23, 59, tzinfo=UTC)) is None


def test_exact_version_is_preferred_over_a_versionless_entry(catalog: PriceCatalog) -> None:
    special = catalog.price_for("acme", "wile-1", "wile-1-special", AT)
    other = catalog.price_for("acme", "wile-1", "wile-1-other", AT)
    unversioned = catalog.price_for("acme", "wile-1", None, AT)
    assert special is not None and special.model_version == "wile-1-special"
    assert special.input_per_mtok == Decimal("1.00")
    # No reasoning price in the entry: reasoning is billed as output.
    assert special.reasoning_per_mtok == special.output_per_mtok
    assert other is not None and other.model_version is None
    assert unversioned == other


def test_exact_version_falls_back_to_versionless_outside_its_period() -> None:
    text = TEST_CATALOG.replace(
        'model_version = "wile-1-special"', 'model_version = "wile-1-special"\neffective_to = 2025-06-01'
    )
    catalog = PriceCatalog.from_toml(text)
    late = catalog.price_for("acme", "wile-1", "wile-1-special", datetime(2025, 6, 1, tzinfo=UTC))
    assert late is not None and late.model_version is None


def test_unknown_model_falls_back_to_reported_cost_then_unpriced(catalog: PriceCatalog) -> None:
    reported = compute_cost(catalog, _event(model_id="unknown", prompt_tokens=100, reported_cost_usd=0.1))
    assert reported.source == "reported"
    assert reported.total_usd == Decimal("0.1")
    assert reported.input_usd == reported.output_usd == 0

    unpriced = compute_cost(catalog, _event(model_id="unknown", prompt_tokens=100))
    assert unpriced.source == "unpriced"
    assert unpriced.total_usd == 0 and _parts_sum(unpriced) == 0


def test_catalog_price_wins_over_reported_cost(catalog: PriceCatalog) -> None:
    cost = compute_cost(catalog, _event(prompt_tokens=1_000_000, reported_cost_usd=99.0))
    assert cost.source == "catalog:test-1"
    assert cost.total_usd == Decimal("3")


def test_reasoning_beyond_completion_does_not_make_output_negative(catalog: PriceCatalog) -> None:
    cost = compute_cost(catalog, _event(completion_tokens=10, reasoning_tokens=50))
    assert cost.output_usd == 0
    assert cost.reasoning_usd == Decimal("0.001")


# --- Invalid catalogs ---------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _invalid(tmp_path: Path, text: str) -> str:
    with pytest.raises(PricingError) as raised:
        PriceCatalog.load(_write(tmp_path, text))
    assert isinstance(raised.value, OnfinishError)
    return str(raised.value)


HEADER = 'version = "t"\ncurrency = "USD"\n'


def test_overlapping_periods_are_refused(tmp_path: Path) -> None:
    second = ENTRY.replace("effective_from = 2025-01-01", "effective_from = 2025-03-01")
    message = _invalid(tmp_path, HEADER + ENTRY + second)
    assert "overlapping price periods for acme/road-1 (any version)" in message
    assert "2025-01-01..open end" in message


def test_overlapping_bounded_periods_are_refused(tmp_path: Path) -> None:
    first = ENTRY.replace(
        "effective_from = 2025-01-01", "effective_from = 2025-01-01\neffective_to = 2025-04-01"
    )
    second = ENTRY.replace("effective_from = 2025-01-01", "effective_from = 2025-03-01")
    assert "overlapping" in _invalid(tmp_path, HEADER + first + second)


def test_adjacent_periods_and_other_versions_are_not_an_overlap(tmp_path: Path) -> None:
    first = ENTRY.replace(
        "effective_from = 2025-01-01", "effective_from = 2025-01-01\neffective_to = 2025-03-01"
    )
    second = ENTRY.replace("effective_from = 2025-01-01", "effective_from = 2025-03-01")
    versioned = ENTRY.replace('model = "road-1"', 'model = "road-1"\nmodel_version = "road-1-a"')
    catalog = PriceCatalog.load(_write(tmp_path, HEADER + first + second + versioned))
    assert catalog.version == "t"


def test_negative_price_is_refused(tmp_path: Path) -> None:
    message = _invalid(tmp_path, HEADER + ENTRY.replace("output_per_mtok = 2.00", "output_per_mtok = -2.00"))
    assert "price[0].output_per_mtok" in message
    assert "greater than or equal to 0" in message


def test_prices_with_more_precision_than_costs_can_carry_are_refused(tmp_path: Path) -> None:
    message = _invalid(
        tmp_path, HEADER + ENTRY.replace("input_per_mtok = 1.00", "input_per_mtok = 1.0000000001")
    )
    assert "price[0].input_per_mtok" in message
    assert "decimal places" in message


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    message = _invalid(tmp_path, HEADER + ENTRY + "discount = 0.1\n")
    assert "price[0].discount" in message
    assert "Extra inputs are not permitted" in message


def test_missing_version_is_refused(tmp_path: Path) -> None:
    message = _invalid(tmp_path, 'currency = "USD"\n' + ENTRY)
    assert "version: Field required" in message


def test_bad_dates_are_refused(tmp_path: Path) -> None:
    backwards = ENTRY.replace(
        "effective_from = 2025-01-01", "effective_from = 2025-01-01\neffective_to = 2024-01-01"
    )
    assert "effective_to 2024-01-01 is not after effective_from 2025-01-01" in _invalid(
        tmp_path, HEADER + backwards
    )
    not_a_date = ENTRY.replace("effective_from = 2025-01-01", 'effective_from = "soon"')
    assert "price[0].effective_from" in _invalid(tmp_path, HEADER + not_a_date)
    impossible = ENTRY.replace("effective_from = 2025-01-01", "effective_from = 2025-13-01")
    assert "not valid TOML" in _invalid(tmp_path, HEADER + impossible)


def test_other_currencies_and_inconsistent_metadata_are_refused(tmp_path: Path) -> None:
    assert "currency" in _invalid(tmp_path, HEADER.replace("USD", "EUR") + ENTRY)
    other = ENTRY.replace(
        "effective_from = 2025-01-01", "effective_from = 2025-01-01\neffective_to = 2025-02-01"
    )
    later = ENTRY.replace("effective_from = 2025-01-01", "effective_from = 2025-02-01").replace(
        "context_window = 8000", "context_window = 16000"
    )
    assert "disagree on model metadata" in _invalid(tmp_path, HEADER + other + later)


def test_missing_file_is_a_pricing_error(tmp_path: Path) -> None:
    with pytest.raises(PricingError, match="cannot read the price catalog"):
        PriceCatalog.load(tmp_path / "absent.toml")


# --- Properties ---------------------------------------------------------------------------------

# Two counts and an increment must stay within the contract's bound on prompt and completion tokens.
TOKENS = st.integers(min_value=0, max_value=MAX_TOKENS // 4)
PRICE = st.decimals(min_value=0, max_value=1_000, places=4, allow_nan=False, allow_infinity=False)


def _catalog_with(input_: Decimal, cached: Decimal, output: Decimal, reasoning: Decimal) -> PriceCatalog:
    return PriceCatalog.from_toml(
        f"""
version = "p"
currency = "USD"
[[price]]
provider = "acme"
model = "wile-1"
input_per_mtok = {input_:f}
cached_input_per_mtok = {cached:f}
output_per_mtok = {output:f}
reasoning_per_mtok = {reasoning:f}
effective_from = 2025-01-01
family = "wile"
context_window = 1000
"""
    )


def _split_event(fresh: int, cached: int, visible: int, reasoning: int) -> OnFinishEvent:
    return _event(
        prompt_tokens=fresh + cached,
        cached_tokens=cached,
        completion_tokens=visible + reasoning,
        reasoning_tokens=reasoning,
    )


@given(prices=st.tuples(PRICE, PRICE, PRICE, PRICE), tokens=st.tuples(TOKENS, TOKENS, TOKENS, TOKENS))
def test_total_is_the_exact_sum_of_parts(prices, tokens) -> None:
    cost = compute_cost(_catalog_with(*prices), _split_event(*tokens))
    assert cost.total_usd == _parts_sum(cost)
    expected = sum(
        (Decimal(count) * price for count, price in zip(tokens, prices, strict=True)), Decimal(0)
    ) / Decimal(1_000_000)
    assert cost.total_usd == expected


@given(
    prices=st.tuples(PRICE, PRICE, PRICE, PRICE),
    tokens=st.tuples(TOKENS, TOKENS, TOKENS, TOKENS),
    which=st.integers(min_value=0, max_value=3),
    extra=st.integers(min_value=1, max_value=1_000_000),
)
def test_cost_is_monotonic_in_each_token_count(prices, tokens, which, extra) -> None:
    catalog = _catalog_with(*prices)
    more = list(tokens)
    more[which] += extra
    assert (
        compute_cost(catalog, _split_event(*more)).total_usd
        >= compute_cost(catalog, _split_event(*tokens)).total_usd
    )


@given(tokens=st.tuples(TOKENS, TOKENS, TOKENS, TOKENS), extra=st.integers(min_value=1, max_value=1_000_000))
def test_cost_is_monotonic_in_prompt_and_completion_tokens(catalog: PriceCatalog, tokens, extra) -> None:
    fresh, cached, visible, reasoning = tokens
    base = compute_cost(catalog, _split_event(fresh, cached, visible, reasoning)).total_usd
    assert compute_cost(catalog, _split_event(fresh + extra, cached, visible, reasoning)).total_usd >= base
    assert compute_cost(catalog, _split_event(fresh, cached, visible + extra, reasoning)).total_usd >= base


@given(prices=st.tuples(PRICE, PRICE, PRICE, PRICE))
def test_zero_tokens_cost_nothing(prices) -> None:
    cost = compute_cost(_catalog_with(*prices), _split_event(0, 0, 0, 0))
    assert cost.total_usd == 0
    assert cost.source == "catalog:p"
