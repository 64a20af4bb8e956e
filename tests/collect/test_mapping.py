"""The mapping from GenAI spans to OnFinishEvents, convention by convention, with spans built by hand.

Each case is a span as that instrumentation writes it (attribute names and value types as seen in
its spans); the events are validated by the contract's own model, as the SDK's encoder does.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from onfinish.collect.feedback import FeedbackEvent, FeedbackReader
from onfinish.collect.mapping import (
    SPAN_NAMESPACE,
    Ignored,
    Rejected,
    SpanData,
    SpanEvent,
    SpanMapper,
    load_mapping,
)
from onfinish.errors import ConfigurationError
from onfinish.schemas.models import Feedback, OnFinishEvent

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
START_NS = int((NOW - timedelta(seconds=2)).timestamp() * 1e9)
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN = bytes.fromhex("b7ad6b7169203331")
MAPPING = load_mapping()


def _mapper(**options: Any) -> SpanMapper:
    return SpanMapper(MAPPING, clock=lambda: NOW, **options)


def _span(attributes: dict[str, Any], *, duration_ms: float = 800, **fields: Any) -> SpanData:
    return SpanData(
        trace_id=fields.pop("trace_id", TRACE),
        span_id=fields.pop("span_id", SPAN),
        name=fields.pop("name", "chat gpt-4o"),
        start_time_unix_nano=START_NS,
        end_time_unix_nano=START_NS + int(duration_ms * 1e6),
        attributes=attributes,
        resource=fields.pop(
            "resource", {"service.name": "chat-api", "deployment.environment.name": "staging"}
        ),
        **fields,
    )


def _event(attributes: dict[str, Any], **fields: Any) -> OnFinishEvent:
    mapped = _mapper(**fields.pop("mapper", {})).map(_span(attributes, **fields))
    assert isinstance(mapped, dict), mapped
    return OnFinishEvent.model_validate(mapped)


def test_current_gen_ai_conventions():
    event = _event(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.response.id": "chatcmpl-123",
            "gen_ai.conversation.id": "conv-9",
            "user.id": "u-1",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
            "gen_ai.usage.cache_read.input_tokens": 1024,
            "gen_ai.usage.reasoning.output_tokens": 128,
            "gen_ai.response.time_to_first_chunk": 0.25,
            "gen_ai.response.finish_reasons": ["stop", "length"],
            "gen_ai.request.stream": True,
            "server.address": "api.openai.com",
            "gen_ai.request.temperature": 0.7,
        }
    )
    assert event.event_id == uuid.uuid5(SPAN_NAMESPACE, TRACE.hex() + SPAN.hex())
    assert (event.trace_id, event.span_id) == (TRACE.hex(), SPAN.hex())
    assert (event.request_id, event.session_id, event.user_id) == ("chatcmpl-123", "conv-9", "u-1")
    assert (event.service, event.environment) == ("chat-api", "staging")
    assert (event.provider, event.model_id, event.model_version) == ("openai", "gpt-4o", "gpt-4o-2024-08-06")
    assert event.operation.value == "chat"
    # input_tokens includes the cached ones, as prompt_tokens does: no arithmetic.
    assert (event.prompt_tokens, event.cached_tokens) == (1200, 1024)
    assert (event.completion_tokens, event.reasoning_tokens) == (300, 128)
    assert event.ttft_ms == pytest.approx(250.0)
    assert event.latency_ms == pytest.approx(800.0)
    assert event.started_at == NOW - timedelta(seconds=2)
    assert (event.streamed, event.finish_reason, event.status.value) == (True, "stop", "success")
    assert event.attributes["server.address"] == "api.openai.com"
    assert event.attributes["gen_ai.request.temperature"] == "0.7"
    assert event.attributes["onfinish.mapping_version"] == "1"
    assert event.sdk_name == "onfinish-collect"


def test_older_gen_ai_names_and_openllmetry_cache_attributes():
    event = _event(
        {
            "gen_ai.system": "openai",
            "llm.request.type": "completion",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.prompt_tokens": 900,
            "gen_ai.usage.completion_tokens": 50,
            "gen_ai.usage.cache_read_input_tokens": 512,
            "gen_ai.usage.cache_creation_input_tokens": 256,
            "llm.usage.total_tokens": 950,
            "llm.is_streaming": False,
        }
    )
    assert (event.provider, event.model_id, event.operation.value) == ("openai", "gpt-4o-mini", "completion")
    assert (event.prompt_tokens, event.completion_tokens, event.cached_tokens) == (900, 50, 512)
    assert event.attributes["gen_ai.usage.cache_creation.input_tokens"] == "256"
    assert "llm.usage.total_tokens" not in event.attributes
    assert event.streamed is False


def test_cache_counted_apart_from_the_input_is_added_to_it():
    # Anthropic's API (and instrumentations that copy it) report input_tokens without the cache.
    event = _event(
        {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4",
            "gen_ai.usage.input_tokens": 20,
            "gen_ai.usage.cache_read.input_tokens": 3000,
            "gen_ai.usage.cache_creation.input_tokens": 500,
            "gen_ai.usage.output_tokens": 10,
            "gen_ai.usage.reasoning.output_tokens": 40,
        }
    )
    assert (event.prompt_tokens, event.cached_tokens) == (3520, 3000)
    assert (event.completion_tokens, event.reasoning_tokens) == (50, 40)


def test_traceloop_openllmetry_spans_with_ttft_from_chunk_events():
    chunks = [
        SpanEvent(START_NS + (180 + 10 * i) * 1_000_000, "gen_ai.content.completion.chunk", {})
        for i in range(7)
    ]
    event = _event(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.is_streaming": True,
            "gen_ai.response.id": "chatcmpl-7",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
            "gen_ai.usage.reasoning_tokens": 128,
            "gen_ai.openai.api_base": "http://127.0.0.1:1/v1/",
            "gen_ai.input.messages": '[{"role": "user", "parts": [{"content": "hi", "type": "text"}]}]',
            "gen_ai.output.messages": '[{"role": "assistant", "parts": [{"content": "The answer", "type": "text"}]}]',
            "traceloop.association.properties.session_id": "s-1",
        },
        events=chunks,
    )
    assert event.ttft_ms == pytest.approx(180.0)
    assert (event.streamed, event.stream_chunks) == (True, 7)
    assert (event.reasoning_tokens, event.session_id) == (128, "s-1")
    # Content is fingerprinted, never sent or passed as an attribute unless capture is on.
    assert (event.prompt_chars, event.completion_chars) == (2, 10)
    assert event.prompt_hash and event.prompt_text is None and event.completion_text is None
    assert not [key for key in event.attributes if "messages" in key]


def test_openllmetry_indexed_prompts_and_llm_names():
    event = _event(
        {
            "llm.request.type": "chat",
            "gen_ai.system": "Anthropic",
            "llm.request.model": "claude-3-haiku",
            "llm.usage.prompt_tokens": 10,
            "llm.usage.completion_tokens": 5,
            "llm.usage.reasoning_tokens": 2,
            "llm.response.finish_reason": "end_turn",
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "Hello",
            "gen_ai.prompt.1.content": "there",
            "gen_ai.completion.0.content": "Hi!",
        },
        mapper={"capture_content": True},
    )
    assert (event.provider, event.model_id) == ("Anthropic", "claude-3-haiku")
    assert (event.prompt_tokens, event.completion_tokens, event.reasoning_tokens) == (10, 5, 2)
    assert event.finish_reason == "end_turn"
    assert (event.prompt_text, event.completion_text) == ("Hello\nthere", "Hi!")
    assert not [key for key in event.attributes if key.startswith(("gen_ai.prompt", "gen_ai.completion"))]


def test_vercel_ai_sdk_do_stream_span():
    event = _event(
        {
            "operation.name": "ai.streamText.doStream stream",
            "ai.operationId": "ai.streamText.doStream",
            "ai.model.provider": "openai.chat",
            "ai.model.id": "gpt-4o-mini",
            "gen_ai.system": "openai.chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "ai.telemetry.functionId": "answer",
            "ai.telemetry.metadata.sessionId": "session-1",
            "ai.telemetry.metadata.userId": "user-7",
            "ai.response.msToFirstChunk": 122.7,
            "ai.response.msToFinish": 209.9,
            "ai.response.finishReason": "stop",
            "ai.response.id": "resp-1",
            "ai.response.model": "gpt-4o-mini-2024-07-18",
            "ai.usage.inputTokens": 2000,
            "ai.usage.cachedInputTokens": 1500,
            "ai.usage.outputTokens": 400,
            "ai.usage.reasoningTokens": 250,
            "ai.prompt.messages": '[{"role":"user","content":[{"type":"text","text":"Capital of France?"}]}]',
            "ai.response.text": "Paris.",
            "ai.settings.maxRetries": 2,
        },
        events=[
            SpanEvent(
                START_NS + 122 * 1_000_000, "ai.stream.firstChunk", {"ai.response.msToFirstChunk": 122.7}
            )
        ],
    )
    assert (event.provider, event.model_id, event.model_version) == (
        "openai",
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
    )
    assert (event.request_id, event.session_id, event.user_id, event.feature_id) == (
        "resp-1",
        "session-1",
        "user-7",
        "answer",
    )
    assert event.ttft_ms == pytest.approx(122.7)
    assert event.streamed is True
    assert (event.prompt_tokens, event.cached_tokens, event.completion_tokens, event.reasoning_tokens) == (
        2000,
        1500,
        400,
        250,
    )
    assert (event.prompt_chars, event.completion_chars) == (len("Capital of France?"), len("Paris."))
    assert set(event.attributes) == {"ai.settings.maxRetries", "onfinish.mapping_version"}


def test_vercel_ai_sdk_v4_usage_names():
    event = _event(
        {
            "ai.operationId": "ai.generateText.doGenerate",
            "ai.model.provider": "anthropic.messages",
            "ai.model.id": "claude-sonnet-4",
            "ai.usage.promptTokens": 30,
            "ai.usage.completionTokens": 12,
            "ai.response.finishReason": "stop",
        }
    )
    assert (event.provider, event.prompt_tokens, event.completion_tokens) == ("anthropic", 30, 12)
    assert event.streamed is False


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"http.request.method": "POST", "url.full": "http://x"}, "not_genai"),
        ({"db.system.name": "postgresql", "db.query.text": "SELECT 1"}, "not_genai"),
        (
            {"ai.operationId": "ai.generateText", "ai.model.id": "gpt-4o", "ai.usage.inputTokens": 5},
            "wrapper",
        ),
        ({"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o"}, "agent_step"),
        ({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}, "agent_step"),
        ({"traceloop.span.kind": "workflow", "llm.request.type": "chat"}, "agent_step"),
        ({"llm.request.type": "rerank", "gen_ai.request.model": "rerank-3"}, "unsupported_operation"),
    ],
)
def test_spans_that_are_not_model_calls_are_ignored_with_a_reason(attributes, reason):
    assert _mapper().map(_span(attributes)) == Ignored(reason)


def test_errors_timeouts_and_cancellations():
    base = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}
    failed = _event(
        {**base, "error.type": "BadRequestError", "http.response.status_code": 400},
        status_code=2,
        status_message="Error code: 400 - This model does not exist.",
    )
    assert (failed.status.value, failed.error_type, failed.http_status) == ("error", "BadRequestError", 400)
    assert failed.error_message == "Error code: 400 - This model does not exist."
    assert failed.request_id == f"{TRACE.hex()}-{SPAN.hex()}"  # no response: the span names the call
    timed_out = _event({**base, "error.type": "APITimeoutError"}, status_code=2)
    assert timed_out.status.value == "timeout"
    cancelled = _event(
        base,
        status_code=2,
        events=[
            SpanEvent(START_NS, "exception", {"exception.type": "AbortError", "exception.message": "aborted"})
        ],
    )
    assert (cancelled.status.value, cancelled.error_type, cancelled.error_message) == (
        "cancelled",
        "AbortError",
        "aborted",
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"trace_id": b"\x00" * 16}, "invalid_ids"),
        ({"span_id": b"\x01\x02"}, "invalid_ids"),
        ({"duration_ms": -5}, "invalid_timestamps"),
    ],
)
def test_spans_that_cannot_be_events_are_rejected(fields, reason):
    mapped = _mapper().map(_span({"gen_ai.request.model": "gpt-4o"}, **fields))
    assert isinstance(mapped, Rejected) and mapped.reason == reason


@pytest.mark.parametrize("start", [datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)])
def test_timestamps_far_from_now_are_rejected(start):
    span = _span({"gen_ai.request.model": "gpt-4o"})
    span.start_time_unix_nano = int(start.timestamp() * 1e9) + 1
    span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000
    mapped = _mapper().map(span)
    assert isinstance(mapped, Rejected) and mapped.reason == "timestamp_out_of_range"


def test_a_token_count_that_is_not_a_number_rejects_the_span_naming_the_field_only():
    mapped = _mapper().map(_span({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": "lots"}))
    assert isinstance(mapped, Rejected) and mapped.reason == "invalid_attribute"
    assert "prompt_tokens" in mapped.message and "lots" not in mapped.message


def test_ten_thousand_attributes_keep_the_event_within_the_contract():
    attributes = {f"app.attr.{i}": "x" * 2000 for i in range(10_000)}
    event = _event({**attributes, "gen_ai.request.model": "gpt-4o"})
    assert len(event.attributes) <= 64
    assert all(len(value) <= 1024 for value in event.attributes.values())


def test_a_ttft_beyond_the_duration_is_left_out_rather_than_refusing_the_call():
    event = _event({"gen_ai.request.model": "gpt-4o", "ai.response.msToFirstChunk": 5000.0}, duration_ms=100)
    assert event.ttft_ms is None


def test_content_is_sent_only_when_capture_is_on():
    attributes = {
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.input.messages": [
            {"role": "user", "parts": [{"type": "text", "content": "Mail me at a@b.io"}]}
        ],
        "gen_ai.output.messages": '[{"role": "assistant", "parts": [{"type": "text", "content": "OK"}]}]',
    }
    assert _event(attributes).prompt_text is None
    captured = _event(attributes, mapper={"capture_content": True})
    assert (captured.prompt_text, captured.completion_text) == ("Mail me at a@b.io", "OK")


def test_the_same_span_maps_to_the_same_event_id_and_another_span_to_another():
    mapper = _mapper()
    one = mapper.map(_span({"gen_ai.request.model": "gpt-4o"}))
    again = mapper.map(_span({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 3}))
    other = mapper.map(_span({"gen_ai.request.model": "gpt-4o"}, span_id=bytes.fromhex("00f067aa0ba902b7")))
    assert isinstance(one, dict) and isinstance(again, dict) and isinstance(other, dict)
    assert one["event_id"] == again["event_id"] != other["event_id"]


def test_a_broken_mapping_file_stops_the_start_with_its_reason(tmp_path):
    path = tmp_path / "mapping.toml"
    path.write_text(
        'version = 1\n[model_call]\nmarkers = ["x"]\n[operations]\nchat = "talk"\n[status]\n[fields]\n'
    )
    with pytest.raises(ConfigurationError, match="no contract operation"):
        load_mapping(path)


READER = FeedbackReader(MAPPING.feedback)


@pytest.mark.parametrize(
    ("name", "attributes", "expected"),
    [
        (
            "onfinish.feedback",
            {
                "gen_ai.response.id": "chatcmpl-1",
                "onfinish.feedback.rating": -1,
                "gen_ai.conversation.id": "c",
            },
            {"rating": -1, "regenerated": False, "edited": False, "session_id": "c"},
        ),
        (
            "onfinish.feedback",
            {
                "gen_ai.response.id": "chatcmpl-1",
                "onfinish.feedback.regenerated": True,
                "onfinish.feedback.edited": "true",
            },
            {"rating": None, "regenerated": True, "edited": True, "session_id": None},
        ),
        (
            "gen_ai.evaluation.result",
            {
                "gen_ai.response.id": "r",
                "gen_ai.evaluation.name": "user_feedback",
                "gen_ai.evaluation.score.value": 0.8,
            },
            {"rating": 1},
        ),
        (
            "gen_ai.evaluation.result",
            {
                "gen_ai.response.id": "r",
                "gen_ai.evaluation.name": "thumbs",
                "gen_ai.evaluation.score.label": "thumbs_down",
            },
            {"rating": -1},
        ),
    ],
)
def test_feedback_events_become_feedback_records(name, attributes, expected):
    assert READER.is_feedback(name, attributes)
    fields = READER.read(FeedbackEvent(name, START_NS, attributes, TRACE, SPAN), NOW)
    assert isinstance(fields, dict)
    record = Feedback.model_validate(fields)
    assert record.at == NOW - timedelta(seconds=2)
    for key, value in expected.items():
        assert getattr(record, key) == value
    again = READER.read(FeedbackEvent(name, START_NS, attributes, TRACE, SPAN), NOW)
    assert isinstance(again, dict) and again["feedback_id"] == record.feedback_id


def test_evaluations_that_are_not_a_users_are_not_feedback_and_feedback_needs_a_response_id():
    assert not READER.is_feedback("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "Relevance"})
    assert not READER.is_feedback("gen_ai.content.completion.chunk", {})
    missing = READER.read(FeedbackEvent("onfinish.feedback", START_NS, {"onfinish.feedback.rating": 1}), NOW)
    assert isinstance(missing, Rejected)
    bad = READER.read(
        FeedbackEvent(
            "onfinish.feedback", START_NS, {"gen_ai.response.id": "r", "onfinish.feedback.rating": 5}
        ),
        NOW,
    )
    assert isinstance(bad, Rejected) and "rating" in bad.message


def test_feedback_on_a_span_takes_the_spans_session_when_it_names_none():
    event = FeedbackEvent(
        "onfinish.feedback",
        START_NS,
        {"gen_ai.response.id": "r", "onfinish.feedback.rating": 1},
        TRACE,
        SPAN,
        {"gen_ai.conversation.id": "conv-3"},
    )
    fields = READER.read(event, NOW)
    assert isinstance(fields, dict) and fields["session_id"] == "conv-3"


def test_span_event_ids_are_rfc_4122_uuid5():
    from onfinish.collect.mapping import span_event_id

    for index in range(200):
        ids = (TRACE + index.to_bytes(8, "big")).hex() + SPAN.hex()
        assert span_event_id(ids) == str(uuid.uuid5(SPAN_NAMESPACE, ids))


def test_application_metadata_passes_as_attributes_for_the_allow_list():
    event = _event(
        {
            "ai.operationId": "ai.generateText.doGenerate",
            "ai.model.id": "gpt-4o",
            "ai.telemetry.metadata.sessionId": "s",
            "ai.telemetry.metadata.tenant": "acme",
            "traceloop.association.properties.plan": "pro",
            "ai.request.headers.user-agent": "ai/6",
        },
        resource={"service.name": "x", "process.command_args": ["node", "--token=secret"]},
    )
    assert event.session_id == "s"
    assert event.attributes["ai.telemetry.metadata.tenant"] == "acme"
    assert event.attributes["traceloop.association.properties.plan"] == "pro"
    assert "ai.telemetry.metadata.sessionId" not in event.attributes
    assert not [key for key in event.attributes if key.startswith(("ai.request.headers", "process."))]
