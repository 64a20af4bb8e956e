"""OTLP/HTTP's wire rules: bodies in (protobuf or JSON, gzip or not, bounded), spans out, answers back.

The messages are opentelemetry-proto's; OTLP/JSON is read with protobuf's json_format after the two
things in which OTLP/JSON differs from protobuf's canonical JSON mapping are put right: trace and
span ids are hex strings (not base64), and unknown fields must be ignored. Enums as integers and
64-bit integers as strings or numbers, which OTLP/JSON also prescribes, json_format reads as they
are. Errors are `google.rpc.Status` messages in the request's own encoding, as the specification
asks, so that an exporter can log why.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from onfinish.collect.feedback import FeedbackEvent
from onfinish.collect.mapping import SpanData, SpanEvent

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


class OtlpError(Exception):
    """A request the receiver answers with an error status; `message` says why, without its content."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TooLarge(OtlpError):
    status = 413


class UnsupportedMediaType(OtlpError):
    status = 415


def media_type(content_type: str | None) -> str:
    """The body's media type (application/x-protobuf or application/json), or UnsupportedMediaType."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in (PROTOBUF, JSON):
        raise UnsupportedMediaType(f"Content-Type must be {PROTOBUF} or {JSON}, not {kind or 'missing'}")
    return kind


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body without its Content-Encoding; a gzip body that inflates beyond `limit` is TooLarge
    (read in bounded steps, so a small bomb never takes the memory it claims)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise UnsupportedMediaType(f"Content-Encoding must be gzip or none, not {encoding}")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise OtlpError(f"the gzip body does not inflate: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"the body inflates beyond {limit} bytes")
    if not inflater.eof:
        raise OtlpError("the gzip body is truncated")
    return data


def _hex_ids_to_base64(node: Any) -> None:
    """OTLP/JSON writes ids as hex; json_format reads bytes as base64. An id that is not hex is
    emptied, so that its span is refused alone (as invalid_ids) rather than the whole request."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    node[key] = ""
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


def _parse(body: bytes, kind: str, message: Message) -> None:
    try:
        if kind == PROTOBUF:
            message.ParseFromString(body)
        else:
            document = json.loads(body)
            if not isinstance(document, dict):
                raise OtlpError("an OTLP/JSON body is a JSON object")
            _hex_ids_to_base64(document)
            json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except OtlpError:
        raise
    except json_format.ParseError as exc:
        raise OtlpError(f"the body is not an OTLP JSON message: {_parse_error_place(exc)}") from None
    except (DecodeError, ValueError, RecursionError, binascii.Error) as exc:
        # These verdicts name positions and types (the JSON decoder's line and column, protobuf's
        # message type), never the body's content.
        raise OtlpError(
            f"the body is not an OTLP {'protobuf' if kind == PROTOBUF else 'JSON'} message: "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None


_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field: ")


def _parse_error_place(exc: json_format.ParseError) -> str:
    """Where json_format refused the document, without its last words, which quote the value
    (`Couldn't parse integer: alice@example.com`): the sender reads this, and its exporter logs it."""
    path = _PARSE_FIELD.findall(str(exc))
    where = ".".join(path) if path else "a field"
    return f"{where} holds a value of the wrong type or shape for OTLP"


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    # The hot loop of the receiver (about 2 µs per attribute with upb): kept to one pass.
    out: dict[str, Any] = {}
    for kv in pairs:
        value = kv.value
        which = value.WhichOneof("value")
        if which is None:
            continue
        if which == "array_value" or which == "kvlist_value":
            out[kv.key] = _value(value)
        else:
            out[kv.key] = getattr(value, which)
    return out


def trace_spans(body: bytes, kind: str) -> list[SpanData]:
    """Every span of an ExportTraceServiceRequest, with its resource's attributes, or OtlpError."""
    request = ExportTraceServiceRequest()
    _parse(body, kind, request)
    spans: list[SpanData] = []
    append = spans.append
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                status = span.status
                append(
                    SpanData(
                        trace_id=span.trace_id,
                        span_id=span.span_id,
                        name=span.name,
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        status_code=status.code,
                        status_message=status.message,
                        events=[
                            SpanEvent(event.time_unix_nano, event.name, _attributes(event.attributes))
                            for event in span.events
                        ],
                        scope_name=scope,
                    )
                )
    return spans


def log_events(body: bytes, kind: str) -> Iterator[FeedbackEvent]:
    """Every log record of an ExportLogsServiceRequest as an event: its event name (the record's
    `event_name`, or its `event.name` attribute) with its attributes, time and span."""
    request = ExportLogsServiceRequest()
    _parse(body, kind, request)
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = _attributes(record.attributes)
                name = record.event_name or str(attributes.get("event.name", ""))
                yield FeedbackEvent(
                    name=name,
                    time_unix_nano=record.time_unix_nano or record.observed_time_unix_nano,
                    attributes=attributes,
                    trace_id=record.trace_id,
                    span_id=record.span_id,
                )


def log_record_count(body: bytes, kind: str) -> int:
    request = ExportLogsServiceRequest()
    _parse(body, kind, request)
    return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)


@dataclass(frozen=True)
class PartialSuccess:
    rejected: int = 0
    message: str = ""


def _encode(message: Message, kind: str) -> bytes:
    if kind == JSON:
        return json.dumps(json_format.MessageToDict(message)).encode()
    return bytes(message.SerializeToString())


def trace_response(result: PartialSuccess, kind: str) -> bytes:
    """ExportTraceServiceResponse; partial_success only when something was rejected (the spec's rule)."""
    response = ExportTraceServiceResponse()
    if result.rejected or result.message:
        response.partial_success.rejected_spans = result.rejected
        response.partial_success.error_message = result.message
    return _encode(response, kind)


def logs_response(result: PartialSuccess, kind: str) -> bytes:
    response = ExportLogsServiceResponse()
    if result.rejected or result.message:
        response.partial_success.rejected_log_records = result.rejected
        response.partial_success.error_message = result.message
    return _encode(response, kind)


# google.rpc.Code of an HTTP status, for the Status body (google/rpc/code.proto).
_RPC_CODES = {400: 3, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}


def status_body(http_status: int, message: str, kind: str) -> bytes:
    return _encode(status_pb2.Status(code=_RPC_CODES.get(http_status, 2), message=message), kind)
