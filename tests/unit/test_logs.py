"""Structured logs: library records with fields in `extra` come out as one JSON object per line."""

from __future__ import annotations

import json
import logging

import pytest

from onfinish.logs import LogSettings, configure_logging


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_carry_the_extra_fields(capsys, restore_root_logging):
    configure_logging(LogSettings(level="INFO", format="json"))
    logging.getLogger("onfinish.stack.component").info(
        "component started", extra={"component": "kafka", "pid": 42}
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "component started"
    assert (record["component"], record["pid"], record["level"]) == ("kafka", 42, "info")
    assert record["logger"] == "onfinish.stack.component"
    assert "timestamp" in record


def test_level_filters_records(capsys, restore_root_logging):
    configure_logging(LogSettings(level="WARNING", format="json"))
    logging.getLogger("onfinish.test").info("quiet")
    assert capsys.readouterr().err == ""
