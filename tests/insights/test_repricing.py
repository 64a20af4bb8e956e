"""Re-pricing stored calls: twice is once, a later catalog replaces an earlier one, and every total
(events, windows, sessions) moves to exactly what pricing once with the new catalog gives."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.resources import files
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from onfinish.errors import ConfigurationError
from onfinish.insights import repricing
from onfinish.processors.pricing import PriceCatalog, compute_cost
from onfinish.processors.windows import WindowKey, WindowState
from onfinish.query.client import ClientQuerier
from onfinish.schemas.contract import (
    COST_CORRECTION,
    ENRICHED_EVENT,
    WINDOW_COST_CORRECTION,
    WINDOW_SNAPSHOT,
)
from onfinish.schemas.models import EnrichedEvent
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.tables import TABLES
from tests.chdb import chdb_engine
from tests.sinks.test_tables import NOW, decoded, decoded_record, enriched_events, insert, rows_of

EVENTS = TABLES[ENRICHED_EVENT.full_name]
WINDOWS = TABLES[WINDOW_SNAPSHOT.full_name]
COSTS = TABLES[COST_CORRECTION.full_name]
CORRECTIONS = TABLES[WINDOW_COST_CORRECTION.full_name]
EVER = timedelta(days=3650)


def catalog_text(version: str, factor: str) -> str:
    """The packaged catalog with every output price multiplied by `factor`, under another version."""
    text = files("onfinish.processors").joinpath("data", "price_catalog.v1.toml").read_text()
    text = re.sub(r'^version = ".*"$', f'version = "{version}"', text, count=1, flags=re.MULTILINE)
    text = re.sub(
        r"^output_per_mtok = ([0-9.]+)$",
        lambda m: f"output_per_mtok = {Decimal(m.group(1)) * Decimal(factor)}",
        text,
        flags=re.MULTILINE,
    )
    return text


def _catalog(version: str, factor: str) -> PriceCatalog:
    return PriceCatalog.from_toml(catalog_text(version, factor), source=f"test {version}")


DEARER = _catalog("2026-12-01", "2")
CHEAPER = _catalog("2027-01-01", "0.5")


def _windows(events: list[EnrichedEvent]) -> list[dict[str, object]]:
    """The windows the processors would emit for these events (one raw partition)."""
    states: dict[WindowKey, WindowState] = {}
    for offset, event in enumerate(events):
        states.setdefault(WindowKey.of(event), WindowState()).apply(event, offset)
    return [decoded(WINDOW_SNAPSHOT, state.datum(key, 0, NOW)) for key, state in states.items()]


@functools.cache
def _stored_rows() -> tuple[list[Any], list[Any]]:
    """The events' and their windows' rows, drawn once: each test repriced its own fresh tables,
    and drawing and enriching the traffic anew for each was most of their time."""
    events = enriched_events(1500, seed=41)
    return (
        rows_of(EVENTS, [decoded_record(ENRICHED_EVENT, e) for e in events]),
        [WINDOWS.to_row(datum, 0, i) for i, datum in enumerate(_windows(events))],
    )


@pytest.fixture
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with chdb_engine(tmp_path_factory.mktemp("chdb-repricing")) as engine:
        engine.command("CREATE DATABASE IF NOT EXISTS repricing")
        engine.database = "repricing"
        apply_migrations(engine)
        event_rows, window_rows = _stored_rows()
        insert(engine, EVENTS, event_rows)
        insert(engine, WINDOWS, window_rows)
        # Session snapshots whose cost is their calls' stored cost, as the processors' would be.
        engine.command(
            "INSERT INTO sessions (session_id, version, raw_partition, service, environment, first_at, "
            "last_at, turns, cost_usd, emitted_at) SELECT assumeNotNull(session_id), 1, 0, any(service), "
            "any(environment), min(finished_at), max(finished_at), count(), sum(cost_usd), max(finished_at) "
            "FROM events WHERE session_id IS NOT NULL GROUP BY session_id"
        )
        yield engine


def _apply(client: Client, catalog: PriceCatalog, at: datetime) -> repricing.Repricing:
    """What `onfinish reprice` does, with the sink's own row builders instead of Kafka."""
    q = ClientQuerier(client)
    start, end = repricing.period(EVER, NOW)
    result = repricing.reprice(
        repricing.stored_calls(q, start, end), catalog, repriced_at=at, start=start, end=end
    )
    insert(client, COSTS, rows_of(COSTS, [decoded_record(COST_CORRECTION, c) for c in result.corrections]))
    insert(
        client,
        CORRECTIONS,
        rows_of(CORRECTIONS, [decoded_record(WINDOW_COST_CORRECTION, w) for w in result.windows]),
    )
    assert repricing.applied(q, result) == (len(result.corrections), len(result.windows))
    return result


def _totals(client: Client) -> dict[str, float]:
    row = client.query(
        "SELECT (SELECT sum(cost_usd) FROM current_events), (SELECT sum(cost_usd) FROM windows_1m FINAL), "
        "(SELECT sum(cost_usd) FROM model_hourly), (SELECT sum(cost_usd) FROM cost_by_dimension), "
        "(SELECT sum(calls) FROM model_hourly)"
    ).result_rows[0]
    return dict(zip(("events", "windows", "hourly", "dimensions", "calls"), map(float, row), strict=True))


def _priced_once(client: Client, catalog: PriceCatalog) -> float:
    """Every stored call priced with `catalog` directly, independently of the corrections."""
    q = ClientQuerier(client)
    calls = repricing.stored_calls(q, *repricing.period(EVER, NOW))
    return float(sum(compute_cost(catalog, call).total_usd for call in calls))


def test_every_total_moves_to_the_new_prices_and_twice_is_once(client: Client) -> None:
    before = _totals(client)
    assert before["events"] == pytest.approx(before["windows"], rel=1e-9)
    expected = _priced_once(client, DEARER)
    assert expected > before["events"] * 1.2, "the dearer catalog changes the bill"

    first = _apply(client, DEARER, datetime(2026, 12, 1, tzinfo=UTC))
    assert first.totals.repriced_usd == pytest.approx(expected, rel=1e-9)
    assert first.totals.change_usd == pytest.approx(expected - before["events"], rel=1e-9)
    after = _totals(client)
    for name in ("events", "windows", "hourly", "dimensions"):
        assert after[name] == pytest.approx(expected, rel=1e-9), name
    assert after["calls"] == before["calls"], "corrections add cost, never calls"

    second = _apply(client, DEARER, datetime(2026, 12, 2, tzinfo=UTC))
    assert _totals(client) == pytest.approx(after, rel=1e-9), "re-pricing twice is re-pricing once"
    assert second.totals.change_usd == pytest.approx(0, abs=1e-9)
    versions = client.query("SELECT DISTINCT cost_source FROM current_events").result_rows
    assert ("catalog:2026-12-01",) in versions


def test_a_later_catalog_replaces_an_earlier_one(client: Client) -> None:
    _apply(client, DEARER, datetime(2026, 12, 1, tzinfo=UTC))
    _apply(client, CHEAPER, datetime(2027, 1, 1, tzinfo=UTC))
    expected = _priced_once(client, CHEAPER)
    totals = _totals(client)
    for name in ("events", "windows", "hourly", "dimensions"):
        assert totals[name] == pytest.approx(expected, rel=1e-9), name
    sessions, their_calls = client.query(
        "SELECT (SELECT sum(cost_usd) FROM session_costs), "
        "(SELECT sum(cost_usd) FROM current_events WHERE session_id IS NOT NULL)"
    ).result_rows[0]
    assert sessions == pytest.approx(their_calls, rel=1e-9)
    assert their_calls == pytest.approx(
        float(
            sum(
                compute_cost(CHEAPER, call).total_usd
                for call in repricing.stored_calls(ClientQuerier(client), *repricing.period(EVER, NOW))
                if call.session_id is not None
            )
        ),
        rel=1e-9,
    )


def test_the_same_catalog_as_at_ingestion_changes_nothing(client: Client) -> None:
    before = _totals(client)
    result = _apply(client, PriceCatalog.load(), datetime(2026, 12, 1, tzinfo=UTC))
    assert result.totals.change_usd == pytest.approx(0, abs=1e-9)
    assert _totals(client) == pytest.approx(before, rel=1e-9)


def test_the_period_is_whole_minutes() -> None:
    now = datetime(2026, 11, 23, 10, 17, 42, tzinfo=UTC)
    start, end = repricing.period(timedelta(hours=1, seconds=30), now)
    assert (start, end) == (
        datetime(2026, 11, 23, 9, 17, tzinfo=UTC),
        datetime(2026, 11, 23, 10, 18, tzinfo=UTC),
    )


def test_catalogs_are_files_or_the_packaged_version(tmp_path) -> None:
    packaged = PriceCatalog.load()
    assert repricing.load_catalog(packaged.version).version == packaged.version
    with pytest.raises(ConfigurationError, match="neither a catalog file"):
        repricing.load_catalog("1999-01-01")
    path = tmp_path / "prices.toml"
    path.write_text(files("onfinish.processors").joinpath("data", "price_catalog.v1.toml").read_text())
    assert repricing.load_catalog(str(path)).version == packaged.version
