"""The producer SDK: what a service calls from its onFinish hook.

It hands each event off without blocking the caller, encodes it as Avro against the schema
registry (Confluent wire format) and publishes it to ``onfinish.raw``. This package stays light:
it never imports Faust, aiokafka, chDB or clickhouse-connect.

    from onfinish.producers import CallTracker, OnFinishEvent, on_finish

    tracker = CallTracker()
    reply = "".join(tracker.stream(llm.stream(prompt)))
    on_finish(OnFinishEvent(request_id=rid, service="chat-api", provider="openai", model_id="gpt-4o",
                            **tracker.timing()))
"""

import threading
from typing import Any

from onfinish.producers.emitter import Counters, Emitter
from onfinish.producers.fingerprint import fingerprint, prompt_hash
from onfinish.producers.settings import ProducerSettings
from onfinish.producers.tracking import CallTracker
from onfinish.schemas.models import Feedback, OnFinishEvent, Operation, RoutingStrategy, Status

_default: Emitter | None = None
_default_lock = threading.Lock()


def default_emitter() -> Emitter:
    """The process-wide emitter, configured from ONFINISH_* settings on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Emitter()
    return _default


def on_finish(event: Any) -> None:
    """Hand an onFinish event to the process-wide emitter: returns at once, never raises."""
    (_default or default_emitter()).on_finish(event)


def record_feedback(request_id: str, **reaction: Any) -> None:
    """Hand off a user's later reaction (regenerated, edited, rating) to the process-wide emitter."""
    default_emitter().record_feedback(request_id, **reaction)


__all__ = [
    "CallTracker",
    "Counters",
    "Emitter",
    "Feedback",
    "OnFinishEvent",
    "Operation",
    "ProducerSettings",
    "RoutingStrategy",
    "Status",
    "default_emitter",
    "fingerprint",
    "on_finish",
    "prompt_hash",
    "record_feedback",
]
