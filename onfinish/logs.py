"""Structured logs for onfinish's processes (CLI, workers): JSON lines or readable key=value.

Library code logs through the standard `logging` module with fields in `extra`, so a host service
that embeds the SDK keeps control of its own handlers; entry points call `configure_logging`, which
renders those records with structlog. Never pass secrets or event contents as fields. A logged
exception comes out as its traceback with the text of any exception not onfinish's or the operating
system's left out (`onfinish.errors.exception_traceback`): such text may quote the data it failed on.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from onfinish.errors import exception_traceback


class LogSettings(BaseSettings):
    """How onfinish's own processes log."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_LOG_", extra="ignore")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="Lowest level written to standard error."
    )
    format: Literal["console", "json"] = Field(
        default="console", description="console for people, json for log collectors (one object per line)."
    )


def _exception_without_data(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A record's exc_info as an `exception` field written by `exception_traceback`."""
    exc_info = event.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    exc = exc_info if isinstance(exc_info, BaseException) else exc_info[1] if exc_info else None
    if exc is not None:
        event["exception"] = exception_traceback(exc)
    return event


def configure_logging(settings: LogSettings) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _exception_without_data,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
