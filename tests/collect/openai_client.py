"""A real OpenTelemetry-instrumented openai client, run in a process of its own by the tests.

    python -m tests.collect.openai_client <v2|traceloop> <OTLP traces endpoint> <stub base url> <run id>

`v2` is OpenTelemetry's opentelemetry-instrumentation-openai-v2, `traceloop` Traceloop's
opentelemetry-instrumentation-openai (OpenLLMetry). Both patch the same openai methods and set the
process's tracer provider, so each runs alone in its own process. The spans leave through the
OpenTelemetry SDK's OTLP/HTTP (protobuf) exporter. Prints one JSON line: the response ids.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import openai
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def main() -> None:
    which, endpoint, base_url, run_id = sys.argv[1:5]
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"{which}-{run_id}", "deployment.environment.name": "test"})
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=200)
    )
    trace.set_tracer_provider(provider)
    module = "opentelemetry.instrumentation." + ("openai_v2" if which == "v2" else "openai")
    instrumentor: Any = importlib.import_module(module).OpenAIInstrumentor()
    instrumentor.instrument()

    client = openai.OpenAI(base_url=base_url, api_key="sk-test-not-a-key", max_retries=0)
    messages: Any = [{"role": "user", "content": "What is six times seven?"}]
    ids: dict[str, str] = {}
    ids["plain"] = client.chat.completions.create(model="gpt-4o", messages=messages).id
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        ids["streamed"] = chunk.id
    try:
        client.chat.completions.create(model="gpt-4o-error", messages=messages)
    except openai.BadRequestError as error:
        ids["error"] = type(error).__name__
    provider.shutdown()  # exports what is batched, with the exporter's retries
    print(json.dumps(ids))


if __name__ == "__main__":
    main()
