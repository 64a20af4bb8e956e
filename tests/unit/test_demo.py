"""What the demo sets on the workers it starts, checked without starting them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from onfinish.demo.local_pipeline import Demo
from onfinish.settings import StackSettings

FRESH = {"ONFINISH_SINK_BATCH_SECONDS": "0.5", "ONFINISH_PROCESSOR_SNAPSHOT_INTERVAL_S": "1"}


class _Started:
    def __init__(self, command: list[str], env: dict[str, str], **_: Any) -> None:
        self.env = env


@pytest.mark.parametrize("fresh", [True, False])
def test_a_fresh_demo_sets_quick_inserts_and_snapshots_and_otherwise_the_defaults_stay(
    fresh: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for name in FRESH:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("onfinish.demo.local_pipeline.subprocess.Popen", _Started)
    monkeypatch.setattr(Demo, "_wait_healthy", lambda *args, **kwargs: None)
    demo = Demo(StackSettings(home=tmp_path), workers=2, fresh=fresh)
    demo.start_sink()
    demo.start_processors()
    envs = [worker.process.env for worker in demo.children]  # type: ignore[attr-defined]
    assert len(envs) == 3
    sink, *processors = envs
    assert ("ONFINISH_SINK_BATCH_SECONDS" in sink) is fresh
    assert all(("ONFINISH_PROCESSOR_SNAPSHOT_INTERVAL_S" in env) is fresh for env in processors)
    base = demo.processor_settings.web_port
    assert [env["ONFINISH_PROCESSOR_WEB_PORT"] for env in processors] == [str(base), str(base + 1)]
