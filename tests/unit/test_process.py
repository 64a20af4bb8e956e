"""Pid files and signals: only the process we started is ever stopped."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

from onfinish.stack import process


def test_spawned_process_is_tracked_and_stopped(tmp_path: Path):
    pid_file = process.PidFile(tmp_path / "run" / "sleeper.pid")
    record = process.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        log_path=tmp_path / "logs" / "sleeper.log",
        pid_file=pid_file,
    )
    assert pid_file.running() == record
    assert os.getpgid(record.pid) == record.pid  # its own session, so Ctrl-C of the CLI spares it
    assert process.stop(record, sig=signal.SIGTERM, timeout_s=5) is False
    assert not record.is_alive()
    assert pid_file.running() is None and not pid_file.path.exists()


def test_a_process_that_ignores_sigterm_is_killed(tmp_path: Path):
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ar' + 'med', flush=True); time.sleep(60)"
    log = tmp_path / "stubborn.log"
    record = process.spawn(
        [sys.executable, "-c", script], log_path=log, pid_file=process.PidFile(tmp_path / "s.pid")
    )
    assert process.wait_until(lambda: "armed" in log.read_text().splitlines(), timeout_s=10) is None
    assert process.stop(record, sig=signal.SIGTERM, timeout_s=0.5) is True
    assert not record.is_alive()


def test_a_reused_pid_is_not_ours(tmp_path: Path):
    pid_file = process.PidFile(tmp_path / "other.pid")
    # Our own pid with a different start time stands for a pid the kernel gave to another program.
    start = process.process_start_time(os.getpid())
    assert start is not None
    pid_file.write(process.PidRecord(pid=os.getpid(), start_time=start + 1, command="kafka"))
    assert pid_file.running() is None
    assert not pid_file.path.exists()


def test_port_checks_see_a_listener(tmp_path: Path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert process.port_is_open("127.0.0.1", port)
        assert not process.port_is_free("127.0.0.1", port)
    assert process.port_is_free("127.0.0.1", port)


def test_wait_until_reports_why_it_gave_up():
    assert (
        process.wait_until(lambda: False, timeout_s=0.3, interval_s=0.1) == "not healthy after 0s (not ready)"
    )
    assert str(process.wait_until(lambda: 1 / 0 == 0, timeout_s=0.2, interval_s=0.1)).endswith(
        "(ZeroDivisionError: division by zero)"
    )
    assert process.wait_until(lambda: False, timeout_s=5, abort=lambda: "exited") == "exited"
