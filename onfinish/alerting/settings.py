"""Configuration of alerting (ONFINISH_ALERTING_*): the conditions, Alertmanager and the timing."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from onfinish.settings import LOOPBACK, OnfinishSettings


class AlertingSettings(OnfinishSettings):
    """Alert conditions, episodes and their delivery through Prometheus Alertmanager."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_ALERTING_", extra="ignore")

    enabled: bool = Field(
        default=True,
        description=(
            "Alerting on: `onfinish stack up` runs Alertmanager and a webhook receiver, and "
            "`onfinish watch` judges the alert conditions and notifies Alertmanager."
        ),
    )
    rules: Path | None = Field(
        default=None, description="Alert conditions file; empty: the packaged alert_conditions.v1.toml."
    )
    alertmanager_url: str = Field(
        default=f"http://{LOOPBACK}:9094",
        description="Base URL of Alertmanager (its v2 API is under /api/v2).",
    )
    alertmanager_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for an Alertmanager behind an authenticating proxy; empty: none.",
    )
    timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one request to Alertmanager.")
    resend_s: float = Field(
        default=60.0,
        gt=0,
        description=(
            "How often open episodes are posted again; each post says the alert lasts 4 times this, "
            "so Alertmanager keeps it firing through three missed posts."
        ),
    )
    retry_max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between two attempts while Alertmanager is away."
    )
    settle_s: float = Field(
        default=20.0,
        ge=0,
        description=(
            "How long after a minute ends its windows are judged (processors send snapshots every "
            "5 s, the sink inserts within seconds)."
        ),
    )
    restore_wait_s: float = Field(
        default=60.0,
        ge=0,
        description=(
            "At start, how long to wait for the sink to store every record already on "
            "onfinish.alerts before the open episodes are read back from ClickHouse."
        ),
    )
    resend_resolved_s: float = Field(
        default=3600.0,
        ge=0,
        description="At start, episodes resolved this recently are posted to Alertmanager again.",
    )
    dashboard_url: str = Field(
        default=f"http://{LOOPBACK}:8124",
        description="The dashboard a notification links to, filtered to the episode's model.",
    )
    alertmanager_config: Path | None = Field(
        default=None,
        description=(
            "Alertmanager configuration the local stack runs with; empty: one that sends every "
            "notification to the stack's webhook receiver."
        ),
    )
