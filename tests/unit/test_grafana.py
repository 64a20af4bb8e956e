"""Grafana provisioning: the dashboard's SQL runs on the migrated tables, with its macros expanded here.

Grafana cannot run here (no Docker), so the test does what the ClickHouse plugin does before a
query leaves Grafana: expand its macros and the `model` variable. The expander below follows the
plugin's definitions (`$__timeFilter(c)` is `c >= toDateTime(from) AND c <= toDateTime(to)`,
`$__timeInterval(c)` rounds to the panel's interval, `$__conditionalAll(cond, $var)` is `1=1` when
All is selected); whatever it does not know stays a `$`, and the test fails on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import clickhouse_connect
import pytest
import yaml
from clickhouse_connect.driver.client import Client

from onfinish.query import dashboard
from onfinish.schemas.histogram_grid import DEFAULT_GRID
from onfinish.sinks.migrate import apply_migrations
from tests.conftest import REPO
from tests.query.test_dashboard import MODELS, store_traffic

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "onfinish.json"
DATASOURCE_UID = "onfinish-clickhouse"
RANGE_S = 3600
INTERVAL_S = 60
ALL = None
"""The `model` variable with All selected."""


def _dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


def _panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = _dashboard()["panels"]
    return panels


# --- The expander -------------------------------------------------------------------------------------


def _macro_arguments(sql: str, open_at: int) -> tuple[list[str], int]:
    """The comma-separated arguments of the call whose `(` is at `open_at`, and the index after its `)`."""
    depth, start, arguments = 0, open_at + 1, []
    quote: str | None = None
    for index in range(open_at, len(sql)):
        char = sql[index]
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth == 0:
                arguments.append(sql[start:index].strip())
                return arguments, index + 1
        elif char == "," and depth == 1:
            arguments.append(sql[start:index].strip())
            start = index + 1
    raise AssertionError(f"unbalanced macro call at {open_at}: {sql[open_at : open_at + 80]!r}")


def expand(sql: str, models: list[str] | None, now: datetime) -> str:
    """`sql` as the plugin would send it for the last hour, with `models` selected (None: All)."""
    to_s = int(now.timestamp())
    from_s = to_s - RANGE_S

    def time_filter(column: str) -> str:
        return f"{column} >= toDateTime({from_s}) AND {column} <= toDateTime({to_s})"

    macros: dict[str, Callable[[list[str]], str]] = {
        "timeFilter": lambda args: time_filter(args[0]),
        "timeInterval": lambda args: (
            f"toStartOfInterval(toDateTime({args[0]}), INTERVAL {INTERVAL_S} second)"
        ),
        "conditionalAll": lambda args: "1=1" if models is None else args[0],
    }
    # $__conditionalAll first and from the last one back, as the plugin does: its first argument
    # may itself hold macros and variables, expanded afterwards.
    pattern = re.compile(r"\$__(conditionalAll|timeFilter|timeInterval)\(")
    while matches := list(pattern.finditer(sql)):
        chosen = next((m for m in reversed(matches) if m.group(1) == "conditionalAll"), matches[-1])
        arguments, end = _macro_arguments(sql, chosen.end() - 1)
        sql = sql[: chosen.start()] + macros[chosen.group(1)](arguments) + sql[end:]
    sql = sql.replace("$__interval_s", str(INTERVAL_S))
    sql = sql.replace("$__fromTime", f"toDateTime({from_s})").replace("$__toTime", f"toDateTime({to_s})")
    selected = list(MODELS) if models is None else models
    sql = sql.replace("${model:singlequote}", ", ".join(f"'{m}'" for m in selected))
    sql = re.sub(r"\$\{model\}|\$model\b", ", ".join(selected), sql)
    assert "$" not in sql, f"unexpanded Grafana syntax left: {sql[sql.index('$') : sql.index('$') + 60]!r}"
    return sql


def test_the_expander_follows_the_plugins_definitions() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    sql = (
        "SELECT $__timeInterval(t) FROM x WHERE $__timeFilter(t) "
        "AND $__conditionalAll(m IN (${model:singlequote}), $model) AND s = $__interval_s"
    )
    expanded = expand(sql, ["a", "b"], now)
    assert "toStartOfInterval(toDateTime(t), INTERVAL 60 second)" in expanded
    assert (
        f"t >= toDateTime({int(now.timestamp()) - 3600}) AND t <= toDateTime({int(now.timestamp())})"
        in expanded
    )
    assert "m IN ('a', 'b')" in expanded and expanded.endswith("s = 60")
    assert "1=1" in expand(sql, ALL, now) and "m IN" not in expand(sql, ALL, now)
    with pytest.raises(AssertionError, match="unexpanded"):
        expand("SELECT $__unknownMacro(x)", ALL, now)


# --- The files ------------------------------------------------------------------------------------------


def test_the_provider_reads_the_folder_compose_mounts() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "onfinish.yaml").read_text())
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = dict(
        volume.rsplit(":", 1)[0].split(":", 1) for volume in compose["services"]["grafana"]["volumes"]
    )
    assert mounts["./deploy/grafana/dashboards"] == entry["options"]["path"]
    assert (REPO / "deploy/grafana/dashboards").is_dir() and DASHBOARD.exists()


def test_every_query_uses_the_provisioned_clickhouse_datasource() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text())
    (datasource,) = provisioned["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    board = _dashboard()
    references = [panel["datasource"] for panel in board["panels"]]
    references += [target["datasource"] for panel in board["panels"] for target in panel["targets"]]
    references += [variable["datasource"] for variable in board["templating"]["list"]]
    assert references and all(
        reference == {"type": datasource["type"], "uid": DATASOURCE_UID} for reference in references
    )


def test_the_panels_are_the_live_pages_panels() -> None:
    panels = _panels()
    assert sorted(panel["title"] for panel in panels) == sorted(
        query.title for query in dashboard.QUERIES.values()
    )
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_percentiles_use_the_grid_the_stored_counts_are_on() -> None:
    # A new grid changes what stored counts mean: the dashboard's quantile SQL must follow it.
    percentile_panels = [panel for panel in _panels() if "sumForEach(" in panel["targets"][0]["rawSql"]]
    assert len(percentile_panels) == 3
    for panel in percentile_panels:
        assert DEFAULT_GRID.clickhouse_representatives() in panel["targets"][0]["rawSql"], panel["title"]


# --- Every panel's SQL against chDB -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    # chDB holds one data directory per process: the client must be closed before another opens.
    client = clickhouse_connect.get_client(dsn=f"chdb:///{tmp_path_factory.mktemp('chdb-grafana')}")
    try:
        client.command("CREATE DATABASE IF NOT EXISTS grafana")
        client.database = "grafana"
        apply_migrations(client)
        store_traffic(client, datetime.now(UTC).replace(microsecond=0))
        yield client
    finally:
        client.close()


def _queries() -> list[tuple[str, str]]:
    queries = [(panel["title"], target["rawSql"]) for panel in _panels() for target in panel["targets"]]
    queries += [
        (f"variable {variable['name']}", variable["query"]["rawSql"])
        for variable in _dashboard()["templating"]["list"]
    ]
    return queries


@pytest.mark.parametrize(("title", "sql"), _queries(), ids=[title for title, _ in _queries()])
@pytest.mark.parametrize("models", [ALL, [MODELS[1]], list(MODELS)], ids=["all", "one", "both"])
def test_every_panel_query_runs_and_finds_the_traffic(
    client: Client, title: str, sql: str, models: list[str] | None
) -> None:
    expanded = expand(sql, models, datetime.now(UTC))
    result = client.query(expanded, settings={"readonly": 1})
    assert result.result_rows, f"{title}: no rows for {models}"
    if "model_id" in result.column_names and not title.startswith("variable"):
        seen = {row[result.column_names.index("model_id")] for row in result.result_rows}
        assert seen <= set(MODELS if models is None else models), title
