"""onfinish collect: OpenTelemetry in. GenAI spans become OnFinishEvents through the SDK's spool.

Two paths share one mapping (data/mapping.v1.toml, documented in docs/contract.md):
- `receiver.py`: an OTLP/HTTP receiver (`POST /v1/traces`, `POST /v1/logs`) that answers 200 only
  once the events are in the SDK's durable spool (`Emitter.spool_batch`);
- `topic.py`: a worker that consumes OTLP protobuf written to Kafka by the OpenTelemetry Collector's
  Kafka exporter and commits its offsets only once the events are acknowledged by Kafka.
The SDK (onfinish.producers) knows nothing of this room; this room uses the SDK.
"""
