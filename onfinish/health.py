"""Every worker's `/health` and `/metrics`: one small HTTP server on prometheus-client's own WSGI app.

Processors, sinks and the other long-running workers serve the same two pages the same way:
`/metrics` is prometheus-client's exposition of the worker's registry (text format, or OpenMetrics
when asked), `/health` is a JSON document from the worker with 200 when it is healthy and 503 when
not. The server runs in daemon threads of the worker's process, so a busy event loop or a slow
family never delays a scrape. Nothing here reads event contents: the pages carry counts and states.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

Health = Callable[[], tuple[bool, dict[str, Any]]]
"""The worker's health: whether it is healthy, and the JSON document that says so."""

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: a request line per scrape says nothing an operator needs."""


class HealthServer:
    """Serves `/health` and `/metrics` for one worker on host:port, in background threads.

    `before_scrape` runs before each `/metrics` answer (the processors measure their lag then).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Health,
        *,
        before_scrape: Callable[[], None] | None = None,
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._health = health
        self._before_scrape = before_scrape
        self._server = make_server(host, port, self._app, ThreadingWSGIServer, handler_class=_QuietHandler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if self._before_scrape is not None:
                self._before_scrape()
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/health":
            healthy, document = self._health()
            body = json.dumps(document).encode()
            status = "200 OK" if healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /health and /metrics are served here\n"]

    def start(self) -> HealthServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
