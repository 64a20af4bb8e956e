"""Feedback over OTLP: a user's later reaction to a response, sent as a span event or a log record.

An instrumented application that has no onfinish SDK reports a rating, a regeneration or an edit
as an event named `onfinish.feedback` (or the GenAI conventions' `gen_ai.evaluation.result` under a
user-feedback evaluation name, see data/mapping.v1.toml) with these attributes:

| attribute | Feedback field |
| --- | --- |
| gen_ai.response.id (required) | request_id: the response the reaction is about |
| gen_ai.conversation.id, session.id (of the event, else of its span) | session_id |
| onfinish.feedback.rating: -1, 0 or 1 | rating |
| gen_ai.evaluation.score.value: its sign | rating (gen_ai.evaluation.result) |
| gen_ai.evaluation.score.label: a positive or negative label | rating (gen_ai.evaluation.result) |
| onfinish.feedback.regenerated: true | regenerated |
| onfinish.feedback.edited: true | edited |
| the event's time | at |

Its feedback id is a UUIDv5 of the trace and span ids, the event's time and the response id, so
an event delivered twice is one Feedback downstream. An event without a response id is not
feedback about anything, and is rejected.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from onfinish import __version__
from onfinish.collect.mapping import (
    FEEDBACK_NAMESPACE,
    SDK_NAME,
    FeedbackRules,
    Rejected,
    as_flag,
    as_text,
    nanos_to_datetime,
)

RESPONSE_ID = "gen_ai.response.id"
SESSION_IDS = ("gen_ai.conversation.id", "session.id")
EVALUATION_NAME = "gen_ai.evaluation.name"


@dataclass(frozen=True)
class FeedbackEvent:
    """A span event or log record as feedback reads it."""

    name: str
    time_unix_nano: int
    attributes: Mapping[str, Any]
    trace_id: bytes = b""
    span_id: bytes = b""
    # The attributes of the span a span event is on: its session when the event names none, so the
    # feedback is keyed (and partitioned) with the call's events.
    context: Mapping[str, Any] = field(default_factory=dict)


class FeedbackReader:
    def __init__(self, rules: FeedbackRules) -> None:
        self.events = frozenset(rules.events)
        self.user_evaluations = frozenset(rules.user_evaluation_names)
        self.positive = frozenset(label.lower() for label in rules.positive_labels)
        self.negative = frozenset(label.lower() for label in rules.negative_labels)

    def is_feedback(self, name: str, attributes: Mapping[str, Any]) -> bool:
        if name not in self.events:
            return False
        if name == "gen_ai.evaluation.result":
            return as_text(attributes.get(EVALUATION_NAME)) in self.user_evaluations
        return True

    def read(self, event: FeedbackEvent, now: datetime) -> dict[str, Any] | Rejected:
        """The Feedback record's fields (validated by the SDK's encoder), or why there is none."""
        attributes = event.attributes
        request_id = as_text(attributes.get(RESPONSE_ID))
        if not request_id:
            return Rejected("invalid_attribute", f"a {event.name} event needs {RESPONSE_ID}")
        try:
            rating = self._rating(attributes)
        except ValueError:
            return Rejected("invalid_attribute", "onfinish.feedback.rating must be -1, 0 or 1")
        session_id = next(
            (
                as_text(source[k])
                for source in (attributes, event.context)
                for k in SESSION_IDS
                if source.get(k) is not None
            ),
            None,
        )
        at = nanos_to_datetime(event.time_unix_nano) if event.time_unix_nano else now
        name = f"{event.trace_id.hex()}{event.span_id.hex()}|{event.time_unix_nano}|{request_id}"
        return {
            "feedback_id": uuid.uuid5(FEEDBACK_NAMESPACE, name),
            "request_id": request_id,
            "session_id": session_id,
            "regenerated": as_flag(attributes.get("onfinish.feedback.regenerated", False)),
            "edited": as_flag(attributes.get("onfinish.feedback.edited", False)),
            "rating": rating,
            "at": at,
            "sdk_name": SDK_NAME,
            "sdk_version": __version__,
        }

    def _rating(self, attributes: Mapping[str, Any]) -> int | None:
        explicit = attributes.get("onfinish.feedback.rating")
        if explicit is not None:
            if isinstance(explicit, bool) or not isinstance(explicit, int | float | str):
                raise ValueError("not a number")
            rating = int(explicit)
            if rating not in (-1, 0, 1):
                raise ValueError("out of range")
            return rating
        score = attributes.get("gen_ai.evaluation.score.value")
        if isinstance(score, int | float) and not isinstance(score, bool):
            return (score > 0) - (score < 0)
        label = as_text(attributes.get("gen_ai.evaluation.score.label"))
        if label is not None:
            lowered = label.lower()
            if lowered in self.positive:
                return 1
            if lowered in self.negative:
                return -1
        return None
