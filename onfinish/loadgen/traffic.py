"""Synthetic onFinish traffic for the load generator and the benchmarks.

A seeded, pure model of what a fleet of services calling LLMs emits: multi-turn sessions over
several providers and models, heavy-tailed latencies, token counts that grow with the conversation,
provider errors, late Feedback, a small share of PII and secrets in free text, and malformed records
the pipeline must refuse. It builds Python objects only; encoding and publishing belong to the load
generator, so one seed gives the same traffic on every machine and in every run.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Final, TypeAlias
from uuid import UUID

from onfinish.errors import ConfigurationError
from onfinish.schemas.models import Feedback, OnFinishEvent, Operation, RoutingStrategy, Status
from onfinish.schemas.wire import MAGIC_BYTE_GUID, framing

TRAFFIC_START: Final = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

MALFORMED_DEFECTS: tuple[str, ...] = (
    "random_bytes",
    "wrong_magic_byte",
    "unknown_schema_id",
    "truncated_avro",
    "negative_latency",
    "finished_before_started",
)


_EFFECT_KEYS = {"latency", "errors", "version", "from", "to"}


@dataclass(frozen=True)
class Effect:
    """A difference planted in the traffic for the insights to find (readouts, drift, anomalies).

    It applies to the events whose fields equal `match` (e.g. variant_id B), from the `start`-th
    event generated to the `stop`-th (None: to the end): their latency and TTFT are multiplied by
    `latency_factor`; `error_share` of those that would succeed fail with a server error instead;
    `model_version`, when given, is rolled out to them (a new version of the model). Draws come from
    a generator of their own, so that with or without effects a seed gives the same other traffic.
    """

    match: tuple[tuple[str, str], ...]
    latency_factor: float = 1.0
    error_share: float = 0.0
    model_version: str | None = None
    start: int = 0
    stop: int | None = None

    def __post_init__(self) -> None:
        if not self.match:
            raise ConfigurationError("an effect needs at least one field=value to select events")
        if not self.latency_factor > 0:
            raise ConfigurationError(f"latency factor must be positive, not {self.latency_factor}")
        if not 0.0 <= self.error_share <= 1.0:
            raise ConfigurationError(f"error share must lie in [0, 1], not {self.error_share}")

    @classmethod
    def parse(cls, text: str) -> Effect:
        """`field=value[,field=value]:latency=1.15:errors=0.1:version=v2:from=5000:to=6000`."""
        selector, *changes = text.split(":")
        try:
            match = tuple(tuple(part.split("=", 1)) for part in selector.split(",") if part)
            options = dict(change.split("=", 1) for change in changes)
        except ValueError:
            raise ConfigurationError(f"{text!r}: use field=value:latency=1.15:errors=0.1:...") from None
        if any(len(pair) != 2 for pair in match):
            raise ConfigurationError(f"{text!r}: select events with field=value")
        unknown = set(options) - _EFFECT_KEYS
        if unknown:
            raise ConfigurationError(f"{text!r}: unknown {sorted(unknown)}; use {sorted(_EFFECT_KEYS)}")
        try:
            return cls(
                match=tuple((str(k), str(v)) for k, v in match),
                latency_factor=float(options.get("latency", 1.0)),
                error_share=float(options.get("errors", 0.0)),
                model_version=options.get("version"),
                start=int(options.get("from", 0)),
                stop=int(options["to"]) if "to" in options else None,
            )
        except ValueError as exc:
            raise ConfigurationError(f"{text!r}: {exc}") from None

    def applies(self, event: OnFinishEvent, index: int) -> bool:
        if index < self.start or (self.stop is not None and index >= self.stop):
            return False
        return all(str(getattr(event, name, None)) == value for name, value in self.match)


@dataclass(frozen=True)
class TrafficProfile:
    """What the traffic looks like: each share is a probability per item or per event, as noted."""

    sessions: int = 200  # sessions open at any moment; a session that ends makes room for a new one
    pii_share: float = 0.02  # of events: PII or a secret in error_message or an attribute value
    malformed_share: float = 0.005  # of items: records the pipeline must refuse
    feedback_share: float = 0.05  # of items: late Feedback on a request already emitted
    error_share: float = 0.04  # of events: status error, timeout or cancelled
    streaming_share: float = 0.6  # of events: streamed responses
    cache_share: float = 0.1  # of events: routing_strategy=cache
    fallback_share: float = 0.05  # of events: routing_strategy=fallback
    start: datetime = TRAFFIC_START  # the simulated clock's start
    effects: tuple[Effect, ...] = ()  # differences planted for the insights to find

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise ConfigurationError(f"sessions must be at least 1, not {self.sessions}")
        shares = {
            "pii_share": self.pii_share,
            "malformed_share": self.malformed_share,
            "feedback_share": self.feedback_share,
            "error_share": self.error_share,
            "streaming_share": self.streaming_share,
            "cache_share": self.cache_share,
            "fallback_share": self.fallback_share,
        }
        for name, share in shares.items():
            if not 0.0 <= share <= 1.0:
                raise ConfigurationError(f"{name} must lie in [0, 1], not {share}")
        if self.malformed_share + self.feedback_share > 1.0:
            raise ConfigurationError("malformed_share + feedback_share exceed 1")
        if self.cache_share + self.fallback_share > 1.0:
            raise ConfigurationError("cache_share + fallback_share exceed 1")
        if self.start.tzinfo is None:
            raise ConfigurationError("start must be timezone-aware")


@dataclass(frozen=True)
class Malformed:
    """A record that must be refused downstream: raw bytes and why it is bad."""

    value: bytes
    key: bytes
    defect: str


Item: TypeAlias = OnFinishEvent | Feedback | Malformed


@dataclass(frozen=True)
class _Model:
    provider: str
    model_id: str
    model_version: str
    popularity: float
    ttft_median_ms: float
    ms_per_token: float
    input_usd_per_million: float
    output_usd_per_million: float
    request_id_prefix: str
    reasoning: bool = False


# Popularity is the share of new sessions that pick the model; speeds and prices are in the range
# the providers published, close enough for the pipeline's pricing and percentiles to be exercised.
# fmt: off
_MODELS: Final = (
    #      provider       model_id            model_version                      popularity
    #      ttft median ms, ms per token, USD per million input/output tokens, request id prefix
    _Model("openai",      "gpt-4o",           "gpt-4o-2024-08-06",               0.22,
           450.0, 12.0, 2.50, 10.00, "chatcmpl-"),
    _Model("openai",      "gpt-4o-mini",      "gpt-4o-mini-2024-07-18",          0.24,
           320.0, 7.0, 0.15, 0.60, "chatcmpl-"),
    _Model("openai",      "o3-mini",          "o3-mini-2025-01-31",              0.06,
           900.0, 8.0, 1.10, 4.40, "chatcmpl-", reasoning=True),
    _Model("anthropic",   "claude-sonnet-4",  "claude-sonnet-4-20250514",        0.16,
           800.0, 14.0, 3.00, 15.00, "msg_"),
    _Model("anthropic",   "claude-haiku-4",   "claude-haiku-4-5-20251001",       0.10,
           450.0, 6.0, 1.00, 5.00, "msg_"),
    _Model("google",      "gemini-2.5-pro",   "gemini-2.5-pro-preview-06-05",    0.08,
           1100.0, 9.0, 1.25, 10.00, "gen-"),
    _Model("google",      "gemini-2.5-flash", "gemini-2.5-flash-preview-05-20",  0.09,
           380.0, 4.0, 0.30, 2.50, "gen-"),
    _Model("aws.bedrock", "llama-3.1-70b",    "meta.llama3-1-70b-instruct-v1:0", 0.05,
           600.0, 11.0, 0.72, 0.72, "br-"),
)
# fmt: on
_MODEL_CUMULATIVE: Final = tuple(accumulate(model.popularity for model in _MODELS))
_MODELS_BY_ID: Final = {model.model_id: model for model in _MODELS}
# A gateway falls back to a comparable model of another provider, so one provider's outage does
# not take the fallback down with it.
_FALLBACK_MODEL_IDS: Final = {
    "gpt-4o": "claude-sonnet-4",
    "gpt-4o-mini": "claude-haiku-4",
    "o3-mini": "gpt-4o",
    "claude-sonnet-4": "gpt-4o",
    "claude-haiku-4": "gpt-4o-mini",
    "gemini-2.5-pro": "gpt-4o",
    "gemini-2.5-flash": "gpt-4o-mini",
    "llama-3.1-70b": "gpt-4o-mini",
}


@dataclass(frozen=True)
class _Service:
    name: str
    popularity: float
    deployment_id: str
    app_version: str
    features: tuple[str, ...]
    prompt_templates: tuple[str, ...]
    system_tokens: int
    message_median_tokens: float
    completion_median_tokens: float
    max_tokens: int
    tool_call_share: float
    completion_operation_share: float
    mean_turns: float


_SERVICES: Final = (
    _Service(
        name="chat-api",
        popularity=0.5,
        deployment_id="chat-api-2026.11.20-3",
        app_version="4.12.0",
        features=("chat", "summarise", "translate"),
        prompt_templates=("chat-general@v7", "summarise@v3", "translate@v2"),
        system_tokens=350,
        message_median_tokens=120.0,
        completion_median_tokens=260.0,
        max_tokens=1024,
        tool_call_share=0.05,
        completion_operation_share=0.0,
        mean_turns=6.0,
    ),
    _Service(
        name="search-api",
        popularity=0.3,
        deployment_id="search-api-2026.11.18-1",
        app_version="2.3.5",
        features=("answer", "query-rewrite", "rerank"),
        prompt_templates=("search-answer@v12", "query-rewrite@v4"),
        # Retrieval puts the documents into the prompt, which is why its prompts are the longest.
        system_tokens=1800,
        message_median_tokens=40.0,
        completion_median_tokens=180.0,
        max_tokens=512,
        tool_call_share=0.02,
        completion_operation_share=0.5,
        mean_turns=2.0,
    ),
    _Service(
        name="support-bot",
        popularity=0.2,
        deployment_id="support-bot-2026.11.21-2",
        app_version="1.8.1",
        features=("triage", "refund", "faq"),
        prompt_templates=("support-triage@v5", "support-refund@v2"),
        system_tokens=900,
        message_median_tokens=90.0,
        completion_median_tokens=200.0,
        max_tokens=1024,
        tool_call_share=0.35,
        completion_operation_share=0.0,
        mean_turns=8.0,
    ),
)
_SERVICE_CUMULATIVE: Final = tuple(accumulate(service.popularity for service in _SERVICES))
_REGIONS: Final = ("us-east-1", "us-east-1", "eu-west-1", "eu-west-1", "ap-southeast-1")


@dataclass(frozen=True)
class _Failure:
    error_type: str
    status: Status
    http_status: int | None
    error_code: str
    message: str
    weight: float
    # None: the call ran like a normal one until it stopped; otherwise it ends after about this long.
    latency_median_ms: float | None
    latency_sigma: float
    # Providers bill (and report) usage only for calls that reached the model.
    usage_reported: bool


_FAILURES: Final = (
    _Failure(
        error_type="rate_limit",
        status=Status.error,
        http_status=429,
        error_code="rate_limit_exceeded",
        message="Rate limit reached for requests per minute. Please try again in 20s.",
        weight=0.35,
        latency_median_ms=40.0,
        latency_sigma=0.6,
        usage_reported=False,
    ),
    _Failure(
        error_type="server_error",
        status=Status.error,
        http_status=500,
        error_code="internal_server_error",
        message="The server had an error while processing your request.",
        weight=0.12,
        latency_median_ms=900.0,
        latency_sigma=1.0,
        usage_reported=False,
    ),
    _Failure(
        error_type="server_error",
        status=Status.error,
        http_status=503,
        error_code="overloaded_error",
        message="The service is temporarily overloaded. Please retry later.",
        weight=0.13,
        latency_median_ms=250.0,
        latency_sigma=0.8,
        usage_reported=False,
    ),
    _Failure(
        error_type="timeout",
        status=Status.timeout,
        http_status=408,
        error_code="request_timeout",
        message="Request timed out.",
        weight=0.15,
        latency_median_ms=30_000.0,
        latency_sigma=0.02,
        usage_reported=False,
    ),
    _Failure(
        error_type="content_filter",
        status=Status.error,
        http_status=400,
        error_code="content_policy_violation",
        message="The response was filtered due to the prompt triggering the content management policy.",
        weight=0.1,
        latency_median_ms=600.0,
        latency_sigma=0.4,
        usage_reported=True,
    ),
    _Failure(
        error_type="cancelled",
        status=Status.cancelled,
        http_status=None,
        error_code="client_disconnected",
        message="The client closed the connection before the response completed.",
        weight=0.15,
        latency_median_ms=None,
        latency_sigma=0.0,
        usage_reported=True,
    ),
)
_FAILURE_CUMULATIVE: Final = tuple(accumulate(failure.weight for failure in _FAILURES))
# An answer served from the gateway's cache cannot hit the provider, so the client leaving is the
# only way it fails.
_CACHE_FAILURE: Final = _FAILURES[-1]
_SAFETY_CATEGORIES: Final = ("hate", "violence", "self_harm", "sexual")

# Provider prompt caches only keep prefixes of at least this many tokens, in blocks of 128.
_PROMPT_CACHE_MIN_TOKENS: Final = 1024
_PROMPT_CACHE_BLOCK: Final = 128
_PROMPT_CACHE_HIT_SHARE: Final = 0.6
_SESSION_MAX_HISTORY_TOKENS: Final = 60_000
_PREFILL_MS_PER_TOKEN: Final = 0.02
# A rare stall (provider queueing, a cold replica) is what gives real latency its long tail.
_STALL_SHARE: Final = 0.01
_STALL_MAX_FACTOR: Final = 40.0
_REPORTED_COST_SHARE: Final = 0.4
_MEAN_ITEM_GAP_US: Final = 5_000.0
_RECENT_REQUESTS: Final = 4096
_USERS_PER_SESSION_SLOT: Final = 5

_ALPHANUMERIC: Final = string.ascii_letters + string.digits
_TOKEN_CHARACTERS: Final = _ALPHANUMERIC + "-_"


def _email(rng: random.Random) -> str:
    first = rng.choice(("anna", "ben", "chen", "dana", "emil", "fatima", "george", "hana", "ivan"))
    last = rng.choice(("meyer", "smith", "kowalski", "rossi", "nguyen", "garcia", "schulz"))
    domain = rng.choice(("example.com", "mail.example.org", "corp.example.net"))
    return f"{first}.{last}{rng.randrange(100)}@{domain}"


def _phone_number(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"+1-{rng.randrange(201, 990)}-555-{rng.randrange(10_000):04d}"
    return f"+49 151 {rng.randrange(10_000_000, 100_000_000)}"


def _luhn_check_digit(payload: str) -> str:
    total = 0
    # From the right, every other digit is doubled once the check digit is appended after them.
    for position, character in enumerate(reversed(payload)):
        digit = int(character)
        if position % 2 == 0:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str(-total % 10)


_CARD_PREFIXES_AND_LENGTHS: Final = (("4", 16), ("51", 16), ("55", 16), ("37", 15))


def _card_number(rng: random.Random) -> str:
    # Card-number detectors check Luhn, so an invalid number would not test them.
    prefix, length = rng.choice(_CARD_PREFIXES_AND_LENGTHS)
    payload = prefix + "".join(rng.choices(string.digits, k=length - len(prefix) - 1))
    return payload + _luhn_check_digit(payload)


_IBAN_BBAN_DIGITS: Final = {"DE": 18, "AT": 16, "BE": 12}


def _iban(rng: random.Random) -> str:
    country = rng.choice(tuple(_IBAN_BBAN_DIGITS))
    bban = "".join(rng.choices(string.digits, k=_IBAN_BBAN_DIGITS[country]))
    # ISO 13616: the check digits make the rearranged number, letters as 10..35, equal 1 mod 97.
    rearranged = bban + "".join(str(ord(letter) - ord("A") + 10) for letter in country) + "00"
    return f"{country}{98 - int(rearranged) % 97:02d}{bban}"


def _ip_address(rng: random.Random) -> str:
    first = rng.choice((23, 45, 62, 81, 91, 104, 151, 185, 203))
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _api_key(rng: random.Random) -> str:
    return "sk-" + "".join(rng.choices(_ALPHANUMERIC, k=40))


def _bearer_token(rng: random.Random) -> str:
    return "Bearer " + "".join(rng.choices(_TOKEN_CHARACTERS, k=rng.randrange(32, 65)))


@dataclass(frozen=True)
class _PiiKind:
    make: Callable[[random.Random], str]
    attribute: str
    attribute_text: str
    error_text: str


# How each kind leaks in practice: users paste it into a form the app logs, or an error echoes it.
_PII_KINDS: Final = (
    _PiiKind(
        _email,
        "customer_note",
        "please send the invoice to {pii}",
        "Invalid 'user' parameter: {pii} is not an opaque identifier.",
    ),
    _PiiKind(
        _phone_number,
        "customer_note",
        "call me back on {pii} after 5pm",
        "Tool lookup_customer failed: no customer with phone {pii}.",
    ),
    _PiiKind(
        _card_number,
        "customer_note",
        "my card {pii} was charged twice",
        "Tool charge_card failed: card {pii} was declined.",
    ),
    _PiiKind(
        _iban,
        "customer_note",
        "please refund to {pii}",
        "Tool create_refund failed: IBAN {pii} was rejected.",
    ),
    _PiiKind(_ip_address, "client_ip", "{pii}", "Upstream connection to {pii}:443 was reset by peer."),
    _PiiKind(
        _api_key,
        "debug.env",
        "OPENAI_API_KEY={pii}",
        "Incorrect API key provided: {pii}. You can find your API key in your account settings.",
    ),
    _PiiKind(
        _bearer_token,
        "debug.headers",
        "Authorization: {pii}",
        "401 Unauthorized for a request sent with Authorization: {pii}",
    ),
)


@dataclass(slots=True)
class _Session:
    session_id: str
    user_id: str
    tenant_id: str
    service: _Service
    model: _Model
    region: str
    feature_id: str
    variant_id: str
    prompt_template_id: str
    history_tokens: int = 0
    turns: int = 0


@dataclass(frozen=True, slots=True)
class _Usage:
    prompt_tokens: int
    cached_tokens: int
    visible_tokens: int
    reasoning_tokens: int
    finish_reason: str | None
    tool_call_count: int
    new_history_tokens: int


@dataclass(frozen=True, slots=True)
class _Timing:
    latency_ms: float
    ttft_ms: float | None
    queue_ms: float
    stream_chunks: int


@dataclass(frozen=True, slots=True)
class _Emitted:
    request_id: str
    session_id: str | None
    finished_at: datetime


class TrafficGenerator:
    """Deterministic traffic: the same profile and seed give the same items in the same order.

    Items are drawn as the iterator is consumed, and items() continues where the previous call
    stopped, so a load generator can draw in batches (one iterator at a time).
    """

    def __init__(self, profile: TrafficProfile, seed: int) -> None:
        self._profile = profile
        # Reproducible load, not secrets: a seeded PRNG is the point.
        self._rng = random.Random(seed)  # noqa: S311
        self._effect_rng = random.Random(seed ^ 0x5EED)  # noqa: S311
        self._events_made = 0
        self._start = profile.start.astimezone(UTC)
        self._elapsed_us = 0
        self._sessions_opened = 0
        self._users = profile.sessions * _USERS_PER_SESSION_SLOT
        self._sessions = [self._open_session() for _ in range(profile.sessions)]
        # A bounded window keeps memory flat over long runs; feedback on older requests is rare anyway.
        self._recent: list[_Emitted] = []
        self._recent_cursor = 0
        self._planted: list[str] = []

    @property
    def planted_pii(self) -> list[str]:
        """Every PII or secret string planted so far, for audits of what leaves the processors."""
        return list(self._planted)

    def items(self, count: int) -> Iterator[Item]:
        """The next count items of the traffic."""
        if count < 0:
            raise ValueError(f"count must not be negative, not {count}")
        return (self._next_item() for _ in range(count))

    def _next_item(self) -> Item:
        rng = self._rng
        self._elapsed_us += max(1, round(rng.expovariate(1.0 / _MEAN_ITEM_GAP_US)))
        draw = rng.random()
        if draw < self._profile.malformed_share:
            return self._malformed()
        if draw < self._profile.malformed_share + self._profile.feedback_share and self._recent:
            return self._feedback()
        event = self._event(carries_pii=rng.random() < self._profile.pii_share)
        if self._profile.effects:
            event = self._plant(event)
        self._events_made += 1
        self._remember(event)
        return event

    def _plant(self, event: OnFinishEvent) -> OnFinishEvent:
        changes: dict[str, object] = {}
        latency, ttft = event.latency_ms, event.ttft_ms
        for effect in self._profile.effects:
            if not effect.applies(event, self._events_made):
                continue
            if effect.latency_factor != 1.0:
                latency = round(latency * effect.latency_factor, 3)
                ttft = None if ttft is None else min(round(ttft * effect.latency_factor, 3), latency)
                changes.update(
                    latency_ms=latency,
                    ttft_ms=ttft,
                    started_at=event.finished_at - timedelta(milliseconds=latency),
                )
            if effect.model_version is not None:
                changes["model_version"] = effect.model_version
            if event.status is Status.success and self._effect_rng.random() < effect.error_share:
                changes.update(
                    status=Status.error,
                    error_type="server_error",
                    error_code="internal_error",
                    http_status=500,
                    finish_reason=None,
                )
        return event.model_copy(update=changes) if changes else event

    def _now(self) -> datetime:
        return self._start + timedelta(microseconds=self._elapsed_us)

    def _open_session(self) -> _Session:
        rng = self._rng
        self._sessions_opened += 1
        service = rng.choices(_SERVICES, cum_weights=_SERVICE_CUMULATIVE)[0]
        return _Session(
            session_id=f"sess-{self._sessions_opened}",
            user_id=f"user-{rng.randrange(self._users)}",
            tenant_id=f"tenant-{rng.randrange(40)}",
            service=service,
            model=rng.choices(_MODELS, cum_weights=_MODEL_CUMULATIVE)[0],
            region=rng.choice(_REGIONS),
            feature_id=rng.choice(service.features),
            variant_id=rng.choice(("A", "B")),
            prompt_template_id=rng.choice(service.prompt_templates),
        )

    def _remember(self, event: OnFinishEvent) -> None:
        emitted = _Emitted(event.request_id, event.session_id, event.finished_at)
        if len(self._recent) < _RECENT_REQUESTS:
            self._recent.append(emitted)
        else:
            self._recent[self._recent_cursor] = emitted
            self._recent_cursor = (self._recent_cursor + 1) % _RECENT_REQUESTS

    def _uuid(self) -> UUID:
        # uuid4() would read the OS's entropy and break reproducibility.
        return UUID(int=self._rng.getrandbits(128), version=4)

    def _route(self) -> RoutingStrategy:
        draw = self._rng.random()
        if draw < self._profile.cache_share:
            return RoutingStrategy.cache
        if draw < self._profile.cache_share + self._profile.fallback_share:
            return RoutingStrategy.fallback
        return RoutingStrategy.primary

    def _failure(self, route: RoutingStrategy) -> _Failure | None:
        rng = self._rng
        if rng.random() >= self._profile.error_share:
            return None
        if route is RoutingStrategy.cache:
            return _CACHE_FAILURE
        return rng.choices(_FAILURES, cum_weights=_FAILURE_CUMULATIVE)[0]

    def _event(self, *, carries_pii: bool) -> OnFinishEvent:
        rng = self._rng
        slot = rng.randrange(len(self._sessions))
        session = self._sessions[slot]
        service = session.service
        route = self._route()
        model = session.model
        if route is RoutingStrategy.fallback:
            model = _MODELS_BY_ID[_FALLBACK_MODEL_IDS[model.model_id]]
        failure = self._failure(route)
        streamed = rng.random() < self._profile.streaming_share
        usage = self._usage(session, model, route, failure)
        timing = self._timing(model, route, failure, streamed, usage)

        attributes = {"app.version": service.app_version, "tenant_id": session.tenant_id}
        if route is RoutingStrategy.fallback:
            attributes["fallback_from"] = session.model.model_id
        error_message = failure.message if failure is not None else None
        if carries_pii:
            kind = rng.choice(_PII_KINDS)
            pii = kind.make(rng)
            self._planted.append(pii)
            if error_message is not None:
                error_message = f"{error_message} {kind.error_text.format(pii=pii)}"
            else:
                attributes[kind.attribute] = kind.attribute_text.format(pii=pii)

        if failure is not None and failure.error_type == "content_filter":
            safety_flags = [rng.choice(_SAFETY_CATEGORIES)]
            safety_score: float | None = round(rng.uniform(0.8, 1.0), 4)
        else:
            safety_flags = []
            safety_score = None

        if route is RoutingStrategy.fallback:
            retry_count = rng.choice((1, 1, 1, 2, 3))
        elif failure is not None and failure.error_type in ("rate_limit", "server_error"):
            retry_count = rng.choice((0, 1, 2, 3))
        else:
            retry_count = 1 if rng.random() < 0.03 else 0

        finished_at = self._now()
        chars_per_token = rng.uniform(3.6, 4.4)
        event = OnFinishEvent(
            event_id=self._uuid(),
            request_id=f"{model.request_id_prefix}{rng.getrandbits(96):024x}",
            trace_id=f"{rng.getrandbits(128):032x}",
            span_id=f"{rng.getrandbits(64):016x}",
            session_id=session.session_id,
            user_id=session.user_id,
            service=service.name,
            region=session.region,
            deployment_id=service.deployment_id,
            feature_id=session.feature_id,
            variant_id=session.variant_id,
            prompt_template_id=session.prompt_template_id,
            routing_strategy=route,
            operation=(
                Operation.completion if rng.random() < service.completion_operation_share else Operation.chat
            ),
            provider=model.provider,
            model_id=model.model_id,
            model_version=model.model_version,
            started_at=finished_at - timedelta(milliseconds=timing.latency_ms),
            finished_at=finished_at,
            latency_ms=timing.latency_ms,
            ttft_ms=timing.ttft_ms,
            queue_ms=timing.queue_ms,
            streamed=streamed,
            stream_chunks=timing.stream_chunks,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.visible_tokens + usage.reasoning_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            reported_cost_usd=self._reported_cost(model, route, usage),
            status=failure.status if failure is not None else Status.success,
            finish_reason=usage.finish_reason,
            error_type=failure.error_type if failure is not None else None,
            error_code=failure.error_code if failure is not None else None,
            error_message=error_message,
            http_status=failure.http_status if failure is not None else 200,
            retry_count=retry_count,
            tool_call_count=usage.tool_call_count,
            safety_flags=safety_flags,
            safety_score=safety_score,
            prompt_hash=self._prompt_hash(session, route),
            prompt_chars=int(usage.prompt_tokens * chars_per_token),
            completion_chars=int(usage.visible_tokens * chars_per_token),
            attributes=attributes,
        )
        self._advance(slot, session, usage)
        return event

    def _advance(self, slot: int, session: _Session, usage: _Usage) -> None:
        session.turns += 1
        session.history_tokens += usage.new_history_tokens
        ends = self._rng.random() < 1.0 / session.service.mean_turns
        if ends or session.history_tokens > _SESSION_MAX_HISTORY_TOKENS:
            self._sessions[slot] = self._open_session()

    def _usage(
        self, session: _Session, model: _Model, route: RoutingStrategy, failure: _Failure | None
    ) -> _Usage:
        rng = self._rng
        service = session.service
        # Each turn re-sends the system prompt (with its retrieved context) and the conversation so far.
        prefix = int(service.system_tokens * rng.lognormvariate(0.0, 0.3)) + session.history_tokens
        message = max(1, int(rng.lognormvariate(math.log(service.message_median_tokens), 0.9)))
        prompt = prefix + message
        if failure is not None and not failure.usage_reported:
            return _Usage(0, 0, 0, 0, None, 0, 0)

        if route is RoutingStrategy.cache:
            cached = prompt
        elif prefix >= _PROMPT_CACHE_MIN_TOKENS and rng.random() < _PROMPT_CACHE_HIT_SHARE:
            cached = prefix // _PROMPT_CACHE_BLOCK * _PROMPT_CACHE_BLOCK
        else:
            cached = 0

        finish_reason: str | None
        tool_calls = 0
        if rng.random() < service.tool_call_share:
            visible = max(1, int(rng.lognormvariate(math.log(60.0), 0.5)))
            finish_reason = "tool_calls"
            tool_calls = rng.choice((1, 1, 1, 2, 2, 3))
        else:
            visible = max(1, int(rng.lognormvariate(math.log(service.completion_median_tokens), 0.8)))
            finish_reason = "stop"
            if visible >= service.max_tokens:
                visible = service.max_tokens
                finish_reason = "length"
        # A cached answer replays the text only; the reasoning happened when it was first computed.
        reasoning = 0
        if model.reasoning and route is not RoutingStrategy.cache:
            reasoning = max(1, int(rng.lognormvariate(math.log(600.0), 0.9)))

        if failure is not None:
            # A filtered answer is never shown; a cancelled one stopped part way through.
            streamed_before_failure = 0 if failure.error_type == "content_filter" else visible
            visible = int(streamed_before_failure * rng.uniform(0.0, 0.9))
            return _Usage(prompt, cached, visible, reasoning, None, 0, 0)
        return _Usage(prompt, cached, visible, reasoning, finish_reason, tool_calls, message + visible)

    def _timing(
        self, model: _Model, route: RoutingStrategy, failure: _Failure | None, streamed: bool, usage: _Usage
    ) -> _Timing:
        rng = self._rng
        queue = rng.expovariate(1.0 / 4.0)
        if route is RoutingStrategy.cache:
            latency = rng.lognormvariate(math.log(18.0), 0.5)
            first = latency * rng.uniform(0.1, 0.5)
        else:
            first = (
                rng.lognormvariate(math.log(model.ttft_median_ms), 0.45)
                + usage.prompt_tokens * _PREFILL_MS_PER_TOKEN
                + usage.reasoning_tokens * model.ms_per_token
            )
            latency = first + usage.visible_tokens * model.ms_per_token * rng.lognormvariate(0.0, 0.2)
            if rng.random() < _STALL_SHARE:
                stall = min(rng.paretovariate(1.2), _STALL_MAX_FACTOR)
                first *= stall
                latency *= stall
        if failure is not None and failure.latency_median_ms is not None:
            latency = rng.lognormvariate(math.log(failure.latency_median_ms), failure.latency_sigma)

        # Rounded to the microsecond so that finished_at - started_at is exactly latency_ms.
        latency_ms = round(latency, 3)
        has_tokens = usage.visible_tokens > 0
        ttft_ms = round(first, 3) if streamed and has_tokens else None
        chunks = max(1, round(usage.visible_tokens / rng.uniform(3.0, 8.0))) if streamed and has_tokens else 0
        return _Timing(latency_ms, ttft_ms, round(queue, 3), chunks)

    def _reported_cost(self, model: _Model, route: RoutingStrategy, usage: _Usage) -> float | None:
        if route is RoutingStrategy.cache:
            return 0.0
        # Only some gateways report a cost; the processors price every event from the catalog anyway.
        if usage.prompt_tokens == 0 or self._rng.random() >= _REPORTED_COST_SHARE:
            return None
        fresh = usage.prompt_tokens - usage.cached_tokens
        # Cached input is billed at half price by most providers.
        input_cost = (fresh + usage.cached_tokens / 2) * model.input_usd_per_million
        output_cost = (usage.visible_tokens + usage.reasoning_tokens) * model.output_usd_per_million
        return round((input_cost + output_cost) / 1_000_000, 8)

    def _prompt_hash(self, session: _Session, route: RoutingStrategy) -> str:
        if route is RoutingStrategy.cache:
            # Cache hits are the popular prompts: a few hundred of them, Zipf-like, per template.
            prompt = f"{session.prompt_template_id}|popular-{min(int(self._rng.paretovariate(1.1)), 500)}"
        else:
            prompt = f"{session.prompt_template_id}|{session.session_id}|{session.turns}"
        return hashlib.sha256(prompt.encode()).hexdigest()

    def _feedback(self) -> Feedback:
        rng = self._rng
        target = rng.choice(self._recent)
        kind = rng.random()
        rating: int | None = None
        if kind >= 0.5:
            rating = rng.choices((1, -1, 0), weights=(0.6, 0.3, 0.1))[0]
        return Feedback(
            feedback_id=self._uuid(),
            request_id=target.request_id,
            session_id=target.session_id,
            regenerated=kind < 0.35,
            edited=0.35 <= kind < 0.5,
            rating=rating,
            # Items are emitted in clock order, so the user reacts now, after the answer finished.
            at=max(self._now(), target.finished_at),
        )

    def _malformed(self) -> Malformed:
        rng = self._rng
        defect = rng.choice(MALFORMED_DEFECTS)
        if defect in ("negative_latency", "finished_before_started"):
            return self._contract_violation(defect)
        key = rng.choice(self._sessions).session_id.encode()
        junk = rng.randbytes(rng.randrange(16, 256))
        if defect == "random_bytes":
            # A zero first byte would read as the wire format's magic byte: a different defect.
            value = bytes([rng.randrange(1, 256)]) + junk
        elif defect == "wrong_magic_byte":
            value = bytes([MAGIC_BYTE_GUID, 0, 0, 0, 1]) + junk  # the newer framing, refused
        elif defect == "unknown_schema_id":
            value = framing(2**31 - 7) + junk
        else:
            # The opening of a real encoding: event_id's length (36, zig-zag encoded) and part of it.
            event_id = str(self._uuid()).encode()[: rng.randrange(1, 9)]
            value = framing(1) + b"\x48" + event_id
        return Malformed(value=value, key=key, defect=defect)

    def _contract_violation(self, defect: str) -> Malformed:
        """An event a buggy producer serialised without validating it: well-formed JSON, but refused."""
        event = self._event(carries_pii=False)
        # model_copy does not validate, which is what lets the broken values through.
        if defect == "negative_latency":
            broken = event.model_copy(update={"latency_ms": -max(event.latency_ms, 1.0), "ttft_ms": None})
        else:
            backwards = event.started_at - timedelta(milliseconds=max(event.latency_ms, 1.0))
            broken = event.model_copy(update={"started_at": event.finished_at, "finished_at": backwards})
        value = json.dumps(broken.model_dump(mode="json")).encode()
        return Malformed(value=value, key=event.key.encode(), defect=defect)
