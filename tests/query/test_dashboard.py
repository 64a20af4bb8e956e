"""The live dashboard: its named queries, the endpoint's dashboard routes, and the page in a real browser.

The browser tests run Debian's headless Chromium through Selenium against a QueryServer over a
migrated chDB holding half an hour of realistic traffic for two models (events, minute windows,
sessions and alerts built by the processors' own state classes). A Chromium that cannot start fails
the test: the dashboard is a feature, and a skipped check would hide that it was never looked at.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from onfinish.loadgen.traffic import TrafficGenerator, TrafficProfile
from onfinish.processors.alerts import RuleBook, event_alerts
from onfinish.processors.sessions import SessionState
from onfinish.processors.windows import WindowKey, WindowState
from onfinish.query import dashboard
from onfinish.query.dashboard import InvalidDashboardRequest, PanelFilter, panel_sql, parse_filter
from onfinish.query.guard import check_read_only
from onfinish.query.server import QueryServer
from onfinish.schemas.contract import ALERT, ENRICHED_EVENT, SESSION_SNAPSHOT, WINDOW_SNAPSHOT
from onfinish.schemas.models import EnrichedEvent, OnFinishEvent
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.tables import TABLES
from tests.browser import chromium
from tests.conftest import REPO
from tests.sinks.test_tables import ENRICHER, decoded, decoded_record, rows_of

ARTIFACTS = REPO / "tests" / "artifacts"
MODELS = ("gpt-4o", "gpt-4o-mini")
CHARTS = tuple(name for name in dashboard.QUERIES if name not in ("totals", "top_sessions_by_cost", "alerts"))
TABLES_ON_PAGE = ("top_sessions_by_cost", "alerts")
BY_MODEL = ("events_per_minute", "latency_percentiles_by_model", "ttft_percentiles_by_model", "error_rate")
WAIT_S = 60


# --- The named queries alone ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(dashboard.QUERIES))
@pytest.mark.parametrize("model", [None, "gpt-4o", "meta.llama3-1-70b-instruct-v1:0", "org/model-x"])
def test_every_panel_renders_one_read_only_statement(name: str, model: str | None) -> None:
    sql = panel_sql(name, PanelFilter(90, model))
    assert check_read_only(sql) == sql.strip()
    assert "toIntervalMinute(90)" in sql
    assert (f"'{model}'" in sql) == (model is not None)


@pytest.mark.parametrize(
    "model",
    ["x' OR 1=1 --", "a'b", "a\\b", "gpt 4o", "", "gpt-4o;", "é", "x" * 201, "a\nb", "$$", "a)"],
)
def test_models_outside_the_pattern_are_refused(model: str) -> None:
    with pytest.raises(InvalidDashboardRequest, match="model must match"):
        PanelFilter(60, model)


@pytest.mark.parametrize("since", [0, -5, dashboard.MAX_SINCE_MINUTES + 1, True, 1.5, "60"])
def test_ranges_outside_the_bounds_are_refused(since: Any) -> None:
    with pytest.raises(InvalidDashboardRequest, match="since must be"):
        PanelFilter(since)


@pytest.mark.parametrize("since", ["1e3", "-1", " 60", "60 ", "\uff16\uff10", "9999999", "0x10", "1; DROP"])
def test_request_ranges_must_be_plain_digits(since: str) -> None:
    with pytest.raises(InvalidDashboardRequest, match="since must be"):
        parse_filter(since, None)


def test_request_defaults_are_the_last_hour_and_every_model() -> None:
    assert parse_filter(None, None) == PanelFilter(dashboard.DEFAULT_SINCE_MINUTES, None)
    assert parse_filter("", "") == PanelFilter(dashboard.DEFAULT_SINCE_MINUTES, None)
    assert parse_filter("15", "gpt-4o") == PanelFilter(15, "gpt-4o")


def test_unknown_panels_are_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidDashboardRequest, match=r"no such panel.*alerts"):
        panel_sql("drop_everything", PanelFilter())


def test_the_page_is_package_data_and_uses_nothing_from_elsewhere() -> None:
    page = dashboard.page().decode()
    assert page.startswith("<!doctype html>")
    for outside in ("http://", "https://", "//cdn", '<link rel="stylesheet"', "<script src", "@import"):
        assert outside not in page.replace('"http://www.w3.org/2000/svg"', ""), outside
    for name in dashboard.QUERIES:
        assert name == "totals" or f'name: "{name}"' in page, f"the page has no panel for {name}"


# --- Data: half an hour of traffic for two models ---------------------------------------------------


class Traffic:
    """What was stored, for the expected numbers."""

    def __init__(self, events: list[EnrichedEvent], sessions: int, alerts: int) -> None:
        self.events = events
        self.sessions = sessions
        self.alerts = alerts

    def calls(self, model: str | None = None) -> int:
        return sum(1 for e in self.events if model is None or e.model_id == model)


def _recent_events(now: datetime) -> list[EnrichedEvent]:
    """Events of two models, finished evenly over the last 30 minutes (up to a minute ago)."""
    generator = TrafficGenerator(
        TrafficProfile(malformed_share=0, feedback_share=0, error_share=0.08, start=now), seed=23
    )
    raw = [
        item for item in generator.items(1500) if isinstance(item, OnFinishEvent) and item.model_id in MODELS
    ]
    first, span = now - timedelta(minutes=30), timedelta(minutes=29)
    events = []
    for offset, event in enumerate(raw):
        finished = first + span * (offset / len(raw))
        moved = event.model_copy(
            update={
                "finished_at": finished,
                "started_at": finished - timedelta(milliseconds=event.latency_ms),
            }
        )
        events.append(ENRICHER.enrich(moved, offset % 3, offset, finished))
    return events


def store_traffic(client: Client, now: datetime) -> Traffic:
    """Half an hour of traffic for MODELS, up to `now`, in every table the dashboard reads."""
    events = _recent_events(now)
    assert {e.model_id for e in events} == set(MODELS)
    windows: dict[tuple[int, WindowKey], WindowState] = defaultdict(WindowState)
    sessions: dict[str, SessionState] = defaultdict(SessionState)
    # The shipped rules with the TTFT threshold lowered, so that half an hour of two fast models
    # raises a few alerts.
    shipped = RuleBook.load()
    book = shipped.model_copy(
        update={
            "rule": [
                rule.model_copy(update={"threshold": 700.0}) if rule.name == "ttft_high" else rule
                for rule in shipped.rule
            ]
        }
    )
    alerts = []
    for event in events:
        windows[(event.raw_partition, WindowKey.of(event))].apply(event, event.raw_offset)
        if event.session_id is not None:
            sessions[event.session_id].apply_event(event, event.raw_offset)
        alerts.extend(event_alerts(book, event))
    assert alerts, "the traffic should breach the TTFT rule now and then"

    def insert(record_name: str, datums: list[dict[str, Any]]) -> None:
        spec = TABLES[record_name]
        client.insert(spec.name, rows_of(spec, datums), column_names=list(spec.columns))

    insert(ENRICHED_EVENT.full_name, [decoded_record(ENRICHED_EVENT, e) for e in events])
    insert(
        WINDOW_SNAPSHOT.full_name,
        [decoded(WINDOW_SNAPSHOT, s.datum(k, p, now)) for (p, k), s in windows.items()],
    )
    insert(
        SESSION_SNAPSHOT.full_name,
        [decoded(SESSION_SNAPSHOT, s.datum(session_id, 0, now)) for session_id, s in sessions.items()],
    )
    insert(ALERT.full_name, [decoded_record(ALERT, a) for a in alerts])
    return Traffic(events, len(sessions), len(alerts))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Traffic]]:
    # chDB holds one data directory per process: the client must be closed before another opens.
    client = clickhouse_connect.get_client(dsn=f"chdb:///{tmp_path_factory.mktemp('chdb-dashboard')}")
    try:
        client.command("CREATE DATABASE IF NOT EXISTS dash")
        client.database = "dash"
        apply_migrations(client)
        traffic = store_traffic(client, datetime.now(UTC).replace(microsecond=0))
        yield client, traffic
    finally:
        client.close()


@pytest.fixture(scope="module")
def server(engine: tuple[Client, Traffic]) -> Iterator[QueryServer]:
    with QueryServer(engine[0], "127.0.0.1", 0) as running:
        yield running


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def scalar(client: Client, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


# --- The endpoint's dashboard routes ----------------------------------------------------------------


def test_the_page_is_served_at_the_root_with_a_strict_policy(server: QueryServer) -> None:
    status, headers, body = get(f"{server.url}/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == dashboard.page()
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


def test_panel_data_has_the_query_endpoints_shape(
    server: QueryServer, engine: tuple[Client, Traffic]
) -> None:
    client, traffic = engine
    status, headers, body = get(f"{server.url}/dashboard/data?" + urlencode({"panel": "totals", "since": 60}))
    assert status == 200 and headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert set(document) == {"columns", "types", "rows", "elapsed_ms"}
    totals = dict(zip(document["columns"], document["rows"][0], strict=True))
    assert totals["calls"] == traffic.calls() == scalar(client, "SELECT count() FROM events FINAL")
    assert totals["models"] == 2
    status, _, body = get(
        f"{server.url}/dashboard/data?" + urlencode({"panel": "totals", "since": 60, "model": MODELS[1]})
    )
    assert status == 200 and json.loads(body)["rows"][0][0] == traffic.calls(MODELS[1])


@pytest.mark.parametrize("name", sorted(dashboard.QUERIES))
def test_every_panel_answers_with_rows(server: QueryServer, name: str) -> None:
    for model in ("", MODELS[0]):
        status, _, body = get(f"{server.url}/dashboard/data?" + urlencode({"panel": name, "model": model}))
        assert status == 200, body
        assert json.loads(body)["rows"], (name, model)


def test_models_lists_what_the_range_saw(server: QueryServer) -> None:
    status, _, body = get(f"{server.url}/dashboard/models?since=60")
    assert status == 200 and json.loads(body)["rows"] == [[m] for m in sorted(MODELS)]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"panel": "nope"}, "no such panel"),
        ({"panel": "totals", "since": "0"}, "since must be"),
        ({"panel": "totals", "since": "60 OR 1=1"}, "since must be"),
        ({"panel": "totals", "model": "x' OR '1'='1"}, "model must match"),
        ({}, "no such panel"),
    ],
)
def test_bad_dashboard_requests_are_400(server: QueryServer, query: dict[str, str], reason: str) -> None:
    status, _, body = get(f"{server.url}/dashboard/data?" + urlencode(query))
    assert status == 400 and reason in json.loads(body)["error"]


def test_dashboard_routes_take_get_only(server: QueryServer) -> None:
    request = urllib.request.Request(f"{server.url}/dashboard/data?panel=totals", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 405


# --- The page in a browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def _open(browser: WebDriver, url: str) -> None:
    """Load the page and wait for its first draw (the page sets body's data-refreshed then).

    Until that draw lands the panels are empty placeholders, and the draw moves everything below
    them: the readout's Compare button from 1,724 px down the page to 3,243 px. A WebDriver click is
    several round trips (scroll, hit test, mouse move, press, release); when the draw lands between
    the hit test and the press, the press hits a panel, WebDriver reports no error and the readout
    never starts. Alone, the click is over before the draw lands; in a loaded full-suite run the
    page's fifteen requests queue behind one another (six connections per host in Chromium, one
    chDB query at a time in the server) and WebDriver's round trips slow down too, so the draw can
    land inside the click, which is how `data-compared` once never appeared.
    """
    browser.get(url)
    WebDriverWait(browser, WAIT_S).until(
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed")
    )


def _charts(browser: WebDriver) -> dict[str, dict[str, Any]]:
    """Every chart's attributes, by panel."""
    found: dict[str, dict[str, Any]] = browser.execute_script(
        """
        const charts = {};
        for (const node of document.querySelectorAll("svg[data-panel], table[data-panel]")) {
          charts[node.dataset.panel] = {
            points: Number(node.dataset.points ?? node.dataset.rows),
            model: node.dataset.model,
            groups: node.dataset.groups ? JSON.parse(node.dataset.groups) : null,
            legend: [...node.closest(".panel").querySelectorAll(".legend-item[data-series]")]
                      .map((item) => item.dataset.series),
          };
        }
        return charts;
        """
    )
    return found


def _wait_for(browser: WebDriver, model: str) -> dict[str, dict[str, Any]]:
    """The charts once every one of them shows data asked for `model` ('' for all)."""
    state: dict[str, dict[str, Any]] = {}

    def ready(driver: WebDriver) -> bool:
        nonlocal state
        state = _charts(driver)
        return set(state) >= {*CHARTS, *TABLES_ON_PAGE} and all(
            state[name]["points"] > 0 and state[name]["model"] == model for name in (*CHARTS, *TABLES_ON_PAGE)
        )

    try:
        WebDriverWait(browser, WAIT_S, poll_frequency=0.2).until(ready)
    except Exception:
        errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".panel .error") if e.text]
        status = browser.find_element(By.ID, "status").text
        pytest.fail(f"charts never all showed data for model {model!r}: {state}; status {status!r}; {errors}")
    return state


@pytest.mark.integration  # a real Chromium
def test_the_page_draws_every_panel_and_follows_the_model_filter(
    browser: WebDriver, server: QueryServer, engine: tuple[Client, Traffic]
) -> None:
    client, traffic = engine
    _open(browser, f"{server.url}/")
    everything = _wait_for(browser, "")

    # The header's number is the SQL's answer, and the stored traffic's.
    def total() -> tuple[str, str]:
        node = browser.find_element(By.ID, "total-calls")
        return node.get_attribute("data-value") or "", node.text

    window_calls = scalar(
        client, "SELECT sum(events) FROM windows_1m FINAL WHERE window_start >= now() - INTERVAL 60 MINUTE"
    )
    assert window_calls == traffic.calls()
    WebDriverWait(browser, WAIT_S).until(lambda _: total()[0] == str(window_calls))
    assert int(total()[1].replace(",", "")) == window_calls
    for name in BY_MODEL:
        assert everything[name]["groups"] == sorted(MODELS), name
        assert sorted(everything[name]["legend"]) == sorted(MODELS), name
    assert everything["cost_per_hour_by_model"]["groups"] == sorted(MODELS)
    rows = browser.find_elements(By.CSS_SELECTOR, "table[data-panel='top_sessions_by_cost'] tbody tr")
    assert len(rows) == min(dashboard.TOP_SESSIONS, traffic.sessions)
    assert len(browser.find_elements(By.CSS_SELECTOR, "table[data-panel='alerts'] tbody tr")) == min(
        dashboard.RECENT_ALERTS, traffic.alerts
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard-all.png"))

    # One model: every chart re-queried for it, and the split charts show that model alone.
    model = MODELS[1]
    Select(browser.find_element(By.ID, "model")).select_by_value(model)
    one = _wait_for(browser, model)
    for name in BY_MODEL:
        assert one[name]["groups"] == [model] and one[name]["legend"] == [model], name
        assert one[name]["points"] < everything[name]["points"], name
    assert one["cost_per_hour_by_model"]["groups"] == [model]
    WebDriverWait(browser, WAIT_S).until(lambda _: total()[0] == str(traffic.calls(model)))
    assert "model=" + model in browser.current_url
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    assert Path(ARTIFACTS / "dashboard.png").stat().st_size > 10_000


# --- The variant readout ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"by": ["user_id"], "a": ["x"], "b": ["y"]}, "by must be one of"),
        ({"a": ["A"], "b": ["A"]}, "must differ"),
        ({"a": [""], "b": ["B"]}, "1 to 256"),
        ({"a": ["A\n"], "b": ["B"]}, "printable"),
        ({"a": ["A"], "b": ["B"], "since": ["-5"]}, "whole number"),
    ],
)
def test_bad_readout_requests_are_refused(query: dict[str, list[str]], reason: str) -> None:
    with pytest.raises(dashboard.InvalidDashboardRequest, match=reason):
        dashboard.parse_compare(query)


def test_a_readout_within_a_model_filters_by_it_unless_models_are_compared() -> None:
    request = dashboard.parse_compare({"a": ["A"], "b": ["B"], "model": ["gpt-4o"], "since": ["30"]})
    assert (request.by, request.within, request.panel_filter.since_minutes) == (
        "variant_id",
        {"model_id": "gpt-4o"},
        30,
    )
    models = dashboard.parse_compare({"by": ["model_id"], "a": ["x"], "b": ["y"], "model": ["gpt-4o"]})
    assert models.within == {}


def test_the_readout_route_answers_with_every_measure_formatted(
    server: QueryServer, engine: tuple[Client, Traffic]
) -> None:
    _, traffic = engine
    status, _, body = get(f"{server.url}/dashboard/compare?by=variant_id&a=A&b=B&since=60")
    assert status == 200, body
    readout = json.loads(body)
    calls = {v: sum(1 for e in traffic.events if e.variant_id == v) for v in "AB"}
    assert (readout["a"]["calls"], readout["b"]["calls"]) == (calls["A"], calls["B"])
    assert len(readout["differences"]) == 11
    latency = next(d for d in readout["differences"] if d["measure"] == "latency_p50_ms")
    assert latency["text"]["a"].endswith("ms") and latency["text"]["interval"].startswith("[")
    assert readout["verdict"]
    status, _, body = get(f"{server.url}/dashboard/compare?by=user_id&a=A&b=B")
    assert status == 400 and b"by must be one of" in body


@pytest.mark.integration  # a real Chromium
def test_the_page_runs_a_readout(browser: WebDriver, server: QueryServer) -> None:
    _open(browser, f"{server.url}/")
    browser.find_element(By.ID, "compare-run").click()
    try:
        WebDriverWait(browser, WAIT_S).until(
            lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-compared")
        )
    except Exception:
        # An empty verdict means the click never started a readout ("comparing…" is set at once).
        verdict = browser.find_element(By.ID, "compare-verdict").text
        pytest.fail(f"no readout within {WAIT_S} s; the verdict line reads {verdict!r}")
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-compared") != "error"
    rows = browser.find_elements(By.CSS_SELECTOR, "#compare-table tbody tr")
    assert len(rows) == 11
    assert {row.get_attribute("data-verdict") for row in rows} <= {
        "better",
        "worse",
        "no difference",
        "not enough data",
    }
    assert browser.find_element(By.ID, "compare-verdict").text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard-readout.png"))
