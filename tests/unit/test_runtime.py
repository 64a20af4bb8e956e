"""What every worker sets up in its own process (onfinish/runtime.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_sigusr1_writes_every_thread_s_stack_and_the_worker_goes_on():
    script = textwrap.dedent(
        """
        import os, signal, threading, time
        from onfinish.runtime import prepare_worker

        def blocked_in_a_family_thread():
            threading.Event().wait(5)

        threading.Thread(target=blocked_in_a_family_thread, daemon=True).start()
        prepare_worker((50_000, 20, 100))
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
        print("still running")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "still running"
    assert "blocked_in_a_family_thread" in done.stderr, "the stack of a thread other than the main one"
    assert "most recent call first" in done.stderr
