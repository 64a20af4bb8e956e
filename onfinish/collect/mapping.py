"""The mapping from OpenTelemetry GenAI spans to OnFinishEvents: data (data/mapping.v1.toml) and the
pure function that applies it.

A span is a model call when it carries a GenAI marker attribute and no ignore rule of the mapping
matches it; every other span is *ignored* with a reason (not_genai, wrapper, agent_step, ...), which
is not an error. A model call becomes the fields of an OnFinishEvent; a span whose data cannot make
one (ids of the wrong length, no end time, a timestamp out of range, a token count that is not a
number) is *rejected* with a reason, which the receiver reports in OTLP's partial success. The
event id is a UUIDv5 of the trace and span ids, so a span delivered twice, by any path, is one
event downstream. docs/contract.md documents every field.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from onfinish import __version__
from onfinish.collect.content import messages_text
from onfinish.errors import ConfigurationError
from onfinish.producers.fingerprint import fingerprint
from onfinish.schemas.models import MAX_ATTRIBUTE_CHARS, MAX_ATTRIBUTES, MAX_ID_CHARS, MAX_TEXT_CHARS

# UUIDv5 namespaces: uuid5(NAMESPACE_OID, "onfinish.collect.span") and (..., "onfinish.collect.feedback").
# An event's id is uuid5(SPAN_NAMESPACE, <trace id hex><span id hex>), lower-case hex, 32 + 16 digits.
SPAN_NAMESPACE = uuid.UUID("fa9c2012-2cf9-5869-952d-660d3e78a56c")
FEEDBACK_NAMESPACE = uuid.UUID("0ae8eef5-ffd4-59cf-8855-b3b644336d85")
SDK_NAME = "onfinish-collect"
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
UNKNOWN = "unknown"

Value = Any  # an OTLP AnyValue as Python: str, bool, int, float, bytes, list or dict

# Contract fields the mapping file may name, and the extra sources it reads for the token rule.
STRING_FIELDS = (
    "request_id",
    "session_id",
    "user_id",
    "service",
    "environment",
    "region",
    "deployment_id",
    "feature_id",
    "variant_id",
    "prompt_template_id",
    "routing_strategy",
    "operation",
    "provider",
    "model_id",
    "model_version",
    "finish_reason",
    "error_type",
)
COUNT_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "http_status",
    "retry_count",
)
NUMBER_FIELDS = ("ttft_ms", "reported_cost_usd")
FLAG_FIELDS = ("streamed",)
KNOWN_FIELDS = frozenset(STRING_FIELDS + COUNT_FIELDS + NUMBER_FIELDS + FLAG_FIELDS)


# --- the file --------------------------------------------------------------------------------------


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    attribute: str = Field(min_length=1)
    scale: float = 1.0


class IgnoreRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str = Field(pattern=r"^[a-z_]+$")
    attribute: str = Field(min_length=1)
    values: list[str] = Field(min_length=1)
    description: str = ""


class Streaming(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    operations: list[str] = []
    chunk_events: list[str] = []
    first_chunk_events: list[str] = []


class ContentSources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: list[str] = []
    output: list[str] = []
    indexed_input_prefix: str = ""
    indexed_output_prefix: str = ""


class FeedbackRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[str] = []
    user_evaluation_names: list[str] = []
    positive_labels: list[str] = []
    negative_labels: list[str] = []


class MappingFile(BaseModel):
    """data/mapping.v1.toml, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    model_call: dict[str, list[str]]
    ignore: list[IgnoreRule] = []
    operations: dict[str, str]
    providers: dict[str, str] = {}
    status: dict[str, list[str]]
    fields: dict[str, list[str | Source]]
    streaming: Streaming = Streaming()
    content: ContentSources = ContentSources()
    attributes: dict[str, list[str]] = {}
    feedback: FeedbackRules = FeedbackRules()

    @model_validator(mode="after")
    def _known(self) -> MappingFile:
        unknown = set(self.fields) - KNOWN_FIELDS
        if unknown:
            raise ValueError(f"[fields] names no contract field: {sorted(unknown)}")
        if not self.model_call.get("markers"):
            raise ValueError("[model_call] needs markers")
        bad_operations = set(self.operations.values()) - {"chat", "completion", "embeddings", "tool"}
        if bad_operations:
            raise ValueError(f"[operations] maps to no contract operation: {sorted(bad_operations)}")
        if set(self.status) - {"timeout", "cancelled"}:
            raise ValueError("[status] knows only timeout and cancelled")
        return self


def load_mapping(path: Path | None = None) -> MappingFile:
    """The mapping file at `path`, or the packaged one; a broken file stops the start, with its reason."""
    try:
        if path is None:
            text = resources.files("onfinish.collect").joinpath("data/mapping.v1.toml").read_text()
        else:
            text = path.read_text()
        return MappingFile.model_validate(tomllib.loads(text))
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigurationError(f"mapping file {path or 'mapping.v1.toml'} is invalid: {exc}") from exc


# --- what the mapper reads and returns ------------------------------------------------------------


@dataclass(slots=True)
class SpanEvent:
    time_unix_nano: int
    name: str
    attributes: dict[str, Value]


@dataclass(slots=True)
class SpanData:
    """One span as the mapper reads it, with its resource's attributes and its scope's name."""

    trace_id: bytes
    span_id: bytes
    name: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, Value]
    resource: dict[str, Value]
    status_code: int = 0
    status_message: str = ""
    events: list[SpanEvent] = field(default_factory=list)
    scope_name: str = ""


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # a word from REJECT_REASONS, for metrics
    message: str  # what is wrong, naming fields but never their values


REJECT_REASONS = (
    "invalid_ids",
    "invalid_timestamps",
    "timestamp_out_of_range",
    "invalid_attribute",
    "contract_violation",
    "spool_full",
    "processing_error",  # a bug in the mapping: the span is refused alone, and logged
)


class _Invalid(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.rejected = Rejected(reason, message)


_SPAN_NAMESPACE_BYTES = SPAN_NAMESPACE.bytes


def span_event_id(ids_hex: str) -> str:
    """uuid5(SPAN_NAMESPACE, ids_hex) in its canonical text form, which the contract's model reads.

    What uuid.uuid5 computes (RFC 4122: SHA-1 of namespace and name, version and variant bits set),
    written out because building the UUID object took a tenth of a span's mapping (23 µs here);
    tests/collect/test_mapping.py holds the two equal.
    """
    digest = hashlib.sha1(_SPAN_NAMESPACE_BYTES + ids_hex.encode(), usedforsecurity=False).hexdigest()
    variant = "89ab"[int(digest[16], 16) & 0x3]
    return f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"


def nanos_to_datetime(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value // 1000)


def as_text(value: Value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # gen_ai.response.finish_reasons: the first reason
        return as_text(value[0]) if value else None
    if isinstance(value, bool | int | float):
        return str(value)
    return None


def as_count(name: str, value: Value) -> int:
    if isinstance(value, bool):
        raise _Invalid("invalid_attribute", f"{name} is a boolean, not a count")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise _Invalid("invalid_attribute", f"{name} is not a whole number")


def as_number(name: str, value: Value) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise _Invalid("invalid_attribute", f"{name} is not a number")


def as_flag(value: Value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def attribute_text(value: Value) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, bytes):
        text = value.hex()
    else:
        text = json.dumps(value, default=str, ensure_ascii=False)
    return text[:MAX_ATTRIBUTE_CHARS]


# --- the mapper ------------------------------------------------------------------------------------


class SpanMapper:
    """Applies a mapping file to spans; pure but for `clock`, which bounds the timestamps."""

    def __init__(
        self,
        mapping: MappingFile,
        *,
        capture_content: bool = False,
        max_past: timedelta = timedelta(days=7),
        max_future: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.mapping = mapping
        self.capture_content = capture_content
        self.max_past = max_past
        self.max_future = max_future
        self.clock = clock
        self.markers = tuple(mapping.model_call["markers"])
        self.ignore_rules = tuple(
            (rule.attribute, frozenset(rule.values), rule.reason) for rule in mapping.ignore
        )
        self.operations = dict(mapping.operations)
        self.providers = dict(mapping.providers)
        self.timeout_words = tuple(w.lower() for w in mapping.status.get("timeout", []))
        self.cancelled_words = tuple(w.lower() for w in mapping.status.get("cancelled", []))
        # The sources inverted: attribute -> (field, rank among the field's sources, scale). A span
        # is mapped in one pass over its attributes (about 15) rather than by asking for each of
        # the 100-odd sources (measured: a third of the mapping's time less).
        index: dict[str, list[tuple[str, int, float]]] = {}
        resource_index: dict[str, list[tuple[str, int, float]]] = {}
        for name, sources in mapping.fields.items():
            for rank, source in enumerate(sources):
                attribute, scale = (
                    (source, 1.0) if isinstance(source, str) else (source.attribute, source.scale)
                )
                target = resource_index if attribute.startswith("resource:") else index
                target.setdefault(attribute.removeprefix("resource:"), []).append((name, rank, scale))
        self.index = {key: tuple(value) for key, value in index.items()}
        self.resource_index = {key: tuple(value) for key, value in resource_index.items()}
        read: set[str] = set(self.index)
        content = mapping.content
        self.input_sources = tuple(content.input)
        self.output_sources = tuple(content.output)
        self.indexed_input = content.indexed_input_prefix
        self.indexed_output = content.indexed_output_prefix
        read |= set(content.input) | set(content.output) | set(self.markers)
        read |= {rule[0] for rule in self.ignore_rules}
        self.read = frozenset(read)
        self.drop_prefixes = tuple(mapping.attributes.get("drop_prefixes", []))
        self.streaming_operations = frozenset(mapping.streaming.operations)
        self.chunk_events = frozenset(mapping.streaming.chunk_events)
        self.first_chunk_events = frozenset(mapping.streaming.first_chunk_events)
        self.version_attribute = str(mapping.version)
        self._last_resource: tuple[object, dict[str, tuple[int, Value]]] = (None, {})

    # What kind of span is this? ------------------------------------------------------------------

    def classify(self, attributes: Mapping[str, Value]) -> Ignored | None:
        """None for a model call, else why the span is ignored."""
        for attribute, values, reason in self.ignore_rules:
            value = attributes.get(attribute)
            if value is not None and value in values:
                return Ignored(reason)
        for marker in self.markers:
            if marker in attributes:
                return None
        return Ignored("not_genai")

    # The event ----------------------------------------------------------------------------------

    def _resolve(
        self, attributes: Mapping[str, Value], resource: Mapping[str, Value]
    ) -> tuple[dict[str, Value], dict[str, str]]:
        """Every field's value (its first source present) and the attributes passed on as they are."""
        found = dict(self._resource_fields(resource))
        extra: dict[str, str] = {}
        read, drop, index = self.read, self.drop_prefixes, self.index
        room = MAX_ATTRIBUTES - 3  # the mapping's own three
        for key, value in attributes.items():
            targets = index.get(key)
            if targets is None:
                if (
                    len(extra) < room
                    and value is not None
                    and key not in read
                    and 0 < len(key) <= MAX_ID_CHARS
                    and not key.startswith(drop)
                ):
                    extra[key] = attribute_text(value)
                continue
            if value is None or value == "":
                continue
            for name, rank, scale in targets:
                held = found.get(name)
                if held is None or rank < held[0]:
                    found[name] = (rank, value if scale == 1.0 else as_number(key, value) * scale)
        return {name: value for name, (_, value) in found.items()}, extra

    def _resource_fields(self, resource: Mapping[str, Value]) -> dict[str, tuple[int, Value]]:
        """The fields a resource gives, remembered for the next span: the spans of one request's
        resource share its dict, and a real SDK's resource has 10 to 20 attributes (host, process,
        telemetry.sdk) that would otherwise be looked up again for every span."""
        last = self._last_resource
        if last[0] is resource:
            return last[1]
        found: dict[str, tuple[int, Value]] = {}
        for key, value in resource.items():
            targets = self.resource_index.get(key)
            if targets is None or value is None or value == "":
                continue
            for name, rank, scale in targets:
                held = found.get(name)
                if held is None or rank < held[0]:
                    found[name] = (rank, value if scale == 1.0 else as_number(key, value) * scale)
        self._last_resource = (resource, found)  # one assignment: safe for concurrent requests
        return found

    def map(self, span: SpanData) -> dict[str, Any] | Ignored | Rejected:
        """The OnFinishEvent fields of a model-call span (validated later, by the SDK's encoder)."""
        attributes = span.attributes
        ignored = self.classify(attributes)
        if ignored is not None:
            return ignored
        try:
            return self._event(span)
        except _Invalid as invalid:
            return invalid.rejected

    def _event(self, span: SpanData) -> dict[str, Any]:
        attributes, resource = span.attributes, span.resource
        if (
            len(span.trace_id) != 16
            or len(span.span_id) != 8
            or not any(span.trace_id)
            or not any(span.span_id)
        ):
            raise _Invalid("invalid_ids", "trace_id must be 16 bytes and span_id 8, not all zero")
        start_ns, end_ns = span.start_time_unix_nano, span.end_time_unix_nano
        if not start_ns or not end_ns or end_ns < start_ns:
            raise _Invalid(
                "invalid_timestamps", "a span needs a start and an end time, the end not before the start"
            )
        now = self.clock()
        started_at, finished_at = nanos_to_datetime(start_ns), nanos_to_datetime(end_ns)
        if finished_at > now + self.max_future or started_at < now - self.max_past:
            raise _Invalid(
                "timestamp_out_of_range",
                f"span from {started_at.isoformat()} to {finished_at.isoformat()} is outside "
                f"[now - {self.max_past}, now + {self.max_future}]",
            )
        found, extra = self._resolve(attributes, resource)
        text: dict[str, str | None] = dict.fromkeys(STRING_FIELDS)
        for name in STRING_FIELDS:
            value = found.get(name)
            if value is not None:
                text[name] = as_text(value)
        counts: dict[str, int] = {}
        for name in COUNT_FIELDS:
            value = found.get(name)
            counts[name] = 0 if value is None else as_count(name, value)
        trace_hex, span_hex = span.trace_id.hex(), span.span_id.hex()
        latency_ms = (end_ns - start_ns) / 1e6
        operation_name = text["operation"]
        event: dict[str, Any] = {
            "event_id": span_event_id(trace_hex + span_hex),
            "request_id": text["request_id"] or f"{trace_hex}-{span_hex}",
            "trace_id": trace_hex,
            "span_id": span_hex,
            "session_id": text["session_id"],
            "user_id": text["user_id"],
            "service": text["service"] or "unknown_service",
            "environment": text["environment"] or "production",
            "region": text["region"],
            "deployment_id": text["deployment_id"],
            "feature_id": text["feature_id"],
            "variant_id": text["variant_id"],
            "prompt_template_id": text["prompt_template_id"],
            "operation": self.operations.get(operation_name or "", "chat"),
            "provider": self._provider(text["provider"]),
            "model_id": text["model_id"] or UNKNOWN,
            "model_version": text["model_version"],
            "started_at": started_at,
            "finished_at": finished_at,
            "latency_ms": latency_ms,
            "sdk_name": SDK_NAME,
            "sdk_version": __version__,
        }
        if text["routing_strategy"] in ("primary", "fallback", "cache"):
            event["routing_strategy"] = text["routing_strategy"]
        self._usage(event, counts)
        self._timing(event, span, found, operation_name, latency_ms)
        self._outcome(event, span, text, counts)
        cost = found.get("reported_cost_usd")
        if cost is not None:
            event["reported_cost_usd"] = as_number("reported_cost_usd", cost)
        if counts["retry_count"]:
            event["retry_count"] = counts["retry_count"]
        self._content(event, attributes)
        if counts["cache_creation_tokens"]:
            extra["gen_ai.usage.cache_creation.input_tokens"] = str(counts["cache_creation_tokens"])
        extra["onfinish.mapping_version"] = self.version_attribute
        if span.scope_name:
            extra["otel.scope.name"] = span.scope_name[:MAX_ATTRIBUTE_CHARS]
        event["attributes"] = extra
        return event

    def _provider(self, name: str | None) -> str:
        if not name:
            return UNKNOWN
        return self.providers.get(name, name)

    @staticmethod
    def _usage(event: dict[str, Any], counts: dict[str, int]) -> None:
        """Tokens as the contract counts them: cached within prompt, reasoning within completion.

        The GenAI conventions include cache reads and writes in gen_ai.usage.input_tokens and
        reasoning in output_tokens, and so does the contract. Some sources count them apart
        (Anthropic's API reports input_tokens without the cache, and instrumentations that copy
        it): when the cache counts exceed the input count they cannot be inside it, and are added;
        likewise reasoning beyond the output count.
        """
        prompt, cached, created = (
            counts["prompt_tokens"],
            counts["cached_tokens"],
            counts["cache_creation_tokens"],
        )
        if cached + created > prompt:
            prompt += cached + created
        completion, reasoning = counts["completion_tokens"], counts["reasoning_tokens"]
        if reasoning > completion:
            completion += reasoning
        event["prompt_tokens"] = prompt
        event["completion_tokens"] = completion
        event["cached_tokens"] = cached
        event["reasoning_tokens"] = reasoning

    def _timing(
        self,
        event: dict[str, Any],
        span: SpanData,
        found: Mapping[str, Value],
        operation: str | None,
        latency_ms: float,
    ) -> None:
        ttft = found.get("ttft_ms")
        ttft_ms = None if ttft is None else as_number("ttft_ms", ttft)
        chunks = 0
        first_chunk_ns = 0
        for span_event in span.events:
            name = span_event.name
            if name in self.chunk_events:
                chunks += 1
            if not first_chunk_ns and name in self.first_chunk_events:
                first_chunk_ns = span_event.time_unix_nano
        if ttft_ms is None and first_chunk_ns >= span.start_time_unix_nano > 0:
            ttft_ms = (first_chunk_ns - span.start_time_unix_nano) / 1e6
        flag = found.get("streamed")
        streamed = (
            as_flag(flag)
            if flag is not None
            else (operation in self.streaming_operations or chunks > 0 or ttft_ms is not None)
        )
        # A time to first token beyond the whole call's duration comes from another clock than the
        # span's: the call is kept without it rather than refused.
        if ttft_ms is not None and 0 <= ttft_ms <= latency_ms:
            event["ttft_ms"] = ttft_ms
        event["streamed"] = streamed
        event["stream_chunks"] = chunks

    def _outcome(
        self, event: dict[str, Any], span: SpanData, text: dict[str, str | None], counts: dict[str, int]
    ) -> None:
        error_type = text["error_type"]
        message = span.status_message
        for span_event in span.events:
            if span_event.name == "exception":
                error_type = error_type or as_text(span_event.attributes.get("exception.type"))
                message = message or as_text(span_event.attributes.get("exception.message")) or ""
        finish_reason = text["finish_reason"]
        failed = (
            span.status_code == STATUS_ERROR or text["error_type"] is not None or finish_reason == "error"
        )
        if failed:
            kind = (error_type or "").lower() + " " + message.lower()
            if any(word in kind for word in self.timeout_words):
                event["status"] = "timeout"
            elif any(word in kind for word in self.cancelled_words):
                event["status"] = "cancelled"
            else:
                event["status"] = "error"
            event["error_type"] = (error_type or "error")[:MAX_ID_CHARS]
            if message:
                event["error_message"] = message[:MAX_TEXT_CHARS]
        if finish_reason:
            event["finish_reason"] = finish_reason[:MAX_ID_CHARS]
        status = counts["http_status"]
        if 100 <= status <= 599:
            event["http_status"] = status

    def _content(self, event: dict[str, Any], attributes: Mapping[str, Value]) -> None:
        prompt = self._text(attributes, self.input_sources, self.indexed_input)
        completion = self._text(attributes, self.output_sources, self.indexed_output)
        if prompt is None and completion is None:
            return
        event.update(fingerprint(prompt or "", completion or ""))
        if self.capture_content:
            event["prompt_text"] = prompt
            event["completion_text"] = completion

    @staticmethod
    def _text(attributes: Mapping[str, Value], sources: Iterable[str], indexed_prefix: str) -> str | None:
        for source in sources:
            value = attributes.get(source)
            if value is not None:
                return messages_text(value)
        if indexed_prefix and f"{indexed_prefix}0.content" in attributes:
            parts = []
            index = 0
            while (part := attributes.get(f"{indexed_prefix}{index}.content")) is not None:
                parts.append(messages_text(part))
                index += 1
            return "\n".join(parts)
        return None
