"""The project's exception hierarchy: one root, so callers can catch everything onfinish raises."""

from __future__ import annotations

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
