"""The terminal side every command group shares: rich consoles, one clean error line for the errors
onfinish raises on purpose (exit 1, never a stack trace), spinners and progress bars, and the
parsing of the options several groups take (--since) and of where their queries go.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from onfinish.errors import OnfinishError
from onfinish.settings import ClickHouseSettings, StackSettings

if TYPE_CHECKING:
    from onfinish.query.client import Querier


console = Console()
errors = Console(stderr=True)
T = TypeVar("T")


def fail_cleanly(action: Callable[[], T]) -> T:
    try:
        return action()
    except OnfinishError as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc


@contextmanager
def spinner(title: str) -> Iterator[Callable[[str], None]]:
    """A status line that shows the current step of a long operation and how long it has taken."""
    began = time.monotonic()
    with console.status(title) as status:

        def report(step: str) -> None:
            status.update(f"{title}: {step} [dim]({time.monotonic() - began:.0f}s)[/]")

        yield report


def progress_columns() -> tuple[Any, ...]:
    """A progress bar's columns for sending items: what, the bar, done of total, time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    return (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )


def stack_settings() -> StackSettings:
    return StackSettings()


def parse_since(text: str) -> timedelta:
    """A --since value (30m, 1h, 7d, ...), or a usage error that says what is expected."""
    from onfinish.query.sql import parse_period

    try:
        return parse_period(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--since'") from None


def analyst_querier() -> Querier:
    """Where analyst queries go: the sink's read-only endpoint (embedded) or the ClickHouse server."""
    from onfinish.query.client import querier
    from onfinish.sinks.settings import SinkSettings

    return fail_cleanly(lambda: querier(ClickHouseSettings(), stack_settings(), SinkSettings()))


def when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def write_line(line: str) -> None:
    """One line to stdout; a reader that went away (`| head`) ends the output quietly."""
    import os
    import sys

    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the broken pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
