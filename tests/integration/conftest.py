"""The real local stack for integration tests: started once per session, stopped at the end.

It runs on ports of its own (28092, 28081, ...) with its data in .onfinish-test/, so a developer's
stack on the default ports is left alone. Set ONFINISH_TEST_KEEP_STACK=1 to leave it running.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from onfinish.settings import ClickHouseSettings, KafkaSettings, RegistrySettings
from onfinish.stack.stack import Stack
from tests.conftest import REPO, isolated_stack_settings

pytestmark = pytest.mark.integration


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
