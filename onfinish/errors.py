"""The project's exception hierarchy: one root, so callers can catch everything onfinish raises."""

from __future__ import annotations

import traceback
from pathlib import Path


class OnfinishError(Exception):
    """Root of every error onfinish raises on purpose."""


class ConfigurationError(OnfinishError):
    """A setting has a value the code cannot work with."""


class StackError(OnfinishError):
    """The local stack could not be installed, started, checked or stopped."""


class ProvisioningError(StackError):
    """A component's software could not be installed from its package registry."""


class PortInUseError(StackError):
    """A port the stack needs is already taken by a process the stack did not start."""

    def __init__(self, component: str, host: str, port: int) -> None:
        self.component = component
        self.host = host
        self.port = port
        super().__init__(
            f"{component} cannot start: {host}:{port} is already in use by a process onfinish did not "
            f"start. Stop that process or choose another port (see `onfinish stack --help`)."
        )


class ComponentStartError(StackError):
    """A component was started but did not become healthy in time."""

    def __init__(self, component: str, reason: str, log_path: Path | None) -> None:
        self.component = component
        self.reason = reason
        self.log_path = log_path
        where = f"; its log is {log_path}" if log_path else ""
        super().__init__(f"{component} failed: {reason}{where}")


class AccessDenied(OnfinishError):
    """A server refused who we are or what we asked (a wrong password, an unknown certificate
    authority, a missing ACL): waiting mends none of these, so a worker stops with the reason."""

    def __init__(self, component: str, reason: str) -> None:
        self.component = component
        self.reason = reason
        super().__init__(f"{component}: {reason}")


# --- exceptions as logs, dead letters and answers may carry them ---------------------------------

# Exceptions whose text is safe to repeat: onfinish's own (written to name fields, settings and
# places, never data) and the operating system's (paths, hosts, errno). Any other exception's text
# may quote the data it failed on: KeyError('alice@example.com'), int() of a prompt, a parser's
# "Couldn't parse integer: ...".
_WORDED: tuple[type[BaseException], ...] = (OnfinishError, OSError)


def _site(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" in {last.name} ({Path(last.filename).name}:{last.lineno})"


def describe_exception(exc: BaseException) -> str:
    """An exception for a log field, a dead letter's message or an error answer: its type and where
    it was raised, with its text only when that text is onfinish's own or the operating system's.

    What this returns reaches logs and dead letters, where personal data never goes; a failure on a
    record (a bug) is found again from its type and place, and the record itself is in the DLQ.
    """
    site = _site(exc)
    if isinstance(exc, _WORDED):
        return f"{type(exc).__name__}{site}: {exc}"
    return f"{type(exc).__name__}{site}"


def exception_traceback(exc: BaseException) -> str:
    """A traceback as Python prints it (frames, chained causes), each exception's line written by
    `describe_exception`'s rule: frames name code, never data; only the text is kept back."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        cause = current.__cause__
        current = cause if cause is not None or current.__suppress_context__ else current.__context__
    parts: list[str] = []
    chain.reverse()  # the first cause first, as Python prints it
    for index, item in enumerate(chain):
        if index:
            parts.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if item.__cause__ is chain[index - 1]
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(item.__traceback__))
        text = f": {item}" if isinstance(item, _WORDED) else " (its text is not logged: it may quote data)"
        parts.append(f"{type(item).__name__}{text}\n")
    return "".join(parts)
