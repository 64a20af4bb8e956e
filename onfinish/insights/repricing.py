"""Re-pricing: apply a price-catalog version to stored calls, so every total reflects the new prices.

Providers change their prices, and a catalog corrected after the fact must reach history too.
`reprice` prices each stored call again from its tokens (input, cached input, output, reasoning;
the same `compute_cost` the processors use) and returns two kinds of corrections, which `onfinish
reprice` sends through Kafka so that the sink stores them like everything else (and in server
mode as in embedded mode):

- one CostCorrection per call (table event_costs): its cost at the new prices, the catalog
  version (`cost_source`), and the cost it was stored with. The current_events view and the views
  over it (cost_by_dimension, session_costs) take the latest correction of each call.
- one WindowCostCorrection per minute and dimension set (a windows_1m row of its own, with no
  calls): the sum over the minute's calls of new cost minus stored cost, so that sums over the
  windows (model_hourly, the report, the dashboard) move by exactly the same amount.

Idempotent by construction: a correction replaces the previous one of the same call or minute
(the latest re-pricing wins), and both are computed against the cost the call was *stored* with,
never against an earlier correction; so re-pricing twice with one catalog gives the totals of
re-pricing once, and a later catalog replaces an earlier one instead of adding to it. The period
is whole minutes, so no minute's correction covers only part of its calls.

Windows leave out calls that arrived after their minute closed; their deltas are in the window
corrections all the same (the stored events are what is re-priced), a difference bounded by the
share of late calls, which the processors count (onfinish_processor_late).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from onfinish.errors import ConfigurationError
from onfinish.processors.pricing import PriceCatalog, compute_cost
from onfinish.processors.windows import WindowKey, window_start
from onfinish.query.client import Querier, records, timestamp
from onfinish.query.sql import sql_timestamp
from onfinish.schemas.models import CostCorrection, WindowCostCorrection
from onfinish.sinks.tables import REPRICING_PARTITION

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class StoredCall:
    """What a re-pricing reads of a stored event (pricing's Billable, plus its window's dimensions)."""

    event_id: UUID
    request_id: str
    session_id: str | None
    finished_at: datetime
    provider: str
    model_id: str
    model_version: str | None
    feature_id: str
    variant_id: str
    environment: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    reported_cost_usd: float | None
    ingested_cost_usd: float
    current_cost_usd: float

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredCall:
        return cls(
            event_id=UUID(str(row["event_id"])),
            request_id=str(row["request_id"]),
            session_id=row["session_id"],
            finished_at=timestamp(row["finished_at"]),
            provider=str(row["provider"]),
            model_id=str(row["model_id"]),
            model_version=row["model_version"],
            feature_id=row["feature_id"] or "",
            variant_id=row["variant_id"] or "",
            environment=str(row["environment"]),
            status=str(row["status"]),
            prompt_tokens=int(row["prompt_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            cached_tokens=int(row["cached_tokens"]),
            reasoning_tokens=int(row["reasoning_tokens"]),
            reported_cost_usd=None if row["reported_cost_usd"] is None else float(row["reported_cost_usd"]),
            ingested_cost_usd=float(row["ingested_cost_usd"]),
            current_cost_usd=float(row["cost_usd"]),
        )


def period(since: timedelta, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) in whole minutes: from the minute `since` ago to the end of the current one."""
    end = window_start(now) + MINUTE
    return window_start(now - since), end


def stored_calls_sql(start: datetime, end: datetime) -> str:
    """Every stored call that finished in [start, end), with its stored and its current cost."""

    return f"""
SELECT event_id, request_id, session_id, finished_at, provider, model_id, model_version,
    feature_id, variant_id, environment, status, prompt_tokens, completion_tokens, cached_tokens,
    reasoning_tokens, reported_cost_usd, ingested_cost_usd, cost_usd
FROM current_events
WHERE finished_at >= {sql_timestamp(start)} AND finished_at < {sql_timestamp(end)}
"""  # noqa: S608 - two timestamps formatted here, nothing else


def stored_calls(q: Querier, start: datetime, end: datetime) -> list[StoredCall]:
    return [StoredCall.from_row(row) for row in records(q.query(stored_calls_sql(start, end)))]


@dataclass
class Totals:
    calls: int = 0
    ingested_usd: float = 0.0
    current_usd: float = 0.0
    repriced_usd: float = 0.0

    @property
    def change_usd(self) -> float:
        """How much the re-pricing moves the total from what it is now."""
        return self.repriced_usd - self.current_usd


@dataclass
class Repricing:
    """The corrections of one re-pricing, and what it changes."""

    cost_source: str
    repriced_at: datetime
    start: datetime
    end: datetime
    corrections: list[CostCorrection] = field(default_factory=list)
    windows: list[WindowCostCorrection] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    by_model: dict[tuple[str, str], Totals] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)  # how many calls each cost source priced


def reprice(
    calls: Iterable[StoredCall],
    catalog: PriceCatalog,
    *,
    repriced_at: datetime,
    start: datetime,
    end: datetime,
) -> Repricing:
    """Price `calls` with `catalog`; the corrections to store, and the totals before and after."""
    version = int(repriced_at.timestamp() * 1_000_000)
    result = Repricing(catalog.source, repriced_at, start, end)
    window_deltas: dict[WindowKey, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for call in calls:
        cost = compute_cost(catalog, call)
        new_cost = cost.total_usd_float
        result.corrections.append(
            CostCorrection(
                event_id=call.event_id,
                request_id=call.request_id,
                session_id=call.session_id,
                finished_at=call.finished_at,
                provider=call.provider,
                model_id=call.model_id,
                cost_input_usd=float(cost.input_usd),
                cost_cached_input_usd=float(cost.cached_input_usd),
                cost_output_usd=float(cost.output_usd),
                cost_reasoning_usd=float(cost.reasoning_usd),
                cost_usd=new_cost,
                cost_source=cost.source,
                ingested_cost_usd=call.ingested_cost_usd,
                version=version,
                repriced_at=repriced_at,
            )
        )
        result.sources[cost.source] = result.sources.get(cost.source, 0) + 1
        # The window the processors counted this call in: the same key, so the correction lands on
        # the windows_1m row it corrects.
        key = WindowKey(
            window_start(call.finished_at),
            call.provider,
            call.model_id,
            call.feature_id,
            call.variant_id,
            call.environment,
            call.status,
        )
        delta = window_deltas[key]
        delta[0] += new_cost - call.ingested_cost_usd
        delta[1] += 1
        for totals in (result.totals, result.by_model.setdefault((call.provider, call.model_id), Totals())):
            totals.calls += 1
            totals.ingested_usd += call.ingested_cost_usd
            totals.current_usd += call.current_cost_usd
            totals.repriced_usd += new_cost
    for window, (delta_usd, count) in sorted(window_deltas.items()):
        result.windows.append(
            WindowCostCorrection(
                window_start=window.window_start,
                window_end=window.window_start + MINUTE,
                provider=window.provider,
                model_id=window.model_id,
                feature_id=window.feature_id,
                variant_id=window.variant_id,
                environment=window.environment,
                status=window.status,
                cost_delta_usd=delta_usd,
                repriced_events=int(count),
                cost_source=catalog.source,
                version=version,
                repriced_at=repriced_at,
            )
        )
    return result


def _usd(value: float) -> str:
    return f"${value:,.4f}"


def _signed_usd(value: float) -> str:
    return f"{'+' if value >= 0 else '-'}${abs(value):,.4f}"


def summary_lines(result: Repricing) -> list[str]:
    """What the re-pricing changes, for people: per model, then in total."""
    lines = [
        f"Re-pricing with {result.cost_source}: calls that finished from {result.start:%Y-%m-%d %H:%M} "
        f"to {result.end:%Y-%m-%d %H:%M} UTC.",
        "",
        f"{'provider/model':<40} {'calls':>8} {'stored':>14} {'now':>14} {'re-priced':>14} {'change':>14}",
    ]
    biggest_change_first = sorted(result.by_model.items(), key=lambda item: -abs(item[1].change_usd))
    for (provider, model_id), totals in biggest_change_first:
        amounts = (totals.ingested_usd, totals.current_usd, totals.repriced_usd)
        lines.append(
            f"{provider + '/' + model_id:<40} {totals.calls:>8} "
            + " ".join(f"{_usd(amount):>14}" for amount in amounts)
            + f" {_signed_usd(totals.change_usd):>14}"
        )
    total = result.totals
    share = f" ({total.change_usd / total.current_usd:+.2%})" if total.current_usd else ""
    priced = ", ".join(f"{count} {source}" for source, count in sorted(result.sources.items()))
    lines += [
        "",
        f"Total over {total.calls} calls: {_usd(total.current_usd)} now, "
        f"{_usd(total.repriced_usd)} re-priced: {_signed_usd(total.change_usd)}{share}.",
        f"Priced: {priced or 'nothing'}. {len(result.windows)} minute corrections.",
    ]
    return lines


def load_catalog(name: str) -> PriceCatalog:
    """The catalog `name` names: a catalog file, or the version of the catalog onfinish ships."""
    path = Path(name)
    if path.suffix == ".toml" or path.is_file():
        return PriceCatalog.load(path)
    packaged = PriceCatalog.load()
    if packaged.version == name:
        return packaged
    raise ConfigurationError(
        f"{name!r} is neither a catalog file (.toml) nor the packaged catalog's version ({packaged.version})"
    )


def applied(q: Querier, result: Repricing) -> tuple[int, int]:
    """How many of the re-pricing's call and minute corrections ClickHouse holds now."""
    version = int(result.repriced_at.timestamp() * 1_000_000)
    counts = f"""
SELECT
    (SELECT count() FROM event_costs FINAL WHERE version = {version}),
    (SELECT count() FROM windows_1m FINAL WHERE raw_partition = {REPRICING_PARTITION} AND version = {version})
"""  # noqa: S608 - numbers only
    calls, minutes = q.query(counts).rows[0]
    return int(calls), int(minutes)
