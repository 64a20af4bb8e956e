"""Configuration of the processors (ONFINISH_PROCESSOR_*), with an embedded default for each."""

from __future__ import annotations

import tempfile
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from onfinish.processors.quality import QualityWeights
from onfinish.runtime import GcThresholds, gc_thresholds_field
from onfinish.settings import OnfinishSettings

# A published default for local runs, never a secret: production sets ONFINISH_PROCESSOR_PSEUDONYM_KEY.
DEVELOPMENT_PSEUDONYM_KEY = "onfinish-local-development-key"


class Engine(StrEnum):
    """Which code runs the per-event path (processors/engines.py): the Python reference, or the
    native core that hands every record it is not sure of to the reference."""

    python = "python"
    native = "native"


class ProcessorSettings(OnfinishSettings):
    """What the processors read, keep and emit."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_PROCESSOR_", extra="ignore")

    app_id: str = Field(
        default="onfinish-processors", description="Faust app id: the consumer group of the workers."
    )
    data_dir: Path = Field(
        default=Path(tempfile.gettempdir()) / "onfinish-processors",
        description=(
            "Faust's local data directory (a folder per app id). Tables are in memory and restored "
            "from their changelogs, so nothing here needs keeping."
        ),
    )
    web_port: int = Field(default=6066, description="Port of the worker's /health and /metrics.")
    web_host: str = Field(
        default="127.0.0.1", description="Address /health and /metrics listen on (0.0.0.0 in a container)."
    )
    session_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="How long the group waits for a silent worker before giving its partitions away.",
    )
    heartbeat_interval_s: float = Field(
        default=3.0, gt=0, description="How often a worker tells the group it lives."
    )
    auto_register: bool = Field(
        default=True,
        description=(
            "Register the output schemas when missing. Off where a schema admin registers the "
            "contract and the workers may only read the registry: a worker then refuses to start "
            "until the schemas are there."
        ),
    )
    engine: Engine = Field(
        default=Engine.native,
        description=(
            "The per-event path's engine: native (the Rust core, one call per batch; records it is "
            "not sure of take the Python path) or python (the reference alone)."
        ),
    )
    price_catalog: Path | None = Field(
        default=None, description="Price catalog TOML; unset means the packaged one."
    )
    redaction_patterns: Path | None = Field(
        default=None, description="Redaction patterns TOML; unset means the packaged ones."
    )
    alert_rules: Path | None = Field(
        default=None,
        description="Breach rules TOML (per-call and per-session facts); unset means the packaged ones.",
    )
    attribute_allow_list: list[str] = Field(
        default=["app.version", "tenant_id", "fallback_from", "locale", "channel", "plan", "tier", "client"],
        description="Attribute keys that pass the processors (values redacted); every other key is dropped.",
    )
    pseudonym_key: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_PSEUDONYM_KEY),
        description=(
            "Key of the keyed hash that pseudonymises user_id and any identifier a redaction pattern "
            "finds PII in; set your own in production."
        ),
    )
    quality_regenerated_weight: float = Field(default=0.35, ge=0, description="Weight of 'not regenerated'.")
    quality_edited_weight: float = Field(default=0.20, ge=0, description="Weight of 'not edited'.")
    quality_latency_weight: float = Field(default=0.15, ge=0, description="Weight of the latency signal.")
    quality_token_efficiency_weight: float = Field(
        default=0.30, ge=0, description="Weight of token efficiency."
    )
    quality_rating_weight: float = Field(default=3.0, ge=0, description="Weight of an explicit rating.")
    quality_latency_target_ms: float = Field(
        default=2000.0, gt=0, description="Latency with no quality penalty."
    )
    quality_latency_limit_ms: float = Field(
        default=20000.0, gt=0, description="Latency at which the signal is 0."
    )
    allowed_lateness_s: float = Field(
        default=120.0, ge=0, description="How late an event may arrive for its window."
    )
    session_gap_s: float = Field(default=1800.0, gt=0, description="Idle time that ends a session.")
    stop_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a stop may wait for the streams; then the rest is left to the next owner.",
    )
    snapshot_interval_s: float = Field(
        default=5.0, gt=0, description="How often changed windows are emitted."
    )
    batch_size: int = Field(
        default=1000,
        ge=1,
        description="Most raw records handled as one batch (state written once per batch).",
    )
    batch_within_s: float = Field(
        default=0.2, gt=0, description="Longest wait for a batch to fill before it is handled as it is."
    )
    fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        le=60_000,
        description=(
            "Longest the broker holds the consumer's fetch when no record is there (aiokafka's "
            "fetch_max_wait_ms; Faust's 1500 stalled partitions that had records: decision 0007)."
        ),
    )
    gc_thresholds: GcThresholds = gc_thresholds_field("took about a tenth of a worker's time")
    producer_linger_ms: float = Field(
        default=20.0, ge=0, description="How long outputs wait to be sent together (librdkafka linger.ms)."
    )
    max_future_s: float = Field(
        default=300.0, ge=0, description="Events finishing further ahead are refused."
    )
    max_past_s: float = Field(
        default=7 * 86400.0, gt=0, description="Events finishing longer ago are refused."
    )

    def quality_weights(self) -> QualityWeights:
        return QualityWeights(
            regenerated=self.quality_regenerated_weight,
            edited=self.quality_edited_weight,
            latency=self.quality_latency_weight,
            token_efficiency=self.quality_token_efficiency_weight,
            rating=self.quality_rating_weight,
            latency_target_ms=self.quality_latency_target_ms,
            latency_limit_ms=self.quality_latency_limit_ms,
        )
