"""Every worker's /health and /metrics server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from onfinish.health import HealthServer


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_health_says_how_the_worker_is_and_metrics_show_its_registry() -> None:
    registry = CollectorRegistry()
    handled = Counter("onfinish_test_handled", "Handled.", registry=registry)
    handled.inc(3)
    state = {"healthy": True}
    scrapes: list[int] = []
    server = HealthServer(
        "127.0.0.1",
        0,
        registry,
        lambda: (state["healthy"], {"status": "ok" if state["healthy"] else "stopping"}),
        before_scrape=lambda: scrapes.append(1),
    ).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(f"{base}/health") == (200, json.dumps({"status": "ok"}).encode())
        state["healthy"] = False
        status, body = _get(f"{base}/health")
        assert status == 503 and json.loads(body) == {"status": "stopping"}
        status, body = _get(f"{base}/metrics")
        assert status == 200 and b"onfinish_test_handled_total 3.0" in body
        assert scrapes == [1]
        assert _get(f"{base}/elsewhere")[0] == 404
    finally:
        server.stop()
    with pytest.raises(OSError):
        _get(f"{base}/health")
