"""A webhook receiver for Alertmanager's notifications: where the local stack's notifications land.

Alertmanager's webhook receiver POSTs one JSON document per notification (a group of alerts,
firing or resolved; its format version 4). This server keeps each as one JSON line in a file, with
when it arrived, so `onfinish demo` and `onfinish alerts test` can show what reached a person,
and tests can count notifications. It listens on loopback by default and takes documents of at
most 1 MiB (Alertmanager's are a few KiB). `python -m onfinish.alerting.webhook` runs it; the
local stack starts it beside Alertmanager.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from onfinish.settings import LOOPBACK

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1024 * 1024
PATH = "/alertmanager"


@dataclass(frozen=True)
class Notification:
    """One notification Alertmanager sent: a group of alerts, firing or resolved."""

    received_at: datetime
    status: str  # firing or resolved: the group's, as Alertmanager says it
    receiver: str
    group_labels: dict[str, str]
    alerts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, document: dict[str, Any], received_at: datetime) -> Notification:
        return cls(
            received_at=received_at,
            status=str(document.get("status", "")),
            receiver=str(document.get("receiver", "")),
            group_labels={str(k): str(v) for k, v in (document.get("groupLabels") or {}).items()},
            alerts=list(document.get("alerts") or []),
        )

    def line(self) -> str:
        """How `onfinish demo` and `onfinish alerts test` print it."""
        labels = self.alerts[0].get("labels", {}) if self.alerts else {}
        annotations = self.alerts[0].get("annotations", {}) if self.alerts else {}
        what = labels.get("rule", "?") + " on " + labels.get("subject", "?")
        more = f" (+{len(self.alerts) - 1} more)" if len(self.alerts) > 1 else ""
        message = annotations.get("message", "")
        return f"{self.received_at:%H:%M:%S} {self.status.upper():8} {what}{more}: {message}"


def read_notifications(path: Path, since: datetime | None = None) -> list[Notification]:
    """The notifications a receiver wrote to `path`, from `since` on (all when None)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
            notification = Notification.of(entry["document"], datetime.fromisoformat(entry["received_at"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash: the rest still count
        if since is None or notification.received_at >= since:
            found.append(notification)
    return found


class WebhookReceiver:
    """The server, in a thread of the calling process (`serve`) or as a process of its own (`main`)."""

    def __init__(self, host: str, port: int, out: Path | None = None) -> None:
        self.out = out
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the standard library's name
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._answer(413, {"error": f"at most {MAX_BODY_BYTES} bytes"})
                    return
                try:
                    document = json.loads(self.rfile.read(length) or b"{}")
                    if not isinstance(document, dict):
                        raise ValueError("a notification is a JSON object")
                except ValueError as exc:
                    self._answer(400, {"error": str(exc)[:200]})
                    return
                receiver.record(document)
                self._answer(200, {"ok": True})

            def do_GET(self) -> None:
                if self.path.startswith("/health"):
                    self._answer(200, {"ok": True, "notifications": len(receiver.notifications)})
                else:
                    self._answer(404, {"error": "POST notifications; GET /health"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return  # one line per notification is logged by `record`, not one per request

        self.server = ThreadingHTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{PATH}"

    def record(self, document: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        notification = Notification.of(document, now)
        with self._lock:
            self.notifications.append(notification)
            if self.out is not None:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                with self.out.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"received_at": now.isoformat(), "document": document}) + "\n")
        log.info(
            "notification received", extra={"status": notification.status, "alerts": len(notification.alerts)}
        )

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.notifications)

    @contextmanager
    def serving(self) -> Iterator[WebhookReceiver]:
        """Serve in a background thread while the block runs."""
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            self._thread.join(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Receive Alertmanager's webhook notifications into a file.")
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file the notifications go to")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    receiver = WebhookReceiver(arguments.host, arguments.port, arguments.out)
    log.info("webhook receiver listening", extra={"url": receiver.url})
    try:
        receiver.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.server.server_close()


if __name__ == "__main__":
    main()
