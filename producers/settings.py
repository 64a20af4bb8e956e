"""Configuration of the producer SDK (ONFINISH_PRODUCER_*), with an embedded default for each."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from onfinish.settings import OnfinishSettings


class ProducerSettings(OnfinishSettings):
    """How the SDK hands events off, spools them and produces them."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_PRODUCER_", extra="ignore")

    topic: str = Field(
        default="onfinish.raw", description="Topic the SDK produces onFinish and Feedback records to."
    )
    queue_size: int = Field(
        default=100_000, ge=1, description="Events held in memory between the caller and the worker."
    )
    spool_dir: Path = Field(
        default=Path(".onfinish/spool"),
        description="Directory of the durable spool (one subfolder per process).",
    )
    spool_max_bytes: int = Field(
        default=1024**3,
        ge=1024 * 1024,
        description="Disk the spool may use; beyond it events are dropped and counted.",
    )
    spool_segment_bytes: int = Field(
        default=16 * 1024**2, ge=4096, description="Size of one spool segment file."
    )
    max_in_flight: int = Field(
        default=50_000,
        ge=1,
        description="Spooled records handed to the Kafka client and not yet acknowledged.",
    )
    linger_ms: int = Field(default=50, ge=0, description="librdkafka linger.ms: how long to fill a batch.")
    compression: str = Field(default="lz4", description="librdkafka compression.type.")
    message_timeout_ms: int = Field(
        default=30_000,
        ge=1000,
        description="How long Kafka may take to acknowledge before the record is retried.",
    )
    auto_register: bool = Field(
        default=True, description="Register the contract's schemas if missing (else look them up only)."
    )
    capture_content: bool = Field(
        default=False, description="Send prompt_text and completion_text; off by default, they are dropped."
    )
    drop_log_interval_s: float = Field(
        default=60.0, gt=0, description="At most one log line per interval about dropped or rejected events."
    )

    @field_validator("spool_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()
