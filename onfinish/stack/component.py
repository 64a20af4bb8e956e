"""What every locally run stack component has in common: a pid file, a log, ports and a health check.

A component only says how to prepare its data directory, which command runs it and how to tell it is
healthy; starting, waiting, stopping and reporting are the same for all and live here.
"""

from __future__ import annotations

import logging
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from onfinish.errors import ComponentStartError, PortInUseError
from onfinish.settings import StackSettings
from onfinish.stack import process

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    running: bool
    healthy: bool
    address: str
    pid: int | None
    log_path: Path
    detail: str = ""


@dataclass(frozen=True)
class StartResult:
    name: str
    started: bool  # False when it was already running
    pid: int
    seconds: float


class Component(ABC):
    """A server process the stack starts, checks and stops."""

    name: str
    stop_signal: signal.Signals = signal.SIGTERM

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.home = settings.home / self.name
        self.log_path = settings.home / "logs" / f"{self.name}.log"
        self.pid_file = process.PidFile(settings.home / "run" / f"{self.name}.pid")

    @property
    @abstractmethod
    def ports(self) -> Sequence[int]:
        """Every port the component listens on; the first is the one clients use."""

    @abstractmethod
    def command(self) -> Sequence[str]:
        """The command line that runs the server in the foreground."""

    @abstractmethod
    def is_healthy(self) -> bool:
        """One quick probe: True when the server answers as it should."""

    def prepare(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Create configuration and, on first start, the data directory."""

    def after_start(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Work that needs the running server (e.g. creating a database); must be idempotent."""

    def environment(self) -> Mapping[str, str] | None:
        return None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.ports[0]}"

    def start(self) -> StartResult:
        """Start the component unless it is already running, and wait until it is healthy."""
        began = time.monotonic()
        running = self.pid_file.running()
        if running is not None:
            self._wait_healthy(running)
            return StartResult(self.name, started=False, pid=running.pid, seconds=time.monotonic() - began)
        for port in self.ports:
            if not process.port_is_free(self.settings.host, port):
                raise PortInUseError(self.name, self.settings.host, port)
        self.home.mkdir(parents=True, exist_ok=True)
        self.prepare()
        record = process.spawn(
            self.command(),
            log_path=self.log_path,
            pid_file=self.pid_file,
            env=self.environment(),
            cwd=self.home,
        )
        try:
            self._wait_healthy(record)
            self.after_start()
        except Exception:
            # A half-started server is of no use to anyone: stop it so the next `up` starts clean.
            process.stop(record, sig=self.stop_signal, timeout_s=self.settings.stop_timeout_s)
            self.pid_file.remove()
            raise
        seconds = time.monotonic() - began
        log.info(
            "component started",
            extra={
                "component": self.name,
                "pid": record.pid,
                "address": self.address,
                "seconds": round(seconds, 2),
                "log_path": str(self.log_path),
            },
        )
        return StartResult(self.name, started=True, pid=record.pid, seconds=seconds)

    def _wait_healthy(self, record: process.PidRecord) -> None:
        def exited() -> str | None:
            if record.is_alive():
                return None
            process.reap(record.pid)
            return "the process exited during start-up"

        reason = process.wait_until(self.is_healthy, timeout_s=self.settings.start_timeout_s, abort=exited)
        if reason is not None:
            last_lines = process.tail(self.log_path)
            detail = f"{reason} on {self.address}" + (
                f"\n--- last log lines ---\n{last_lines}" if last_lines else ""
            )
            raise ComponentStartError(self.name, detail, self.log_path)

    def stop(self) -> bool:
        """Stop the process we started, if any. Returns True when something was stopped."""
        record = self.pid_file.running()
        if record is None:
            return False
        killed = process.stop(record, sig=self.stop_signal, timeout_s=self.settings.stop_timeout_s)
        self.pid_file.remove()
        log.info("component stopped", extra={"component": self.name, "pid": record.pid, "killed": killed})
        return True

    def status(self) -> ComponentStatus:
        record = self.pid_file.running()
        healthy = False
        if record is not None:
            try:
                healthy = self.is_healthy()
            except Exception:
                healthy = False
        return ComponentStatus(
            name=self.name,
            running=record is not None,
            healthy=healthy,
            address=self.address,
            pid=record.pid if record else None,
            log_path=self.log_path,
        )
