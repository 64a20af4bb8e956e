"""Variant readouts and model-version drift, read from the stored calls.

The statistics are in compare.py and stats.py; this module is their edge: it reads each group's
calls from `current_events` (every event with its latest feedback and price) through a `Querier`
(the sink's read-only endpoint, or a ClickHouse server) and hands them to `compare`.

- `readout`: two values of one dimension (variant_id A and B, say), optionally within a feature
  and a model, over a look-back period.
- `drift`: per model, the newest `model_version` (or `prompt_template_id`) seen in the period
  against the one before it (by first appearance), each compared on the same measures. A
  comparison whose readout says the newer one is worse is a drift; `drift_alert` turns it into an
  Alert for onfinish.alerts, with an id of its own so that it is raised once.

Each group reads at most `max_calls` calls, a deterministic sample (by event id) when it has more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from onfinish.errors import ConfigurationError
from onfinish.insights.compare import Calls, Outcome, Readout, compare
from onfinish.insights.compare import to_json as readout_json
from onfinish.insights.stats import Verdict
from onfinish.query.client import Querier, records, timestamp
from onfinish.query.sql import sql_string
from onfinish.schemas.models import Alert

# Dimensions a readout can split calls by: the event's own columns, never free text.
DIMENSIONS: Final = (
    "variant_id",
    "model_id",
    "model_version",
    "prompt_template_id",
    "feature_id",
    "environment",
    "provider",
    "region",
    "deployment_id",
    "routing_strategy",
    "service",
)
DriftDimension = Literal["model_version", "prompt_template_id"]
DEFAULT_MAX_CALLS: Final = 200_000
DRIFT_RULE: Final = "version_drift"
DRIFT_RULES_VERSION: Final = 1


def _dimension(name: str) -> str:
    if name not in DIMENSIONS:
        raise ConfigurationError(f"cannot compare by {name!r}: use one of {', '.join(DIMENSIONS)}")
    return name


def calls_sql(filters: Mapping[str, str], *, seconds: int, max_calls: int = DEFAULT_MAX_CALLS) -> str:
    """The measures of the calls whose dimensions equal `filters`, over the last `seconds`."""
    where = [f"finished_at >= now64(6) - INTERVAL {int(seconds)} SECOND"]
    where += [f"{_dimension(column)} = {sql_string(value)}" for column, value in filters.items()]
    return f"""
SELECT status = 'success' AS ok, latency_ms, ttft_ms, cost_usd, quality_score AS quality,
    regenerated, edited, ifNull(session_id, '') AS session_id
FROM current_events
WHERE {" AND ".join(where)}
ORDER BY cityHash64(event_id)
LIMIT {int(max_calls)}
"""  # noqa: S608 - columns from DIMENSIONS, values through sql_string, the rest numbers


def fetch_calls(
    q: Querier, filters: Mapping[str, str], *, seconds: int, max_calls: int = DEFAULT_MAX_CALLS
) -> Calls:
    return Calls.from_rows(records(q.query(calls_sql(filters, seconds=seconds, max_calls=max_calls))))


def readout(
    q: Querier,
    *,
    by: str,
    a: str,
    b: str,
    seconds: int,
    within: Mapping[str, str] | None = None,
    seed: int = 0,
    max_calls: int = DEFAULT_MAX_CALLS,
) -> Readout:
    """Calls with `by` = `a` against those with `by` = `b`, both within the `within` filters."""
    within = dict(within or {})
    if by in within:
        raise ConfigurationError(f"{by} is what is compared; it cannot also be a filter")
    groups = [
        fetch_calls(q, {**within, _dimension(by): value}, seconds=seconds, max_calls=max_calls)
        for value in (a, b)
    ]
    return compare(groups[0], groups[1], a_name=a, b_name=b, seed=seed)


@dataclass(frozen=True)
class Version:
    """One version of a model, as seen in the period."""

    provider: str
    model_id: str
    version: str
    first_seen: datetime
    calls: int


@dataclass(frozen=True)
class Drift:
    """A model's newest version against the previous one."""

    dimension: str
    previous: Version
    current: Version
    readout: Readout

    @property
    def worse(self) -> bool:
        return self.readout.outcome in (Outcome.WORSE, Outcome.MIXED) and any(
            d.verdict is Verdict.WORSE for d in self.readout.differences
        )


def versions_sql(dimension: DriftDimension, seconds: int) -> str:
    column = _dimension(dimension)
    return f"""
SELECT provider, model_id, {column} AS version, min(finished_at) AS first_seen, count() AS calls
FROM current_events
WHERE finished_at >= now64(6) - INTERVAL {int(seconds)} SECOND AND {column} IS NOT NULL
GROUP BY provider, model_id, version
ORDER BY provider, model_id, first_seen, version
"""  # noqa: S608 - the column comes from DIMENSIONS, the rest are numbers


def versions(q: Querier, dimension: DriftDimension, seconds: int) -> list[Version]:
    return [
        Version(
            str(row["provider"]),
            str(row["model_id"]),
            str(row["version"]),
            timestamp(row["first_seen"]),
            int(row["calls"]),
        )
        for row in records(q.query(versions_sql(dimension, seconds)))
    ]


def drift(
    q: Querier,
    *,
    dimension: DriftDimension = "model_version",
    seconds: int,
    seed: int = 0,
    max_calls: int = DEFAULT_MAX_CALLS,
) -> list[Drift]:
    """For every model with two versions or more in the period: the newest against the one before.

    Prompt templates are versioned by name (`summarise@v3`): only versions of one template are
    compared, since a model serves several templates at once (on loadgen's traffic, comparing
    `support-refund@v2` with `summarise@v3` as if one replaced the other found three models
    "worse" in normal traffic, each an alert episode).
    """
    by_model: dict[tuple[str, str, str], list[Version]] = {}
    for version in versions(q, dimension, seconds):
        family = version.version.split("@", 1)[0] if dimension == "prompt_template_id" else ""
        by_model.setdefault((version.provider, version.model_id, family), []).append(version)
    drifts = []
    for (provider, model_id, _), seen in sorted(by_model.items()):
        if len(seen) < 2:
            continue
        previous, current = seen[-2], seen[-1]
        within = {"provider": provider, "model_id": model_id}
        result = readout(
            q,
            by=dimension,
            a=previous.version,
            b=current.version,
            seconds=seconds,
            within=within,
            seed=seed,
            max_calls=max_calls,
        )
        drifts.append(Drift(dimension, previous, current, result))
    return drifts


def drift_alert(found: Drift, *, at: datetime | None = None) -> Alert:
    """The alert for a drift that made a model worse: once per model and pair of versions."""
    worst = next(d for d in found.readout.differences if d.verdict is Verdict.WORSE)
    subject = (
        f"{found.current.provider}/{found.current.model_id}:{found.previous.version}->{found.current.version}"
    )
    identity = hashlib.sha256(f"{DRIFT_RULE}|{found.dimension}|{subject}".encode()).hexdigest()[:32]
    return Alert(
        alert_id=identity,
        rule=DRIFT_RULE,
        rules_version=DRIFT_RULES_VERSION,
        severity="warning",
        subject_kind=found.dimension,
        subject=subject[:256],
        observed=worst.b_value,
        threshold=worst.a_value,
        provider=found.current.provider,
        model_id=found.current.model_id,
        at=at or datetime.now(UTC),
        message=found.readout.verdict[:1000],
        raw_partition=0,
    )


def to_json(found: list[Drift]) -> list[dict[str, Any]]:
    return [
        {
            "dimension": d.dimension,
            "provider": d.current.provider,
            "model_id": d.current.model_id,
            "previous": {"version": d.previous.version, "first_seen": d.previous.first_seen.isoformat()},
            "current": {"version": d.current.version, "first_seen": d.current.first_seen.isoformat()},
            "worse": d.worse,
            "readout": readout_json(d.readout),
        }
        for d in found
    ]
