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


def _fails_on(data: dict[str, str], key: str) -> str:
    return data[key]


@pytest.mark.parametrize("format_", ["json", "console"])
def test_a_logged_exception_names_its_type_and_frames_but_never_the_data_it_quotes(
    capsys, restore_root_logging, format_
):
    configure_logging(LogSettings(level="INFO", format=format_))
    address = "@".join(("alice", "example.com"))  # the traceback prints source lines: not this one's
    try:
        try:
            _fails_on({}, address)
        except KeyError as exc:
            raise ValueError(f"cannot read {address}") from exc
    except ValueError:
        logging.getLogger("onfinish.test").exception("a record failed")
    err = capsys.readouterr().err
    assert "alice@example.com" not in err
    assert "a record failed" in err
    assert "KeyError" in err and "ValueError" in err and "_fails_on" in err
    assert "direct cause" in err


def test_an_operating_system_error_keeps_its_text(capsys, restore_root_logging):
    configure_logging(LogSettings(level="INFO", format="json"))
    try:
        open("/nonexistent-onfinish-dir/spool")  # noqa: SIM115 - the error is the point
    except OSError:
        logging.getLogger("onfinish.test").exception("spool unreadable")
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert "No such file or directory" in record["exception"]
