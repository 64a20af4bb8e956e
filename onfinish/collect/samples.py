"""Synthetic OTLP trace requests shaped like a GenAI instrumentation's (current gen_ai.* names):
for the benchmark, the tests and trying the receiver out (`onfinish collect` with any sender)."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

MODELS = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.5-flash"),
)


def kv(key: str, value: Any) -> KeyValue:
    """An OTLP attribute from a Python value."""
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    if isinstance(value, list):
        return KeyValue(
            key=key, value=AnyValue(array_value=ArrayValue(values=[kv("", item).value for item in value]))
        )
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def genai_request(
    spans: int,
    *,
    service: str = "chat-api",
    seed: int | None = None,
    end_ns: int | None = None,
    session: str | None = None,
) -> ExportTraceServiceRequest:
    """One request of `spans` chat spans (one resource, one scope), ending just before `end_ns`."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
    end_ns = end_ns or time.time_ns()
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        [
            kv("service.name", service),
            kv("deployment.environment.name", "production"),
            kv("service.version", "1.4.2"),
        ]
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "opentelemetry.instrumentation.openai_v2"
    for index in range(spans):
        provider, model = MODELS[rng.randrange(len(MODELS))]
        latency_ns = rng.randint(300, 4000) * 1_000_000
        span = scope_spans.spans.add()
        span.trace_id = rng.randbytes(16) if seed is not None else os.urandom(16)
        span.span_id = rng.randbytes(8) if seed is not None else os.urandom(8)
        span.name = f"chat {model}"
        span.kind = Span.SPAN_KIND_CLIENT
        span.end_time_unix_nano = end_ns - index * 1000
        span.start_time_unix_nano = span.end_time_unix_nano - latency_ns
        prompt = rng.randint(100, 4000)
        span.attributes.extend(
            [
                kv("gen_ai.operation.name", "chat"),
                kv("gen_ai.provider.name", provider),
                kv("gen_ai.request.model", model),
                kv("gen_ai.response.model", f"{model}-2026-01-01"),
                kv("gen_ai.response.id", f"chatcmpl-{span.span_id.hex()}"),
                kv("gen_ai.conversation.id", session or f"conv-{rng.randrange(1000)}"),
                kv("gen_ai.usage.input_tokens", prompt),
                kv("gen_ai.usage.output_tokens", rng.randint(10, 800)),
                kv("gen_ai.usage.cache_read.input_tokens", rng.randint(0, prompt)),
                kv("gen_ai.response.time_to_first_chunk", round(latency_ns / 1e9 * rng.uniform(0.1, 0.4), 4)),
                kv("gen_ai.response.finish_reasons", ["stop"]),
                kv("gen_ai.request.temperature", 0.7),
                kv("gen_ai.request.max_tokens", 1024),
                kv("server.address", "api.example.com"),
            ]
        )
    return request
