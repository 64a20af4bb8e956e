"""Views: every analyst view against an independent computation over the same rows.

The rows include what re-delivery and re-emission leave behind (older window and session
snapshots, re-processed events, re-delivered dead letters), with merges stopped so that they are
still there when the views are read: a view that forgot FINAL would count them.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from onfinish.processors.histograms import Histogram
from onfinish.schemas.contract import ENRICHED_EVENT, QUALITY_UPDATE, SESSION_SNAPSHOT, WINDOW_SNAPSHOT
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.histogram_grid import quantile_from_counts
from onfinish.schemas.models import Status
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.tables import DLQ_COLUMNS, TABLES, dlq_row
from tests.sinks.test_tables import (
    NOW,
    count,
    decoded,
    decoded_record,
    enriched_events,
    read,
    rows_of,
    session_datums,
)

EVENTS, WINDOWS, SESSIONS = (TABLES[r.full_name] for r in (ENRICHED_EVENT, WINDOW_SNAPSHOT, SESSION_SNAPSHOT))
T0 = datetime(2026, 11, 23, 22, 0, tzinfo=UTC)  # three hours over two days: 22:00, 23:00, 00:00
MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("openai", "embed-3"),
]
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[Client]:
    # chDB holds one data directory per process: the client must be closed before another opens.
    client = clickhouse_connect.get_client(dsn=f"chdb:///{tmp_path_factory.mktemp('chdb-views')}")
    try:
        client.command("CREATE DATABASE IF NOT EXISTS t")
        client.database = "t"
        apply_migrations(client)
        for table in ("events", "windows_1m", "sessions", "dlq"):
            client.command(f"SYSTEM STOP MERGES {table}")
        yield client
    finally:
        client.close()


def assert_rows_match(
    actual: list[dict[str, Any]], expected: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]
):
    """Same keys, and per row the same values: floats to 1e-9, everything else exactly."""
    assert sorted(map(key, actual)) == sorted(map(key, expected))
    by_key = {key(row): row for row in actual}
    for want in expected:
        got = by_key[key(want)]
        assert set(got) == set(want), key(want)
        for name, value in want.items():
            if isinstance(value, float) and not name.startswith(("latency_p", "ttft_p")):
                assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (key(want), name)
            else:  # percentiles, counts, keys and NULLs must be exact
                assert got[name] == value, (key(want), name)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator


# --- windows: model_hourly and model_daily ----------------------------------------------------------


@dataclass
class Minute:
    """The values one raw partition saw for one window and dimension set."""

    identity: tuple[Any, ...]
    latencies: list[float]
    ttfts: list[float]
    errors: bool
    costs: list[float]
    qualities: list[float]
    flags: list[tuple[bool, bool, bool, bool]]  # cache hit, fallback, tool use, streamed


def _flags(rng: random.Random) -> tuple[bool, bool, bool, bool]:
    return rng.random() < 0.1, rng.random() < 0.05, rng.random() < 0.3, rng.random() < 0.6


def _minutes(rng: random.Random) -> list[Minute]:
    minutes = []
    for hour in range(3):
        for provider, model_id in MODELS:
            for minute in rng.sample(range(60), 3):
                start = T0 + timedelta(hours=hour, minutes=minute)
                for partition in range(3):
                    for status in ("success", "error"):
                        if status == "error" and rng.random() < 0.5:
                            continue
                        n = rng.randint(1, 40)
                        feature, variant = rng.choice(["", "search"]), rng.choice(["", "A", "B"])
                        identity = (
                            start,
                            provider,
                            model_id,
                            feature,
                            variant,
                            "production",
                            status,
                            partition,
                        )
                        minutes.append(
                            Minute(
                                identity,
                                [rng.lognormvariate(6, 1) for _ in range(n)],
                                []
                                if model_id == "embed-3"
                                else [rng.lognormvariate(5, 0.8) for _ in range(n)],
                                status != "success",
                                [rng.random() / 100 for _ in range(n)],
                                [rng.random() for _ in range(n)],
                                [_flags(rng) for _ in range(n)],
                            )
                        )
    return minutes


def _window_datum(m: Minute, upto: int, version: int) -> dict[str, Any]:
    """The snapshot of `m` after its first `upto` calls, as the processors would emit it."""
    start, provider, model_id, feature, variant, environment, status, partition = m.identity
    latency, ttft = Histogram(), Histogram()
    for value in m.latencies[:upto]:
        latency.add(value)
    for value in m.ttfts[:upto]:
        ttft.add(value)
    latency_buckets, latency_counts = latency.to_sparse()
    ttft_buckets, ttft_counts = ttft.to_sparse()
    flags = m.flags[:upto]
    return {
        "window_id": f"{partition}-{start.isoformat()}-{provider}-{model_id}-{feature}-{variant}-{status}",
        "version": version,
        "raw_partition": partition,
        "window_start": start,
        "window_end": start + timedelta(minutes=1),
        "provider": provider,
        "model_id": model_id,
        "feature_id": feature,
        "variant_id": variant,
        "environment": environment,
        "status": status,
        "events": upto,
        "errors": upto if m.errors else 0,
        "prompt_tokens": 100 * upto,
        "completion_tokens": 20 * upto,
        "cached_tokens": 10 * upto,
        "reasoning_tokens": 3 * upto,
        "cost_usd": sum(m.costs[:upto]),
        "cache_hits": sum(f[0] for f in flags),
        "fallbacks": sum(f[1] for f in flags),
        "tool_use": sum(f[2] for f in flags),
        "streamed": sum(f[3] for f in flags),
        "quality_sum": sum(m.qualities[:upto]),
        "latency_count": latency.count,
        "latency_sum_ms": latency.sum,
        "latency_min_ms": latency.min,
        "latency_max_ms": latency.max,
        "latency_buckets": latency_buckets,
        "latency_counts": latency_counts,
        "ttft_count": ttft.count,
        "ttft_sum_ms": ttft.sum,
        "ttft_min_ms": ttft.min,
        "ttft_max_ms": ttft.max,
        "ttft_buckets": ttft_buckets,
        "ttft_counts": ttft_counts,
        "emitted_at": NOW,
    }


@pytest.fixture(scope="module")
def windows(client: Client) -> list[dict[str, Any]]:
    """The latest snapshot of every window, inserted after and before older ones."""
    rng = random.Random(11)
    latest, older = [], []
    for m in _minutes(rng):
        version = rng.randint(1_000, 100_000)
        latest.append(decoded(WINDOW_SNAPSHOT, _window_datum(m, len(m.latencies), version)))
        for shift in range(rng.randint(0, 2)):
            upto = rng.randint(1, len(m.latencies))
            older.append(decoded(WINDOW_SNAPSHOT, _window_datum(m, upto, version - 1 - shift)))
    half = len(older) // 2
    client.insert("windows_1m", rows_of(WINDOWS, older[:half]), column_names=list(WINDOWS.columns))
    client.insert("windows_1m", rows_of(WINDOWS, latest), column_names=list(WINDOWS.columns))
    client.insert("windows_1m", rows_of(WINDOWS, older[half:]), column_names=list(WINDOWS.columns))
    assert len(latest) + len(older) > 300 and len(older) > 100
    # Older snapshots are still stored beside the latest (an insert collapses only within its block).
    assert count(client, "windows_1m") > len(latest)
    assert count(client, "windows_1m", final=True) == len(latest)
    return latest


def _dense(buckets: list[int], counts: list[int]) -> list[int]:
    dense = [0] * 393
    for index, value in zip(buckets, counts, strict=True):
        dense[index] = value
    return dense


def _expected_model_rollup(
    windows: list[dict[str, Any]], period: Callable[[datetime], Any], hourly: bool
) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, str, str], list[dict[str, Any]]] = defaultdict(list)
    for w in windows:
        groups[(period(w["window_start"]), w["provider"], w["model_id"])].append(w)
    expected = []
    for (when, provider, model_id), rows in groups.items():

        def total(name: str, rows: list[dict[str, Any]] = rows) -> Any:
            return sum(r[name] for r in rows)

        calls, errors = total("events"), total("errors")
        latency = [
            sum(c)
            for c in zip(*(_dense(r["latency_buckets"], r["latency_counts"]) for r in rows), strict=True)
        ]
        ttft = [
            sum(c) for c in zip(*(_dense(r["ttft_buckets"], r["ttft_counts"]) for r in rows), strict=True)
        ]
        row: dict[str, Any] = {
            "hour" if hourly else "day": when,
            "provider": provider,
            "model_id": model_id,
            "calls": calls,
            "errors": errors,
            "success_rate": _ratio(calls - errors, calls),
            "error_rate": _ratio(errors, calls),
            **{f"latency_{name}": quantile_from_counts(latency, q) for name, q in QUANTILES.items()},
            **{f"ttft_{name}": quantile_from_counts(ttft, q) for name, q in QUANTILES.items()},
            "cost_usd": total("cost_usd"),
            "cache_hit_rate": _ratio(total("cache_hits"), calls),
            "fallback_rate": _ratio(total("fallbacks"), calls),
            "tool_use_rate": _ratio(total("tool_use"), calls),
            "streaming_share": _ratio(total("streamed"), calls),
            "quality_mean": _ratio(total("quality_sum"), calls),
        }
        if hourly:
            ttft_count = total("ttft_count")
            row.update(
                latency_mean_ms=_ratio(total("latency_sum_ms"), total("latency_count")),
                latency_max_ms=max(r["latency_max_ms"] for r in rows),
                ttft_mean_ms=_ratio(total("ttft_sum_ms"), ttft_count) if ttft_count else None,
                prompt_tokens=total("prompt_tokens"),
                completion_tokens=total("completion_tokens"),
                cached_tokens=total("cached_tokens"),
                reasoning_tokens=total("reasoning_tokens"),
            )
        expected.append(row)
    return expected


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def test_model_hourly_sums_the_latest_minute_of_every_partition(client, windows):
    expected = _expected_model_rollup(windows, _hour, hourly=True)
    actual = read(client, "SELECT * FROM model_hourly")
    assert_rows_match(actual, expected, key=lambda r: (r["hour"], r["provider"], r["model_id"]))
    assert len(actual) == 3 * len(MODELS)
    no_ttft = [r for r in actual if r["model_id"] == "embed-3"]
    assert no_ttft and all(r["ttft_p95"] is None and r["ttft_mean_ms"] is None for r in no_ttft)
    assert all(r["latency_p50"] <= r["latency_p95"] <= r["latency_p99"] for r in actual)


def test_model_daily_takes_percentiles_from_the_minutes(client, windows):
    expected = _expected_model_rollup(windows, lambda moment: moment.date(), hourly=False)
    actual = read(client, "SELECT * FROM model_daily")
    assert_rows_match(actual, expected, key=lambda r: (r["day"], r["provider"], r["model_id"]))
    assert {r["day"] for r in actual} == {date(2026, 11, 23), date(2026, 11, 24)}


# --- events: cost_by_dimension, top_error_codes, quality_by_model_variant ------------------------


@pytest.fixture(scope="module")
def events(client: Client) -> list[dict[str, Any]]:
    """Enriched events over three days, each inserted twice (a re-processed copy), as decoded."""
    rng = random.Random(3)
    records = []
    for i, event in enumerate(enriched_events(1500, seed=9)):
        days = timedelta(days=i % 3)
        records.append(
            event.model_copy(
                update={
                    "started_at": event.started_at + days,
                    "finished_at": event.finished_at + days,
                    "rating": rng.choice([None, None, -1, 0, 1]),
                    # Some calls outside any feature or experiment: the views show them as ''.
                    "feature_id": None if i % 7 == 0 else event.feature_id,
                    "variant_id": None if i % 5 == 0 else event.variant_id,
                    "regenerated": rng.random() < 0.1,
                    "edited": rng.random() < 0.05,
                }
            )
        )
    datums = [decoded_record(ENRICHED_EVENT, event) for event in records]
    again = [{**d, "processed_at": NOW + timedelta(hours=1)} for d in datums[::3]]
    client.insert("events", rows_of(EVENTS, datums), column_names=list(EVENTS.columns))
    client.insert("events", rows_of(EVENTS, again, partition=8), column_names=list(EVENTS.columns))
    assert sum(d["status"] != "success" for d in datums) > 100
    assert count(client, "events") == len(datums) + len(again)
    return datums


def _group(
    rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], tuple[Any, ...]]
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return groups


def test_cost_by_dimension_counts_each_event_once(client, events):
    expected = []
    dimensions = ("day", "provider", "model_id", "feature_id", "variant_id", "environment")
    for key, rows in _group(
        events,
        lambda e: (
            e["finished_at"].date(),
            e["provider"],
            e["model_id"],
            e["feature_id"] or "",
            e["variant_id"] or "",
            e["environment"],
        ),
    ).items():
        expected.append(
            {
                **dict(zip(dimensions, key, strict=True)),
                "calls": len(rows),
                "cost_usd": sum(e["cost_usd"] for e in rows),
                "prompt_tokens": sum(e["prompt_tokens"] for e in rows),
                "completion_tokens": sum(e["completion_tokens"] for e in rows),
                "cached_tokens": sum(e["cached_tokens"] for e in rows),
                "reasoning_tokens": sum(e["reasoning_tokens"] for e in rows),
                "tokens": sum(e["prompt_tokens"] + e["completion_tokens"] for e in rows),
            }
        )
    actual = read(client, "SELECT * FROM cost_by_dimension")
    assert_rows_match(actual, expected, key=lambda r: tuple(r[d] for d in dimensions))
    assert any(r["feature_id"] == "" for r in actual) and any(r["variant_id"] == "" for r in actual)


def test_top_error_codes_counts_failed_calls(client, events):
    failed = [e for e in events if e["status"] != Status.success.value]
    expected = [
        {"day": day, "model_id": model, "error_type": kind, "error_code": code, "count": len(rows)}
        for (day, model, kind, code), rows in _group(
            failed, lambda e: (e["finished_at"].date(), e["model_id"], e["error_type"], e["error_code"])
        ).items()
    ]
    actual = read(client, "SELECT * FROM top_error_codes")
    assert_rows_match(
        actual, expected, key=lambda r: (r["day"], r["model_id"], str(r["error_type"]), str(r["error_code"]))
    )
    assert sum(r["count"] for r in actual) == len(failed)


def test_quality_by_model_variant_applies_the_latest_feedback(client, events):
    # Later feedback about every fourth call: an older and a newer update, inserted newest first.
    updates = {}
    for event in events[::4]:
        update = {
            "request_id": event["request_id"],
            "session_id": event["session_id"],
            "quality_score": 0.11,
            "regenerated": True,
            "edited": False,
            "rating": -1,
            "version": 20,
            "raw_partition": 0,
            "updated_at": NOW,
        }
        updates[event["request_id"]] = update
    older = [{**u, "quality_score": 0.99, "rating": 1, "version": 10} for u in updates.values()]
    spec = TABLES[QUALITY_UPDATE.full_name]
    for batch in (list(updates.values()), older):
        client.insert(spec.name, rows_of(spec, batch), column_names=list(spec.columns))
    scored = [
        {
            **e,
            **{k: updates[e["request_id"]][k] for k in ("quality_score", "regenerated", "edited", "rating")},
        }
        if e["request_id"] in updates
        else e
        for e in events
    ]
    expected = []
    for (day, model, variant), rows in _group(
        scored, lambda e: (e["finished_at"].date(), e["model_id"], e["variant_id"] or "")
    ).items():
        ratings = [e["rating"] for e in rows if e["rating"] is not None]
        expected.append(
            {
                "day": day,
                "model_id": model,
                "variant_id": variant,
                "calls": len(rows),
                "quality_mean": sum(e["quality_score"] for e in rows) / len(rows),
                "regeneration_rate": sum(e["regenerated"] for e in rows) / len(rows),
                "edit_rate": sum(e["edited"] for e in rows) / len(rows),
                "ratings": len(ratings),
                "rating_mean": sum(ratings) / len(ratings) if ratings else None,
            }
        )
    actual = read(client, "SELECT * FROM quality_by_model_variant")
    assert_rows_match(actual, expected, key=lambda r: (r["day"], r["model_id"], r["variant_id"]))


# --- sessions and dead letters -------------------------------------------------------------------


def test_session_costs_show_the_latest_snapshot(client):
    events = [e for e in enriched_events(1200, seed=13) if e.session_id is not None]
    latest = session_datums(events)
    versions = {d["session_id"]: d["version"] for d in latest}
    older = [
        d for d in session_datums(events[: len(events) // 3]) if d["version"] < versions[d["session_id"]]
    ]
    client.insert("sessions", rows_of(SESSIONS, latest), column_names=list(SESSIONS.columns))
    client.insert("sessions", rows_of(SESSIONS, older), column_names=list(SESSIONS.columns))
    assert older
    columns = [
        *("session_id", "user_id", "service", "environment", "first_at", "last_at", "turns", "cost_usd"),
        *("duration_ms", "prompt_tokens", "completion_tokens", "errors", "regenerations", "edits"),
        *("quality_mean", "models", "closed"),
    ]
    expected = [{name: d[name] for name in columns} for d in latest]
    actual = read(client, "SELECT * FROM session_costs")
    assert_rows_match(actual, expected, key=lambda r: r["session_id"])


def test_dlq_by_reason_counts_each_letter_once(client):
    received = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    letters = [
        DeadLetter(stage, reason, "m", b"k", b"x" * size, topic, partition, offset)
        for offset, (stage, reason, topic, partition, size) in enumerate(
            [
                (Stage.decode, Reason.truncated, "onfinish.raw", 0, 10),
                (Stage.decode, Reason.truncated, "onfinish.raw", 1, 20),
                (Stage.decode, Reason.unknown_schema_id, "onfinish.raw", 0, 5),
                (Stage.sink, Reason.undecodable, "onfinish.enriched", 2, 7),
            ]
        )
    ]
    rows = [dlq_row(letter, received) for letter in letters]
    redelivered = [dlq_row(letter, received + timedelta(seconds=30)) for letter in letters[:2]]
    client.insert("dlq", rows, column_names=list(DLQ_COLUMNS))
    client.insert("dlq", redelivered, column_names=list(DLQ_COLUMNS))
    actual = read(client, "SELECT * FROM dlq_by_reason")
    expected = [
        {
            "day": date(2026, 11, 23),
            "stage": "decode",
            "reason": "truncated",
            "source_topic": "onfinish.raw",
            "letters": 2,
            "value_bytes": 30,
        },
        {
            "day": date(2026, 11, 23),
            "stage": "decode",
            "reason": "unknown_schema_id",
            "source_topic": "onfinish.raw",
            "letters": 1,
            "value_bytes": 5,
        },
        {
            "day": date(2026, 11, 23),
            "stage": "sink",
            "reason": "undecodable",
            "source_topic": "onfinish.enriched",
            "letters": 1,
            "value_bytes": 7,
        },
    ]
    assert_rows_match(actual, expected, key=lambda r: (r["stage"], r["reason"]))
