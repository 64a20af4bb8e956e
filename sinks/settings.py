"""Settings of the sink workers (ONFINISH_SINK_*), each with an embedded default."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from onfinish.runtime import GcThresholds, gc_thresholds_field
from onfinish.settings import OnfinishSettings

FAMILIES = ("events", "rollups", "dlq")


class SinkSettings(OnfinishSettings):
    """How sink workers batch, retry and show themselves."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_SINK_", extra="ignore")

    group_prefix: str = Field(
        default="onfinish-sinks",
        description="Consumer groups are <prefix>-events, <prefix>-rollups and <prefix>-dlq.",
    )
    families: list[str] = Field(
        default=list(FAMILIES),
        description="Table families this worker writes: events, rollups (windows, sessions, alerts), dlq.",
    )
    batch_rows: int = Field(default=100_000, ge=1, description="Most records in one insert batch.")
    batch_seconds: float = Field(
        default=1.0, gt=0, description="Longest a batch waits to fill before it is inserted as it is."
    )
    insert_parallelism: int = Field(
        default=2,
        ge=1,
        le=16,
        description=(
            "Concurrent inserts one batch's enriched events are split into, each on a connection of "
            "its own: ClickHouse reads one insert's Avro on one thread, so this is how many cores "
            "the events insert can use (about the machine's cores; 1 = never split)."
        ),
    )
    insert_part_min_rows: int = Field(
        default=5_000,
        ge=1,
        description="Fewest rows in one of those concurrent inserts: smaller batches are inserted whole.",
    )
    gc_thresholds: GcThresholds = gc_thresholds_field(
        "took a tenth of a worker's time, walking the records of the batches it holds"
    )
    session_timeout_s: float = Field(
        default=45.0,
        ge=1.0,
        description=(
            "How long the group waits for a sink worker that stopped answering before its partitions "
            "go to another (librdkafka's session.timeout.ms; the broker allows 6 s to 30 min by default)."
        ),
    )
    retry_initial_s: float = Field(
        default=0.5,
        gt=0,
        description="First pause before retrying an insert ClickHouse refused, or a commit Kafka refused.",
    )
    retry_max_s: float = Field(
        default=30.0, gt=0, description="Longest pause between retries of an insert or of a commit."
    )
    events_ttl_days: int = Field(default=90, ge=1, description="Days the events table keeps rows.")
    web_host: str = Field(default="127.0.0.1", description="Interface of the worker's /health and /metrics.")
    web_port: int = Field(default=6166, description="Port of the worker's /health and /metrics.")
    query_host: str = Field(
        default="127.0.0.1", description="Interface of the read-only SQL endpoint (embedded mode)."
    )
    query_port: int = Field(
        default=8124,
        description="Port of the read-only SQL endpoint the embedded ClickHouse's owner serves; 0 = none.",
    )
