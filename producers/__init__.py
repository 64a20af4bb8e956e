"""The producer SDK: what a service calls from its onFinish hook.

It hands each event off without blocking the caller, encodes it as Avro against the schema
registry (Confluent wire format) and publishes it to ``onfinish.raw``. This package stays light:
it never imports Faust, aiokafka, chDB or clickhouse-connect.
"""

from onfinish.producers.emitter import Counters, Emitter
from onfinish.producers.settings import ProducerSettings
from onfinish.schemas.models import Feedback, OnFinishEvent, Operation, RoutingStrategy, Status

__all__ = [
    "Counters",
    "Emitter",
    "Feedback",
    "OnFinishEvent",
    "Operation",
    "ProducerSettings",
    "RoutingStrategy",
    "Status",
]
