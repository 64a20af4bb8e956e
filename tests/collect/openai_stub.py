"""A local OpenAI-compatible server for the instrumentation tests: chat completions, streamed or not,
with usage that includes cached and reasoning tokens, and an error on request.

The model name chooses the behaviour: a model ending in ``-error`` gets a 400 invalid-request error
(not retried by the openai client), anything else a completion. Usage is fixed per model, so the tests
know what the spans must carry.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
}
REPLY = "The answer is 42."
CHUNKS = ["The ", "answer ", "is ", "42."]
FIRST_CHUNK_DELAY_S = 0.15  # the time to first chunk the streamed spans must show, at least
CREATED = 1_767_225_600


def _completion(model: str, request_id: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": f"{model}-2024-08-06",
        "system_fingerprint": "fp_stub",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": USAGE,
    }


def _chunk(model: str, request_id: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": f"{model}-2024-08-06",
        "system_fingerprint": "fp_stub",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        model = str(body.get("model", "gpt-4o"))
        self.server.requests.append(body)
        request_id = f"chatcmpl-stub{len(self.server.requests):04d}"
        if not self.path.endswith("/chat/completions"):
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        elif model.endswith("-error"):
            self._json(
                400,
                {
                    "error": {
                        "message": "This model does not exist.",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_found",
                    }
                },
            )
        elif body.get("stream"):
            self._stream(model, request_id, bool((body.get("stream_options") or {}).get("include_usage")))
        else:
            self._json(200, _completion(model, request_id))

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, model: str, request_id: str, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        time.sleep(FIRST_CHUNK_DELAY_S)
        events = [_chunk(model, request_id, {"role": "assistant", "content": ""}, None)]
        events += [_chunk(model, request_id, {"content": text}, None) for text in CHUNKS]
        events.append(_chunk(model, request_id, {}, "stop"))
        if include_usage:
            events.append({**_chunk(model, request_id, {}, None), "choices": [], "usage": USAGE})
        for event in events:
            self._send_chunk(f"data: {json.dumps(event)}\n\n".encode())
            time.sleep(0.01)
        self._send_chunk(b"data: [DONE]\n\n")
        self._send_chunk(b"")

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.requests: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
