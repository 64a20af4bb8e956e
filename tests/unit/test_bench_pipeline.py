"""The end-to-end benchmark's CPU accounting: what each component spent, and the cores' ceiling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bench.pipeline import Throughput, _cpu_figures, _cpu_seconds

BURN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\ntime.sleep(30)"


def test_a_process_is_charged_with_its_descendants_cpu():
    # A shell that starts a child which burns 0.6 s of CPU and then idles: the shell itself burns
    # nothing, so what is charged to it is its child's.
    parent = subprocess.Popen(["sh", "-c", f'{sys.executable} -c "$0"; :', BURN], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while _cpu_seconds(parent.pid) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert 0.5 <= _cpu_seconds(parent.pid) < 2.0
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
    assert _cpu_seconds(parent.pid) == 0.0  # gone: nothing to charge


def test_cpu_figures_give_each_components_share_and_the_ceiling_of_the_cores(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    run = Throughput(
        stored=3_000.0, offered=5_000.0, cpu_us={"processor workers": 300.0, "sink worker": 100.0}
    )
    *shares, ceiling = _cpu_figures(run, "1 processor worker, 4 partitions")
    figures = {f.name.split(", ")[1]: f for f in shares}
    assert figures["processor workers"].value == 300.0
    assert figures["processor workers"].ratio == pytest.approx(0.75)
    assert ceiling.name.startswith("whole pipeline ceiling on 2 cores")
    assert ceiling.value == pytest.approx(5_000.0)  # 2 cores / 400 µs per event
    assert ceiling.ratio == pytest.approx(5_000.0 / 3_000.0)
