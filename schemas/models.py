"""Pydantic models that mirror the Avro contract (schemas/avro/*.avsc, the source of truth).

They are what Python code builds and checks: the SDK's background worker validates events with
them, the processors decode into them. tests/schemas/test_contract.py proves each model agrees with
its Avro schema field by field (names, types, optionality, defaults). Limits that Avro cannot say
(no negative latency, a finish after the start, bounded strings and token counts) live here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Self
from uuid import UUID, uuid4

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
SDK_NAME = "onfinish-python"

# Bounds that keep one bad producer from flooding the pipeline; the processors enforce the same.
MAX_TOKENS = 10_000_000
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 8_192
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_CHARS = 1_024
MAX_CONTENT_CHARS = 1_000_000
AVRO_INT_MAX = 2**31 - 1


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return value.astimezone(UTC)


Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Timestamp = Annotated[datetime, AfterValidator(_utc)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]
Rating = Annotated[int, Field(ge=-1, le=1)]


class RoutingStrategy(StrEnum):
    primary = "primary"
    fallback = "fallback"
    cache = "cache"


class Operation(StrEnum):
    chat = "chat"
    completion = "completion"
    embeddings = "embeddings"
    tool = "tool"


class Status(StrEnum):
    success = "success"
    error = "error"
    cancelled = "cancelled"
    timeout = "timeout"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False, use_enum_values=False)

    @classmethod
    def construct_complete(cls, fields: dict[str, Any]) -> Self:
        """A record from values already known valid, one for every field: no validation, no copy.

        What ``model_construct`` does for a complete set of values, without its per-field walk for
        defaults and aliases (a sixth of an event's processing time). ``fields`` becomes the
        record's ``__dict__``; a test checks the result equals ``model_construct``'s.
        """
        if fields.keys() != cls.model_fields.keys():
            raise ValueError(f"{cls.__name__} needs exactly its fields")
        record = cls.__new__(cls)
        object.__setattr__(record, "__dict__", fields)
        object.__setattr__(record, "__pydantic_fields_set__", set(fields))
        object.__setattr__(record, "__pydantic_extra__", None)
        object.__setattr__(record, "__pydantic_private__", None)
        return record


def _sdk_version() -> str:
    from onfinish import __version__

    return __version__


class _EventFields(_Record):
    """The fields an onFinish event and its enriched form share, in the Avro files' order."""

    # Required in Avro; generated here so a caller need not invent one.
    event_id: UUID = Field(default_factory=uuid4, json_schema_extra={"generated": True})
    request_id: Identifier
    trace_id: Identifier | None = None
    span_id: Identifier | None = None
    session_id: Identifier | None = None
    user_id: Identifier | None = None

    service: Identifier
    environment: Identifier = "production"
    region: Identifier | None = None
    deployment_id: Identifier | None = None
    feature_id: Identifier | None = None
    variant_id: Identifier | None = None
    prompt_template_id: Identifier | None = None
    routing_strategy: RoutingStrategy = RoutingStrategy.primary
    operation: Operation = Operation.chat

    provider: Identifier
    model_id: Identifier
    model_version: Identifier | None = None

    started_at: Timestamp
    finished_at: Timestamp
    latency_ms: float = Field(ge=0, allow_inf_nan=False)
    ttft_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    queue_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    streamed: bool = False
    stream_chunks: Count = 0

    prompt_tokens: Tokens = 0
    completion_tokens: Tokens = 0
    cached_tokens: Tokens = 0
    reasoning_tokens: Tokens = 0
    reported_cost_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    status: Status = Status.success
    finish_reason: Identifier | None = None
    error_type: Identifier | None = None
    error_code: Identifier | None = None
    error_message: Text | None = None
    http_status: int | None = Field(default=None, ge=100, le=599)
    retry_count: Count = 0
    tool_call_count: Count = 0

    safety_flags: list[Identifier] = Field(default_factory=list, max_length=64)
    safety_score: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)

    regenerated: bool = False
    edited: bool = False
    rating: Rating | None = None

    prompt_hash: Identifier | None = None
    prompt_chars: Annotated[int, Field(ge=0, le=AVRO_INT_MAX)] = 0
    completion_chars: Annotated[int, Field(ge=0, le=AVRO_INT_MAX)] = 0
    attributes: dict[Identifier, Annotated[str, Field(max_length=MAX_ATTRIBUTE_CHARS)]] = Field(
        default_factory=dict, max_length=MAX_ATTRIBUTES
    )

    schema_version: int = SCHEMA_VERSION
    sdk_name: str = SDK_NAME
    sdk_version: str = Field(default_factory=_sdk_version, json_schema_extra={"generated": True})

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.finished_at < self.started_at:
            raise ValueError("finished_at is before started_at")
        if self.cached_tokens > self.prompt_tokens:
            raise ValueError("cached_tokens exceed prompt_tokens")
        if self.ttft_ms is not None and self.ttft_ms > self.latency_ms:
            raise ValueError("ttft_ms exceeds latency_ms")
        return self

    @property
    def key(self) -> str:
        """The Kafka key: the session, or the request when there is no session."""
        return self.session_id or self.request_id


class OnFinishEvent(_EventFields):
    """One LLM call at its onFinish moment (Avro io.onfinish.OnFinishEvent, version 1)."""

    # Raw content travels only when the producer's settings allow it; the processors drop it.
    prompt_text: Annotated[str, Field(max_length=MAX_CONTENT_CHARS)] | None = None
    completion_text: Annotated[str, Field(max_length=MAX_CONTENT_CHARS)] | None = None


class EnrichedEvent(_EventFields):
    """An event as it leaves the processors (Avro io.onfinish.EnrichedEvent, version 1): redacted
    (free text masked, attributes allow-listed, user_id pseudonymised, no raw content), priced, and
    scored."""

    cost_input_usd: float = Field(ge=0, allow_inf_nan=False)
    cost_cached_input_usd: float = Field(ge=0, allow_inf_nan=False)
    cost_output_usd: float = Field(ge=0, allow_inf_nan=False)
    cost_reasoning_usd: float = Field(ge=0, allow_inf_nan=False)
    cost_usd: float = Field(ge=0, allow_inf_nan=False)
    cost_source: Identifier
    model_family: Identifier | None = None
    context_window: int | None = Field(default=None, ge=0, le=AVRO_INT_MAX)
    quality_score: float = Field(ge=0, le=1, allow_inf_nan=False)
    cache_hit: bool = False
    processed_at: Timestamp
    redaction_version: int = Field(ge=0, le=AVRO_INT_MAX)
    raw_partition: int = Field(ge=0, le=AVRO_INT_MAX)
    raw_offset: int = Field(ge=0, json_schema_extra={"avro": "long"})  # Kafka offsets outgrow an Avro int


class Feedback(_Record):
    """A user's reaction that arrives after the completion (Avro io.onfinish.Feedback, version 1)."""

    feedback_id: UUID = Field(default_factory=uuid4, json_schema_extra={"generated": True})
    request_id: Identifier
    session_id: Identifier | None = None
    regenerated: bool = False
    edited: bool = False
    rating: Rating | None = None
    at: Timestamp
    schema_version: int = SCHEMA_VERSION
    sdk_name: str = SDK_NAME
    sdk_version: str = Field(default_factory=_sdk_version, json_schema_extra={"generated": True})

    @property
    def key(self) -> str:
        return self.session_id or self.request_id


Long = Annotated[int, Field(ge=0, json_schema_extra={"avro": "long"})]
Money = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Millis = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class WindowSnapshot(_Record):
    """One 1-minute window for one dimension set and one raw partition (Avro io.onfinish.WindowSnapshot)."""

    window_id: Identifier
    version: Long
    raw_partition: int = Field(ge=0, le=AVRO_INT_MAX)
    window_start: Timestamp
    window_end: Timestamp
    provider: Identifier
    model_id: Identifier
    feature_id: str = ""
    variant_id: str = ""
    environment: Identifier
    status: Identifier
    events: Long
    errors: Long
    prompt_tokens: Long
    completion_tokens: Long
    cached_tokens: Long
    reasoning_tokens: Long
    cost_usd: Money
    cache_hits: Long
    fallbacks: Long
    tool_use: Long
    streamed: Long
    quality_sum: Money
    latency_count: Long
    latency_sum_ms: Millis
    latency_min_ms: Millis | None = None
    latency_max_ms: Millis | None = None
    latency_buckets: list[int] = Field(default_factory=list)
    latency_counts: list[Long] = Field(default_factory=list)
    ttft_count: Long
    ttft_sum_ms: Millis
    ttft_min_ms: Millis | None = None
    ttft_max_ms: Millis | None = None
    ttft_buckets: list[int] = Field(default_factory=list)
    ttft_counts: list[Long] = Field(default_factory=list)
    emitted_at: Timestamp


class SessionSnapshot(_Record):
    """The running state of one session (Avro io.onfinish.SessionSnapshot), on the compacted topic."""

    session_id: Identifier
    version: Long
    raw_partition: int = Field(ge=0, le=AVRO_INT_MAX)
    user_id: Identifier | None = None
    service: Identifier
    environment: Identifier
    first_at: Timestamp
    last_at: Timestamp
    duration_ms: Millis
    turns: int = Field(ge=0, le=AVRO_INT_MAX)
    prompt_tokens: Long
    completion_tokens: Long
    cached_tokens: Long
    reasoning_tokens: Long
    cost_usd: Money
    errors: int = Field(ge=0, le=AVRO_INT_MAX)
    regenerations: int = Field(ge=0, le=AVRO_INT_MAX)
    edits: int = Field(ge=0, le=AVRO_INT_MAX)
    models: list[Identifier] = Field(default_factory=list)
    quality_mean: float = Field(ge=0, le=1, allow_inf_nan=False)
    closed: bool = False
    emitted_at: Timestamp


ALERT_STATES = ("fact", "firing", "resolved")


def _alert_state(state: str) -> str:
    if state not in ALERT_STATES:
        raise ValueError(f"alert state must be one of {ALERT_STATES}, not {state!r}")
    return state


class Alert(_Record):
    """A breach recorded as a fact, or an episode's firing or resolved record (Avro io.onfinish.Alert).

    Facts (per call, per session) are never notified; an episode fires once, may be sent again
    with a higher peak under the same alert_id, and resolves under the same episode_id."""

    alert_id: Identifier
    rule: Identifier
    rules_version: int = Field(ge=0, le=AVRO_INT_MAX)
    severity: Identifier
    subject_kind: Identifier
    subject: Identifier
    observed: float = Field(allow_inf_nan=False)
    threshold: float = Field(allow_inf_nan=False)
    baseline: float | None = Field(default=None, allow_inf_nan=False)
    provider: Identifier | None = None
    model_id: Identifier | None = None
    at: Timestamp
    message: Text
    raw_partition: int = Field(ge=0, le=AVRO_INT_MAX)
    state: Annotated[str, AfterValidator(_alert_state)] = "fact"
    episode_id: Identifier | None = None
    started_at: Timestamp | None = None
    ended_at: Timestamp | None = None
    peak: float | None = Field(default=None, allow_inf_nan=False)
    feature_id: Identifier | None = None
    environment: Identifier | None = None

    @model_validator(mode="after")
    def _episodes_name_theirs(self) -> Self:
        if (self.state == "fact") != (self.episode_id is None):
            raise ValueError("firing and resolved records name their episode_id; facts have none")
        return self


class QualityUpdate(_Record):
    """A call's quality after later Feedback (Avro io.onfinish.QualityUpdate): replaces the score its
    event was stored with; the latest version (raw offset of the feedback) wins."""

    request_id: Identifier
    session_id: Identifier | None = None
    quality_score: float = Field(ge=0, le=1, allow_inf_nan=False)
    regenerated: bool
    edited: bool
    rating: Rating | None = None
    version: Long
    raw_partition: int = Field(ge=0, le=AVRO_INT_MAX)
    updated_at: Timestamp


class CostCorrection(_Record):
    """A stored call re-priced with a price-catalog version (Avro io.onfinish.CostCorrection): replaces
    the cost its event was stored with; the latest version (when it was re-priced) wins."""

    event_id: UUID
    request_id: Identifier
    session_id: Identifier | None = None
    finished_at: Timestamp
    provider: Identifier
    model_id: Identifier
    cost_input_usd: Money
    cost_cached_input_usd: Money
    cost_output_usd: Money
    cost_reasoning_usd: Money
    cost_usd: Money
    cost_source: Identifier
    ingested_cost_usd: Money
    version: Long
    repriced_at: Timestamp


class WindowCostCorrection(_Record):
    """What a re-pricing changes in one minute and dimension set (Avro io.onfinish.WindowCostCorrection).

    The delta is signed: new prices can be lower."""

    window_start: Timestamp
    window_end: Timestamp
    provider: Identifier
    model_id: Identifier
    feature_id: str = ""
    variant_id: str = ""
    environment: Identifier
    status: Identifier
    cost_delta_usd: float = Field(allow_inf_nan=False)
    repriced_events: Long
    cost_source: Identifier
    version: Long
    repriced_at: Timestamp
