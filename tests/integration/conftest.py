"""The real local stack for integration tests: started once per session, stopped at the end.

It runs on ports of its own (28092, 28081, ...) with its data in .onfinish-test/, so a developer's
stack on the default ports is left alone. Set ONFINISH_TEST_KEEP_STACK=1 to leave it running.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from onfinish.demo.local_pipeline import Demo
from onfinish.processors.settings import ProcessorSettings
from onfinish.settings import ClickHouseSettings, KafkaSettings, RegistrySettings
from onfinish.sinks.settings import SinkSettings
from onfinish.stack.stack import Stack
from tests.conftest import REPO, isolated_stack_settings
from tests.integration.pipeline import PORTS, RECONCILIATIONS, Run

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by -m
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder runs against the real stack: mark it `integration`.

    A `pytestmark` in a conftest marks nothing (pytest reads it from test modules only), so until
    this hook `-m "not integration"` ran every integration test. The hook sees every collected
    item, so it marks only those under this folder; tests elsewhere that need a real stack or
    browser carry the marker themselves.
    """
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    settings = isolated_stack_settings(REPO / ".onfinish-test" / "session", port_base=28000)
    stack = Stack(settings, kafka=KafkaSettings(partitions=3))
    stack.up()
    yield stack
    if not os.environ.get("ONFINISH_TEST_KEEP_STACK"):
        stack.down()


@pytest.fixture(scope="session")
def kafka_settings(stack: Stack) -> KafkaSettings:
    return stack.kafka_settings


@pytest.fixture(scope="session")
def registry_settings(stack: Stack) -> RegistrySettings:
    return RegistrySettings(url=stack.settings.registry_url)


@pytest.fixture(scope="session")
def clickhouse_settings(stack: Stack) -> ClickHouseSettings:
    return stack.clickhouse_settings


@pytest.fixture
def unique() -> str:
    """A short unique name for topics, subjects, groups and tables of one test."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def run(
    stack: Stack, kafka_settings: KafkaSettings, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Run]:
    settings = stack.settings
    for name, value in {
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
        "ONFINISH_REGISTRY_URL": settings.registry_url,
        "ONFINISH_KAFKA_TOPIC_PREFIX": unique,
        "ONFINISH_KAFKA_PARTITIONS": str(kafka_settings.partitions),
        "ONFINISH_PROCESSOR_APP_ID": f"{unique}-processors",
        "ONFINISH_PROCESSOR_WEB_PORT": str(PORTS["processor"]),
        "ONFINISH_PROCESSOR_SESSION_TIMEOUT_S": "6",
        "ONFINISH_PROCESSOR_HEARTBEAT_INTERVAL_S": "1",
        # A broker away for the 30 s of the outage scenarios outlasts the sink's group session.
        "ONFINISH_SINK_SESSION_TIMEOUT_S": "6",
        "ONFINISH_SINK_GROUP_PREFIX": f"{unique}-sinks",
        "ONFINISH_SINK_WEB_PORT": str(PORTS["sink_web"]),
        "ONFINISH_SINK_QUERY_PORT": str(PORTS["sink_query"]),
        "ONFINISH_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'clickhouse'}",
    }.items():
        monkeypatch.setenv(name, value)
    demo = Demo(settings, sink_settings=SinkSettings(), processor_settings=ProcessorSettings())
    demo.ensure_topics()
    try:
        demo.start_sink()
        demo.start_processors()
        yield Run(stack, demo, tmp_path / "manifest.json")
        alive = [w.name for w in demo.children if w.process.poll() is not None]
        assert not alive, f"workers died: {alive}"
    finally:
        demo.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The counts of every reconciled scenario (sent, stored, lost, doubled, dead-lettered)."""
    if RECONCILIATIONS:
        terminalreporter.section("reconciliations")
        for row in RECONCILIATIONS:
            terminalreporter.write_line(row)
