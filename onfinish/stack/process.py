"""Processes the local stack starts, tracked by pid file so that `down` stops only what `up` started.

A pid file records the pid and the kernel's start time of that process; a process is ours only when
both still match, so a pid reused by an unrelated program is never signalled. Nothing here looks a
process up by name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` in clock ticks, or None when no such live process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start_ticks = fields[0], int(fields[19])
    if state in ("Z", "X"):
        return None
    return start_ticks


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_time: int
    command: str

    def is_alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


class PidFile:
    """The pid file of one component."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> PidRecord | None:
        try:
            data = json.loads(self.path.read_text())
            return PidRecord(
                pid=int(data["pid"]), start_time=int(data["start_time"]), command=data["command"]
            )
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def write(self, record: PidRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record.__dict__))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def running(self) -> PidRecord | None:
        """The recorded process if it is still the one we started; a stale file is removed."""
        record = self.read()
        if record is None:
            return None
        if record.is_alive():
            return record
        self.remove()
        return None


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_file: PidFile,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> PidRecord:
    """Start `argv` detached from our session (it outlives the CLI), logging to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(
            f"\n=== onfinish started {' '.join(argv)} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode()
        )
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    start = process_start_time(proc.pid)
    # A process that died before we could read /proc still gets a record, so its exit is reported.
    record = PidRecord(pid=proc.pid, start_time=start if start is not None else -1, command=argv[0])
    pid_file.write(record)
    return record


def reap(pid: int) -> None:
    """Collect the exit status of a child we started in this process, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(record: PidRecord, *, sig: signal.Signals, timeout_s: float) -> bool:
    """Signal our process, wait for it to exit, and kill its process group if it will not.

    Returns True when the process had to be killed.
    """
    if not record.is_alive():
        reap(record.pid)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reap(record.pid)
        if not record.is_alive():
            return False
        time.sleep(0.1)
    # Our processes lead their own session (start_new_session), so the group id is the recorded pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, signal.SIGKILL)
    while record.is_alive():
        reap(record.pid)
        time.sleep(0.05)
    return True


def port_is_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port, or on the wildcard address for that port."""
    if port_is_open(host, port):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.2,
    abort: Callable[[], str | None] | None = None,
) -> str | None:
    """Poll `check` until it returns True. Returns None on success, or why it gave up."""
    deadline = time.monotonic() + timeout_s
    while True:
        if abort is not None and (reason := abort()) is not None:
            return reason
        try:
            if check():
                return None
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            last = "not ready"
        if time.monotonic() >= deadline:
            return f"not healthy after {timeout_s:.0f}s ({last})"
        time.sleep(interval_s)


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, for error messages."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(content[-lines:])


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise `up`/`down` of one stack home across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
