"""Cost enrichment: what an onFinish event cost, priced from the versioned price catalog.

The catalog (``data/price_catalog.v1.toml``) is data, loaded and validated once at start into a
:class:`PriceCatalog`; :func:`compute_cost` is then a pure function of the catalog and one event.
Money is ``decimal.Decimal`` throughout, so a cost is exact to the cent and below and sums of many
events do not drift; convert to float only where a sink or an Avro field needs one.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Context, Decimal, Inexact, InvalidOperation
from importlib.resources import files
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from onfinish.errors import OnfinishError

CATALOG_RESOURCE: Final = ("data", "price_catalog.v1.toml")

SOURCE_REPORTED: Final = "reported"
SOURCE_UNPRICED: Final = "unpriced"

PRICE_MAX_DIGITS: Final = 18
PRICE_DECIMAL_PLACES: Final = 9

_ZERO: Final = Decimal(0)
_TOKENS_PER_PRICE_UNIT: Final = Decimal(1_000_000)
# Prices have at most PRICE_MAX_DIGITS digits and token counts at most 8, so every product and every
# division by a million is exact at this precision; trapping Inexact turns a silent rounding (a
# price with absurdly many digits) into an error instead of a wrong bill. An explicit context also
# keeps the result independent of whatever the calling thread did to decimal.getcontext().
_MONEY: Final = Context(prec=60, traps=[Inexact, InvalidOperation])


class PricingError(OnfinishError):
    """The price catalog cannot be read or is invalid."""


@dataclass(frozen=True)
class Price:
    """One catalog entry's prices, in USD per million tokens, and the period it applies to."""

    provider: str
    model: str
    model_version: str | None
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    output_per_mtok: Decimal
    reasoning_per_mtok: Decimal
    effective_from: date
    effective_to: date | None

    def applies_at(self, at: datetime) -> bool:
        """Whether ``at`` lies in [effective_from, effective_to), the dates read as 00:00 UTC."""
        if at.tzinfo is None:
            raise ValueError("prices are looked up at timezone-aware instants")
        instant = at.astimezone(UTC)
        if instant < _midnight_utc(self.effective_from):
            return False
        return self.effective_to is None or instant < _midnight_utc(self.effective_to)


@dataclass(frozen=True)
class ModelMetadata:
    """What the catalog knows about a model besides its price."""

    family: str
    context_window: int


@dataclass(frozen=True)
class CostBreakdown:
    """An event's cost in USD, by kind of token.

    ``source`` says where the number came from: ``"catalog:<version>"`` (priced from the catalog;
    ``total_usd`` is the exact sum of the four parts), ``"reported"`` (no catalog entry, the
    event's own ``reported_cost_usd``; the parts are zero because the event does not split it) or
    ``"unpriced"`` (neither; everything is zero).
    """

    input_usd: Decimal
    cached_input_usd: Decimal
    output_usd: Decimal
    reasoning_usd: Decimal
    total_usd: Decimal
    source: str

    @property
    def priced_from_catalog(self) -> bool:
        return self.source.startswith("catalog:")

    @property
    def total_usd_float(self) -> float:
        """The total as a float, for the edges (Avro doubles, ClickHouse Float64) and nowhere else."""
        return float(self.total_usd)


def _midnight_utc(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


# --- The file format, validated with pydantic ---------------------------------------------------


# Bounded digits keep every cost product within _MONEY's precision, so a catalog that loads can
# never make compute_cost raise Inexact on the hot path.
PerMillionTokens = Annotated[
    Decimal,
    Field(ge=0, allow_inf_nan=False, max_digits=PRICE_MAX_DIGITS, decimal_places=PRICE_DECIMAL_PLACES),
]


class _PriceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    model_version: str | None = Field(default=None, min_length=1)
    input_per_mtok: PerMillionTokens
    output_per_mtok: PerMillionTokens
    cached_input_per_mtok: PerMillionTokens
    reasoning_per_mtok: PerMillionTokens | None = None
    # A TOML date literal or an ISO date string; pydantic refuses a datetime with a time of day.
    effective_from: date
    effective_to: date | None = None
    family: str = Field(min_length=1)
    context_window: int = Field(gt=0)

    @model_validator(mode="after")
    def _period_is_not_empty(self) -> Self:
        if self.effective_to is not None and self.effective_to <= self.effective_from:
            raise ValueError(
                f"effective_to {self.effective_to} is not after effective_from {self.effective_from}"
            )
        return self

    def to_price(self) -> Price:
        return Price(
            provider=self.provider,
            model=self.model,
            model_version=self.model_version,
            input_per_mtok=self.input_per_mtok,
            cached_input_per_mtok=self.cached_input_per_mtok,
            output_per_mtok=self.output_per_mtok,
            # Most providers bill reasoning tokens as output; an entry says so only when they differ.
            reasoning_per_mtok=(
                self.output_per_mtok if self.reasoning_per_mtok is None else self.reasoning_per_mtok
            ),
            effective_from=self.effective_from,
            effective_to=self.effective_to,
        )


def _describe(entry: _PriceEntry) -> str:
    version = f" version {entry.model_version}" if entry.model_version is not None else " (any version)"
    return f"{entry.provider}/{entry.model}{version}"


def _period(entry: _PriceEntry) -> str:
    return f"{entry.effective_from}..{entry.effective_to or 'open end'}"


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    currency: Literal["USD"]
    price: list[_PriceEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _periods_do_not_overlap(self) -> Self:
        periods: dict[tuple[str, str, str | None], list[_PriceEntry]] = {}
        for entry in self.price:
            periods.setdefault((entry.provider, entry.model, entry.model_version), []).append(entry)
        for entries in periods.values():
            entries.sort(key=lambda entry: entry.effective_from)
            for earlier, later in pairwise(entries):
                if earlier.effective_to is None or earlier.effective_to > later.effective_from:
                    raise ValueError(
                        f"overlapping price periods for {_describe(earlier)}: "
                        f"{_period(earlier)} and {_period(later)}"
                    )
        return self

    @model_validator(mode="after")
    def _metadata_is_consistent(self) -> Self:
        seen: dict[tuple[str, str], ModelMetadata] = {}
        for entry in self.price:
            metadata = ModelMetadata(family=entry.family, context_window=entry.context_window)
            first = seen.setdefault((entry.provider, entry.model), metadata)
            if first != metadata:
                raise ValueError(
                    f"entries for {entry.provider}/{entry.model} disagree on model metadata: "
                    f"{first} and {metadata}"
                )
        return self


def _validation_message(error: ValidationError) -> str:
    problems = []
    for detail in error.errors():
        where = ".".join(
            f"[{part}]" if isinstance(part, int) else str(part) for part in detail["loc"]
        ).replace(".[", "[")
        context = detail.get("ctx") or {}
        # A ValueError raised by our own validators reads better without pydantic's prefix.
        message = str(context["error"]) if detail["type"] == "value_error" else detail["msg"]
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


# --- The catalog --------------------------------------------------------------------------------


class PriceCatalog:
    """Prices per provider, model and version over time, plus model metadata.

    Build it with :meth:`load` (a file, by default the packaged catalog) or :meth:`from_toml`;
    either validates the whole catalog and raises :class:`PricingError` saying what is wrong.
    """

    def __init__(
        self, version: str, prices: list[Price], metadata: Mapping[tuple[str, str], ModelMetadata]
    ) -> None:
        self.version = version
        self._prices: dict[tuple[str, str, str | None], tuple[Price, ...]] = {}
        for price in sorted(prices, key=lambda price: price.effective_from):
            key = (price.provider, price.model, price.model_version)
            self._prices[key] = (*self._prices.get(key, ()), price)
        self._metadata = dict(metadata)

    @classmethod
    def load(cls, path: Path | None = None) -> Self:
        """Read and validate a catalog file; without a path, the catalog shipped with onfinish."""
        try:
            if path is None:
                resource = files("onfinish.processors").joinpath(*CATALOG_RESOURCE)
                text = resource.read_text(encoding="utf-8")
                source = f"packaged {'/'.join(CATALOG_RESOURCE)}"
            else:
                text = path.read_text(encoding="utf-8")
                source = str(path)
        except (OSError, UnicodeDecodeError) as error:
            raise PricingError(
                f"cannot read the price catalog {path or CATALOG_RESOURCE}: {error}"
            ) from error
        return cls.from_toml(text, source=source)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<text>") -> Self:
        """Parse and validate a catalog from TOML text; ``source`` names it in error messages."""
        try:
            # Decimal straight from the TOML text: a float would turn 0.075 into 0.07499999...
            raw: dict[str, Any] = tomllib.loads(text, parse_float=Decimal)
        except tomllib.TOMLDecodeError as error:
            raise PricingError(f"price catalog {source} is not valid TOML: {error}") from error
        try:
            catalog = _CatalogFile.model_validate(raw)
        except ValidationError as error:
            raise PricingError(f"price catalog {source} is invalid: {_validation_message(error)}") from error
        metadata = {
            (entry.provider, entry.model): ModelMetadata(entry.family, entry.context_window)
            for entry in catalog.price
        }
        return cls(catalog.version, [entry.to_price() for entry in catalog.price], metadata)

    @property
    def source(self) -> str:
        """The ``CostBreakdown.source`` of a cost priced from this catalog."""
        return f"catalog:{self.version}"

    def price_for(self, provider: str, model: str, model_version: str | None, at: datetime) -> Price | None:
        """The price in force at ``at``: an entry for the exact version if one covers ``at``, else an
        entry for any version of the model, else None."""
        keys: list[tuple[str, str, str | None]] = [(provider, model, None)]
        if model_version is not None:
            keys.insert(0, (provider, model, model_version))
        for key in keys:
            for price in self._prices.get(key, ()):
                if price.applies_at(at):
                    return price
        return None

    def metadata(self, provider: str, model: str) -> ModelMetadata | None:
        return self._metadata.get((provider, model))

    def prices(self) -> list[Price]:
        """Every entry, in the order :meth:`price_for` tries them within a key (by effective date)."""
        return [price for prices in self._prices.values() for price in prices]

    def all_metadata(self) -> dict[tuple[str, str], ModelMetadata]:
        """Model metadata by (provider, model)."""
        return dict(self._metadata)


# --- Cost ---------------------------------------------------------------------------------------


def _cost(tokens: int, per_mtok: Decimal) -> Decimal:
    return _MONEY.divide(_MONEY.multiply(Decimal(tokens), per_mtok), _TOKENS_PER_PRICE_UNIT)


class Billable(Protocol):
    """What pricing reads of a call: an OnFinishEvent, or a stored event being re-priced."""

    @property
    def provider(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def model_version(self) -> str | None: ...
    @property
    def finished_at(self) -> datetime: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def reported_cost_usd(self) -> float | None: ...


def compute_cost(catalog: PriceCatalog, event: Billable) -> CostBreakdown:
    """What ``event`` cost, priced at ``event.finished_at`` (the moment the provider billed it).

    With P prompt, C cached, N completion and R reasoning tokens (cached within prompt, reasoning
    within completion, as the event contract counts them) and prices per million tokens::

        input_usd        = (P - C) * input_per_mtok        / 1e6
        cached_input_usd =  C      * cached_input_per_mtok / 1e6
        output_usd       = (N - R) * output_per_mtok       / 1e6
        reasoning_usd    =  R      * reasoning_per_mtok    / 1e6
        total_usd        = input_usd + cached_input_usd + output_usd + reasoning_usd

    all in exact decimal arithmetic. A producer that reports more reasoning than completion tokens
    counted them outside the completion; its visible output (N - R) is then taken as zero rather than
    negative. Without a catalog entry the event's ``reported_cost_usd`` is the total (source
    ``"reported"``), and without that the cost is zero (source ``"unpriced"``), so that downstream
    sums can tell a free call from one nobody could price.
    """
    price = catalog.price_for(event.provider, event.model_id, event.model_version, event.finished_at)
    if price is None:
        return _unpriced(event.reported_cost_usd)
    cached = min(event.cached_tokens, event.prompt_tokens)
    reasoning = event.reasoning_tokens
    input_usd = _cost(event.prompt_tokens - cached, price.input_per_mtok)
    cached_input_usd = _cost(cached, price.cached_input_per_mtok)
    output_usd = _cost(max(event.completion_tokens - reasoning, 0), price.output_per_mtok)
    reasoning_usd = _cost(reasoning, price.reasoning_per_mtok)
    total = _MONEY.add(_MONEY.add(input_usd, cached_input_usd), _MONEY.add(output_usd, reasoning_usd))
    return CostBreakdown(
        input_usd=input_usd,
        cached_input_usd=cached_input_usd,
        output_usd=output_usd,
        reasoning_usd=reasoning_usd,
        total_usd=total,
        source=catalog.source,
    )


def _unpriced(reported_cost_usd: float | None) -> CostBreakdown:
    if reported_cost_usd is None:
        return CostBreakdown(_ZERO, _ZERO, _ZERO, _ZERO, _ZERO, SOURCE_UNPRICED)
    # str() first: the float's shortest repr is what the producer meant (0.1, not 0.1000000000000000055).
    reported = Decimal(str(reported_cost_usd))
    return CostBreakdown(_ZERO, _ZERO, _ZERO, _ZERO, reported, SOURCE_REPORTED)
