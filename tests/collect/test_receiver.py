"""The OTLP/HTTP receiver over real HTTP, in-process: status codes, partial success, hostile bodies.

Its SDK emitter spools for real (to a temporary directory); Kafka is unreachable, so the records stay
in the spool, which is what a 200 promises. The end-to-end path to ClickHouse is in
tests/integration/test_collect.py.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from onfinish.collect import assembly
from onfinish.collect.receiver import Receiver
from onfinish.collect.settings import CollectSettings
from onfinish.producers.settings import ProducerSettings
from onfinish.producers.spool import Position
from onfinish.settings import KafkaSettings, RegistrySettings
from tests.collect.otlp_requests import genai_request, kv


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    settings = CollectSettings(port=0, max_body_bytes=8 * 1024 * 1024, max_concurrent_requests=4)
    receiver = assembly.receiver(
        settings,
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        RegistrySettings(url="http://127.0.0.1:1"),
        ProducerSettings(spool_dir=tmp_path / "spool"),
    )
    thread = threading.Thread(target=receiver.serve, daemon=True)
    thread.start()
    yield receiver
    receiver.stop(timeout_s=1)


def post(
    receiver: Receiver,
    body: bytes,
    content_type: str = "application/x-protobuf",
    path: str = "/v1/traces",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=60)
    connection.request("POST", path, body, {"Content-Type": content_type, **(headers or {})})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def spooled(receiver: Receiver) -> int:
    worker = receiver.emitter._worker
    assert worker is not None
    return sum(1 for _ in worker.instance.spool.read(Position(0, 0), 10_000_000))


def alive(receiver: Receiver) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    connection.request("GET", "/health")
    ok = connection.getresponse().status == 200
    connection.close()
    return ok


def test_protobuf_spans_are_spooled_before_the_200(receiver):
    status, headers, body = post(receiver, genai_request(5).SerializeToString())
    assert status == 200
    assert headers["Content-Type"] == "application/x-protobuf"
    response = ExportTraceServiceResponse.FromString(body)
    assert not response.HasField("partial_success")
    assert spooled(receiver) == 5


def test_otlp_json_with_hex_ids_and_gzip_is_read_as_protobuf_is(receiver):
    document = json_format.MessageToDict(genai_request(3))
    for resource in document["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:  # OTLP/JSON: hex ids, integer enums, int64 as strings
                span["traceId"] = bytes(__import__("base64").b64decode(span["traceId"])).hex()
                span["spanId"] = bytes(__import__("base64").b64decode(span["spanId"])).hex()
                span["kind"] = 3
                span["unknownFieldFromTheFuture"] = {"x": 1}
    body = gzip.compress(json.dumps(document).encode())
    status, headers, answer = post(
        receiver, body, "application/json; charset=utf-8", headers={"Content-Encoding": "gzip"}
    )
    assert status == 200, answer
    assert headers["Content-Type"] == "application/json"
    assert json.loads(answer) == {}
    assert spooled(receiver) == 3


def test_non_model_spans_are_ignored_not_rejected_and_bad_ones_counted_in_partial_success(receiver):
    request = genai_request(4)
    spans = request.resource_spans[0].scope_spans[0].spans
    del spans[0].attributes[:]  # an HTTP span now
    spans[0].attributes.append(kv("http.request.method", "GET"))
    spans[1].start_time_unix_nano = 1_000  # 1970
    spans[1].end_time_unix_nano = 2_000
    spans[2].end_time_unix_nano = 4_102_444_800 * 10**9  # 2100
    status, _, body = post(receiver, request.SerializeToString())
    assert status == 200
    partial = ExportTraceServiceResponse.FromString(body).partial_success
    assert partial.rejected_spans == 2
    assert "timestamp_out_of_range" in partial.error_message
    assert spooled(receiver) == 1
    metrics = scrape(receiver)
    assert 'onfinish_collect_spans_ignored_total{reason="not_genai"} 1.0' in metrics
    assert 'onfinish_collect_spans_rejected_total{reason="timestamp_out_of_range"} 2.0' in metrics


def scrape(receiver: Receiver) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    return text


def _status(body: bytes) -> status_pb2.Status:
    return status_pb2.Status.FromString(body)


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "expected"),
    [
        (b"this is not protobuf \xff\xfe" * 10, "application/x-protobuf", {}, 400),
        (b"{not json", "application/json", {}, 400),
        (b"[1, 2]", "application/json", {}, 400),
        (b"\x0a\xff\xff\xff\x0f\x0a", "application/x-protobuf", {}, 400),  # a length beyond the end
        (b"payload", "text/plain", {}, 415),
        (b"payload", "application/x-protobuf", {"Content-Encoding": "br"}, 415),
        (b"not gzip at all", "application/x-protobuf", {"Content-Encoding": "gzip"}, 400),
    ],
)
def test_hostile_bodies_get_their_status_and_the_receiver_stays_up(
    receiver, body, content_type, headers, expected
):
    status, answer_headers, answer = post(receiver, body, content_type, headers=headers)
    assert status == expected
    if "json" not in answer_headers["Content-Type"]:
        assert _status(answer).message
    assert alive(receiver)
    assert spooled(receiver) == 0


def test_a_truncated_request_is_a_400(receiver):
    body = genai_request(10).SerializeToString()
    status, _, answer = post(receiver, body[: len(body) // 2])
    assert status == 400
    assert "not an OTLP protobuf message" in _status(answer).message
    assert alive(receiver)


def test_non_utf8_strings_are_refused_by_protobuf_as_a_whole(receiver):
    body = genai_request(1).SerializeToString().replace(b"chat-api", b"chat-\xff\xfe", 1)
    status, _, _ = post(receiver, body)
    assert status == 400
    assert alive(receiver)


def test_fifty_megabytes_are_refused_with_413_before_they_are_read(receiver):
    body = os.urandom(1024) * (50 * 1024)
    status, headers, _ = post(receiver, body)
    assert status == 413
    assert headers.get("Connection") == "close"
    assert alive(receiver)


def test_a_gzip_bomb_is_refused_with_413(receiver):
    bomb = gzip.compress(b"\x00" * (64 * 1024 * 1024))
    status, _, _ = post(receiver, bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413
    assert alive(receiver)


def test_a_chunked_body_is_read(receiver):
    body = genai_request(2).SerializeToString()
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=30)
    connection.request(
        "POST",
        "/v1/traces",
        iter([body[:100], body[100:]]),
        {"Content-Type": "application/x-protobuf"},
        encode_chunked=True,
    )
    assert connection.getresponse().status == 200
    assert spooled(receiver) == 2


def test_a_span_with_ten_thousand_attributes_is_taken(receiver):
    request = genai_request(1)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.extend(kv(f"app.attribute.{i}", "v" * 50) for i in range(10_000))
    status, _, body = post(receiver, request.SerializeToString())
    assert status == 200
    assert not ExportTraceServiceResponse.FromString(body).HasField("partial_success")


def test_over_the_high_water_mark_the_answer_is_503_with_retry_after(receiver, monkeypatch):
    monkeypatch.setattr(
        receiver.emitter, "spooled_bytes", lambda: receiver.settings.spool_high_water_bytes + 1
    )
    status, headers, _ = post(receiver, genai_request(1).SerializeToString())
    assert (status, headers["Retry-After"]) == (503, str(receiver.settings.retry_after_s))


def test_more_requests_than_allowed_at_once_get_429_with_retry_after(receiver):
    for _ in range(receiver.settings.max_concurrent_requests):
        receiver.slots.acquire()
    try:
        status, headers, _ = post(receiver, genai_request(1).SerializeToString())
    finally:
        for _ in range(receiver.settings.max_concurrent_requests):
            receiver.slots.release()
    assert (status, headers["Retry-After"]) == (429, str(receiver.settings.retry_after_s))


def test_a_full_spool_means_503_not_success(tmp_path):
    settings = CollectSettings(port=0)
    receiver = assembly.receiver(
        settings,
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        RegistrySettings(url="http://127.0.0.1:1"),
        ProducerSettings(spool_dir=tmp_path, spool_max_bytes=1024 * 1024),
    )
    threading.Thread(target=receiver.serve, daemon=True).start()
    try:
        statuses = [post(receiver, genai_request(512).SerializeToString())[0] for _ in range(8)]
        assert statuses[0] == 200
        assert 503 in statuses
    finally:
        receiver.stop(timeout_s=1)


def test_feedback_log_records_are_spooled_and_other_records_ignored(receiver):
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    feedback = records.add()
    feedback.event_name = "onfinish.feedback"
    feedback.time_unix_nano = time.time_ns()
    feedback.attributes.extend([kv("gen_ai.response.id", "chatcmpl-1"), kv("onfinish.feedback.rating", 1)])
    plain = records.add()
    plain.body.CopyFrom(AnyValue(string_value="a log line"))
    orphan = records.add()
    orphan.attributes.append(KeyValue(key="event.name", value=AnyValue(string_value="onfinish.feedback")))
    status, _, body = post(receiver, request.SerializeToString(), path="/v1/logs")
    assert status == 200
    partial = ExportLogsServiceResponse.FromString(body).partial_success
    assert partial.rejected_log_records == 1  # the feedback without a response id
    assert spooled(receiver) == 1


def test_health_and_unknown_paths(receiver):
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    connection.request("GET", "/health")
    health: dict[str, Any] = json.loads(connection.getresponse().read())
    assert health["status"] == "ok"
    connection.request("POST", "/v1/metrics", b"", {"Content-Type": "application/x-protobuf"})
    assert connection.getresponse().status == 404


@pytest.mark.parametrize(
    ("span", "place"),
    [
        ({"startTimeUnixNano": "alice@example.com"}, "spans.startTimeUnixNano"),
        ({"attributes": [{"key": "k", "value": {"intValue": "alice@example.com"}}]}, "intValue"),
        ({"attributes": [{"key": "k", "value": {"doubleValue": "alice@example.com"}}]}, "attributes.value"),
        ({"name": {"nested": "alice@example.com"}}, "spans.name"),
    ],
)
def test_a_json_body_refused_names_the_field_but_never_echoes_its_value(receiver, span, place):
    # The sender's exporter logs the error message it gets back, so it must not quote the body.
    document = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    status, _, answer = post(receiver, json.dumps(document).encode(), "application/json")
    assert status == 400
    message = json.loads(answer)["message"]
    assert "alice" not in message
    assert place in message and "wrong type" in message
    assert alive(receiver)
