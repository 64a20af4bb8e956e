"""`onfinish demo --once` from a clean state, as a newcomer runs it: everything sent is in ClickHouse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import clickhouse_connect

from onfinish.query.client import QueryClient
from onfinish.schemas.deadletter import Reason
from onfinish.settings import KafkaSettings
from onfinish.stack.stack import Stack
from tests.browser import chromium
from tests.conftest import REPO
from tests.query.test_dashboard import ARTIFACTS
from tests.query.test_dashboard import _wait_for as wait_for_charts


def _env(stack: Stack, kafka_settings: KafkaSettings, unique: str, clickhouse_dir: Path) -> dict[str, str]:
    settings = stack.settings
    return {
        **os.environ,
        # The session's stack (the demo finds it up), with topics, groups and ClickHouse of its own.
        "ONFINISH_STACK_HOME": str(settings.home),
        "ONFINISH_STACK_KAFKA_PORT": str(settings.kafka_port),
        "ONFINISH_STACK_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "ONFINISH_STACK_REGISTRY_PORT": str(settings.registry_port),
        "ONFINISH_STACK_POSTGRES_PORT": str(settings.postgres_port),
        "ONFINISH_STACK_ALERTMANAGER_PORT": str(settings.alertmanager_port),
        "ONFINISH_STACK_WEBHOOK_PORT": str(settings.webhook_port),
        "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
        "ONFINISH_REGISTRY_URL": settings.registry_url,
        "ONFINISH_KAFKA_TOPIC_PREFIX": unique,
        "ONFINISH_KAFKA_PARTITIONS": str(kafka_settings.partitions),
        "ONFINISH_PROCESSOR_APP_ID": f"{unique}-processors",
        "ONFINISH_PROCESSOR_WEB_PORT": "16566",
        "ONFINISH_SINK_GROUP_PREFIX": f"{unique}-sinks",
        "ONFINISH_SINK_WEB_PORT": "16666",
        "ONFINISH_SINK_QUERY_PORT": "16667",
        "ONFINISH_CLICKHOUSE_DSN": f"chdb:///{clickhouse_dir}",
        "COLUMNS": "120",
    }


def test_a_bounded_demo_ends_with_every_event_stored_and_every_malformed_record_dead_lettered(
    stack: Stack, kafka_settings: KafkaSettings, unique: str, tmp_path: Path
):
    settings = stack.settings
    clickhouse_dir = tmp_path / "clickhouse"
    env = _env(stack, kafka_settings, unique, clickhouse_dir)
    result = subprocess.run(
        [sys.executable, "-m", "onfinish", "demo", "--once", "--rate", "300", "--duration", "6"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    assert "http://127.0.0.1:16667/" in output, "the dashboard's address is shown"
    # The demo sends a test episode through the stack's Alertmanager and prints what reached people.
    assert "✓ webhook receiver (resolved)" in output, output[-4000:]
    assert "Notifications Alertmanager sent to the webhook receiver during the demo" in output
    assert "FIRING   onfinish_alerts_test on alerts-test/" in output
    assert "RESOLVED onfinish_alerts_test on alerts-test/" in output

    manifest = json.loads((settings.home / "demo-manifest.json").read_text())
    client = clickhouse_connect.get_client(dsn=f"chdb:///{clickhouse_dir}")
    try:
        client.database = "onfinish"
        stored = {row[0] for row in client.query("SELECT toString(event_id) FROM events FINAL").result_rows}
        assert stored == set(manifest["event_ids"])
        letters = client.command("SELECT count() FROM dlq FINAL")
        assert letters == sum(manifest["malformed"].values()) > 0
        windows = client.command("SELECT sum(events) FROM windows_1m FINAL")
        assert windows == len(manifest["event_ids"])
    finally:
        client.close()


def _onfinish(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onfinish", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_on_a_running_demo_reports_tails_lists_dead_letters_and_shows_status(
    stack: Stack, kafka_settings: KafkaSettings, unique: str, tmp_path: Path
):
    env = _env(stack, kafka_settings, unique, tmp_path / "clickhouse")
    demo = subprocess.Popen(
        [sys.executable, "-m", "onfinish", "demo", "--rate", "200", "--duration", "4"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("The workers keep running"):
                break
        assert demo.poll() is None, "".join(lines)[-3000:]
        manifest = json.loads((stack.settings.home / "demo-manifest.json").read_text())

        report = _onfinish(env, "report", "--since", "1h", "--format", "json")
        assert report.returncode == 0, report.stderr
        document = json.loads(report.stdout)
        assert sum(group["calls"] for group in document["groups"]) == len(manifest["event_ids"])

        tailed = _onfinish(env, "tail", "enriched", "--limit", "5")
        assert tailed.returncode == 0, tailed.stderr
        records = [json.loads(line) for line in tailed.stdout.splitlines()]
        assert len(records) == 5 and all(
            r.get("event_id") in manifest["event_ids"] or "request_id" in r for r in records
        )
        assert not any(text in tailed.stdout for text in manifest["planted_pii"])

        letters = _onfinish(env, "dlq", "list", "--since", "1h")
        assert letters.returncode == 0, letters.stderr
        assert any(reason.value in letters.stdout for reason in Reason), letters.stdout

        # Replayed dead letters go back to the raw topic; still malformed, they are refused again.
        query = QueryClient(f"http://127.0.0.1:{env['ONFINISH_SINK_QUERY_PORT']}")
        reason, letters_before = query.query(
            "SELECT reason, count() FROM dlq FINAL GROUP BY reason ORDER BY reason LIMIT 1"
        ).rows[0]
        replay = _onfinish(env, "dlq", "replay", "--reason", reason)
        assert replay.returncode == 0, replay.stderr
        deadline = time.monotonic() + 60
        again = f"SELECT count() FROM dlq FINAL WHERE reason = '{reason}'"
        while query.query(again).rows[0][0] < 2 * letters_before:
            assert time.monotonic() < deadline, (
                f"replayed {reason} letters did not come back: {replay.stdout}"
            )
            time.sleep(0.5)

        # The dashboard, in a real browser, on the data of this real run.
        with chromium() as browser:
            browser.get(f"http://127.0.0.1:{env['ONFINISH_SINK_QUERY_PORT']}/")
            charts = wait_for_charts(browser, "")
            assert all(chart["points"] > 0 for chart in charts.values())
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "dashboard-demo.png"))

        status = _onfinish(env, "status")
        assert "processor" in status.stdout and "sink" in status.stdout, status.stdout
        assert f"{unique}-processors" in status.stdout
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(90)
    assert demo.returncode == 0
