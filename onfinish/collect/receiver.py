"""The OTLP/HTTP receiver: `POST /v1/traces` and `/v1/logs` in, a 200 only once the events are durable.

One request, top to bottom:
1. refuse at once what cannot be taken: more requests in progress than allowed (429), the spool
   over its high-water mark because Kafka is behind or away (503), both with Retry-After so that
   exporters retry instead of dropping; a body over the size limit (413); a media type or
   encoding OTLP/HTTP does not define (415);
2. read the body (Content-Length or chunked, as Node's exporter sends it), inflate gzip (bounded);
3. parse it with opentelemetry-proto (protobuf or OTLP/JSON): a body that does not parse is a 400;
4. map its spans and read feedback from their events (ingest.py), spool the records with the SDK's
   `Emitter.spool_batch`, which returns once they are durable; a spool that refused records means
   503 and a retry (records already spooled come again with the same ids, one event downstream);
5. answer 200 with an ExportTraceServiceResponse whose partial success counts the spans rejected
   and says why; spans that are not model calls are ignored (counted on /metrics), not rejected.
Served with the standard library's threading HTTP server on HTTP/1.1 keep-alive: a request is a
few milliseconds of CPU for 512 spans, so a thread per connection costs nothing that matters.
/health and Prometheus /metrics are served on the same port.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from onfinish.collect import otlp
from onfinish.collect.ingest import Ingest, Outcome
from onfinish.collect.metrics import CollectMetrics
from onfinish.collect.settings import CollectSettings
from onfinish.producers.emitter import Emitter

log = logging.getLogger(__name__)
TRACES = "/v1/traces"
LOGS = "/v1/logs"
_CHUNK_LINE_MAX = 1024
# After refusing a body unread (413, 429, 503), the rest of it is read and thrown away for a while
# before the connection closes: closing a socket with unread data resets it, and the sender would
# see a broken connection instead of the answer that tells it what to do (nginx's lingering close).
_LINGER_S = 5.0
_LINGER_BYTES = 256 * 1024 * 1024


class _Answer(Exception):
    """An answer other than success, raised from anywhere in a request's handling."""

    def __init__(
        self, status: int, message: str, *, retry_after: int | None = None, close: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.close = close


class Receiver:
    """The receiver's state, shared by its request threads."""

    def __init__(self, settings: CollectSettings, emitter: Emitter, ingest: Ingest) -> None:
        self.settings = settings
        self.emitter = emitter
        self.ingest = ingest
        self.metrics = CollectMetrics(emitter)
        self.slots = threading.BoundedSemaphore(settings.max_concurrent_requests)
        self.server = _Server((settings.host, settings.port), _Handler)
        self.server.receiver = self

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def serve(self) -> None:
        """Serve until `stop` (or SIGTERM/SIGINT when run from the command)."""
        log.info("onfinish collect listening", extra={"host": self.settings.host, "port": self.port})
        self.server.serve_forever(poll_interval=0.2)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop accepting, finish the requests in progress, try to deliver what is spooled.

        What Kafka has not acknowledged within `timeout_s` stays in the spool for the next start.
        """
        self.server.shutdown()
        self.server.server_close()
        deadline = time.monotonic() + timeout_s
        for _ in range(self.settings.max_concurrent_requests):  # every slot back: no request running
            self.slots.acquire(timeout=max(deadline - time.monotonic(), 0.01))
        return self.emitter.close(timeout=max(deadline - time.monotonic(), 0.1))

    def admit(self) -> None:
        """Step 1's refusals that need no body."""
        if self.emitter.spooled_bytes() > self.settings.spool_high_water_bytes:
            raise _Answer(
                503,
                "the receiver's spool is over its high-water mark (Kafka is behind or away); retry later",
                retry_after=self.settings.retry_after_s,
                close=True,
            )

    def handle(self, path: str, kind: str, body: bytes) -> tuple[bytes, Outcome]:
        """Steps 3 to 5 for a body already read and inflated."""
        if path == TRACES:
            outcome = self.ingest.spans(otlp.trace_spans(body, kind))
        else:
            outcome = self.ingest.events(otlp.log_events(body, kind))
        self.metrics.count("traces" if path == TRACES else "logs", outcome)
        if outcome.refused:
            raise _Answer(
                503,
                f"the spool is full: {outcome.refused} records were not taken; retry later",
                retry_after=self.settings.retry_after_s,
            )
        result = outcome.partial_success()
        response = otlp.trace_response(result, kind) if path == TRACES else otlp.logs_response(result, kind)
        return response, outcome


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Only what escapes a handler gets here: a sender that went away or sent a broken request
        # line (a request's own failures are answered and logged in do_POST). Not worth a traceback.
        log.debug("connection ended abruptly", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30  # seconds a connection may stay silent mid-request before it is dropped

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would be thousands a second; /metrics counts them

    # --- GET: health and metrics ---------------------------------------------------------------

    def do_GET(self) -> None:
        receiver = self.server.receiver
        if self.path == "/health":
            body = json.dumps(
                {
                    "status": "ok",
                    "spooled_bytes": receiver.emitter.spooled_bytes(),
                    "sdk": receiver.emitter.stats(),
                }
            ).encode()
            self._send(200, "application/json", body)
        elif self.path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(receiver.metrics.registry))
        else:
            self._send(404, "text/plain", b"not found\n")

    # --- POST: OTLP -----------------------------------------------------------------------------

    def do_POST(self) -> None:
        began = time.perf_counter()
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0]
        kind = otlp.PROTOBUF
        label = "traces" if path == TRACES else "logs" if path == LOGS else "other"
        slot = False
        try:
            if path not in (TRACES, LOGS):
                raise _Answer(404, f"no OTLP endpoint at {path}; use {TRACES} or {LOGS}", close=True)
            try:
                kind = otlp.media_type(self.headers.get("Content-Type"))
            except otlp.OtlpError as exc:
                raise _Answer(exc.status, exc.message, close=True) from None
            slot = receiver.slots.acquire(blocking=False)
            if not slot:
                raise _Answer(
                    429,
                    "too many requests in progress; retry later",
                    retry_after=receiver.settings.retry_after_s,
                    close=True,
                )
            receiver.admit()
            body = self._body(receiver.settings.max_body_bytes)
            try:
                body = otlp.decompress(
                    body, self.headers.get("Content-Encoding"), receiver.settings.max_body_bytes
                )
                response, _ = receiver.handle(path, kind, body)
            except otlp.OtlpError as exc:
                raise _Answer(exc.status, exc.message) from None
            self._send(200, kind, response)
            receiver.metrics.requests.labels(label, "200").inc()
        except _Answer as answer:
            self._fail(answer, kind, label)
        except Exception:
            log.exception("request failed")  # a bug: the message names the exception, never the body
            self._fail(_Answer(500, "the receiver failed on this request", close=True), kind, label)
        finally:
            if slot:
                receiver.slots.release()
            receiver.metrics.seconds.labels(label).observe(time.perf_counter() - began)

    def _fail(self, answer: _Answer, kind: str, label: str) -> None:
        self.server.receiver.metrics.requests.labels(label, str(answer.status)).inc()
        headers = {"Retry-After": str(answer.retry_after)} if answer.retry_after else {}
        if answer.close:
            # The body was not read: the connection cannot carry another request.
            headers["Connection"] = "close"
            self.close_connection = True
        self._send(answer.status, kind, otlp.status_body(answer.status, answer.message, kind), headers)
        if answer.close:
            self._linger()

    def _linger(self) -> None:
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            deadline, drained = time.monotonic() + _LINGER_S, 0
            while time.monotonic() < deadline and drained < _LINGER_BYTES:
                data = self.connection.recv(1 << 16)
                if not data:
                    return
                drained += len(data)
        except OSError:
            pass

    def _body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked(limit)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise _Answer(400, "Content-Length is not a number", close=True) from None
        if length > limit:
            raise _Answer(413, f"the body is larger than {limit} bytes", close=True)
        if length < 0:
            raise _Answer(400, "Content-Length is negative", close=True)
        body = self.rfile.read(length)
        if len(body) < length:
            raise _Answer(400, "the body ended before its Content-Length", close=True)
        return body

    def _chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(_CHUNK_LINE_MAX)
            try:
                length = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Answer(400, "malformed chunked body", close=True) from None
            if length == 0:
                while self.rfile.readline(_CHUNK_LINE_MAX) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            size += length
            if size > limit:
                raise _Answer(413, f"the body is larger than {limit} bytes", close=True)
            chunk = self.rfile.read(length)
            if len(chunk) < length:
                raise _Answer(400, "the chunked body ended early", close=True)
            parts.append(chunk)
            self.rfile.readline(_CHUNK_LINE_MAX)

    def _send(
        self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the sender went away; it will retry


def run_until_signalled(receiver: Receiver) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully (requests finish, the spool is flushed)."""
    stopping = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    thread = threading.Thread(target=receiver.serve, name="collect-http", daemon=True)
    thread.start()
    stopping.wait()
    delivered = receiver.stop()
    log.info("onfinish collect stopped", extra={"delivered": delivered})
