"""Configuration of onfinish collect (ONFINISH_COLLECT_*), with an embedded default for each field."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from onfinish.runtime import GcThresholds, gc_thresholds_field
from onfinish.settings import LOOPBACK, OnfinishSettings


class CollectSettings(OnfinishSettings):
    """The OpenTelemetry receiver and the Collector topic worker (`onfinish collect`)."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_COLLECT_", extra="ignore")

    host: str = Field(
        default=LOOPBACK, description="Address the OTLP/HTTP receiver listens on (0.0.0.0 in a container)."
    )
    port: int = Field(
        default=4318,
        ge=0,
        le=65535,
        description="Port of the OTLP/HTTP receiver (OTLP's 4318; 0: any free port).",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest request body, compressed or inflated, before a 413 (the Collector's: 20 MiB).",
    )
    spool_high_water_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Spool size above which requests get 503 with Retry-After until Kafka catches up.",
    )
    max_concurrent_requests: int = Field(
        default=16, ge=1, description="Requests handled at once; one more gets 429 with Retry-After."
    )
    retry_after_s: int = Field(
        default=5, ge=1, description="Seconds a sender is asked to wait in Retry-After (429 and 503)."
    )
    fsync: bool = Field(
        default=False,
        description=(
            "Force each request's events to the device before the 200 (survives power loss, not only a "
            "killed receiver), at the cost of an fsync per request."
        ),
    )
    mapping: Path | None = Field(
        default=None, description="Mapping file (TOML); empty: the packaged mapping.v1.toml."
    )
    max_past_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="Oldest span end accepted, in seconds before now (the processors' own bound).",
    )
    max_future_s: float = Field(
        default=300.0, ge=0, description="Furthest span end accepted, in seconds after now (clock skew)."
    )
    topic: str = Field(
        default="otlp_spans",
        description="Topic the OpenTelemetry Collector's Kafka exporter writes OTLP protobuf traces to.",
    )
    group_id: str = Field(
        default="onfinish-collect", description="Consumer group of the Collector topic worker."
    )
    batch_records: int = Field(
        default=200, ge=1, description="Collector topic records the worker maps and delivers per commit."
    )
    delivery_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="How long the topic worker waits for Kafka to acknowledge a batch before retrying.",
    )
    commit_retry_initial_s: float = Field(
        default=0.5,
        gt=0,
        description="First wait before the topic worker commits again offsets Kafka refused to commit "
        "(it goes on consuming meanwhile).",
    )
    commit_retry_max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between two tries of a refused offset commit."
    )
    gc_thresholds: GcThresholds = gc_thresholds_field(
        "collected a 512-span request's few thousand short-lived objects several times over"
    )
    web_port: int = Field(
        default=4319, ge=1, le=65535, description="/health and /metrics port of the Collector topic worker."
    )

    @model_validator(mode="after")
    def _commit_retry_in_order(self) -> CollectSettings:
        if self.commit_retry_initial_s > self.commit_retry_max_s:
            raise ValueError(
                "ONFINISH_COLLECT_COMMIT_RETRY_INITIAL_S must not exceed ONFINISH_COLLECT_COMMIT_RETRY_MAX_S"
            )
        return self
