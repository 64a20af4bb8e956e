"""Configuration shared by every stage: one pydantic-settings class per component.

Every field has an embedded default (the local stack on loopback) and a one-line description, and
is read from the environment with the ``ONFINISH_<COMPONENT>_`` prefix, e.g.
``ONFINISH_KAFKA_BOOTSTRAP_SERVERS``. Settings are built once at the edge (the CLI, a worker's
entry point) and passed down explicitly; nothing deeper reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK = "127.0.0.1"


class KafkaSettings(BaseSettings):
    """How every stage reaches Kafka, and the shape of the topics the stack provisions."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field(
        default=f"{LOOPBACK}:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    topic_prefix: str = Field(
        default="onfinish", description="Prefix of every topic name (onfinish.raw, onfinish.enriched, ...)."
    )
    partitions: int = Field(
        default=12, ge=1, le=1024, description="Partitions per topic at creation; caps processor parallelism."
    )
    replication_factor: int = Field(
        default=1, ge=1, description="Replicas per topic; 1 on the single local broker, 3 in production."
    )
    request_timeout_s: float = Field(
        default=15.0, gt=0, description="Timeout of admin requests (metadata, topic creation)."
    )


class RegistrySettings(BaseSettings):
    """How every stage reaches the Confluent-compatible schema registry."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_REGISTRY_", extra="ignore")

    url: str = Field(default=f"http://{LOOPBACK}:8081", description="Base URL of the schema registry.")
    timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one registry HTTP request.")


class ClickHouseSettings(BaseSettings):
    """How sinks and analysts reach ClickHouse: always through clickhouse-connect."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_CLICKHOUSE_", extra="ignore")

    dsn: str | None = Field(
        default=None,
        description=(
            "clickhouse-connect DSN: chdb:///<dir> (embedded) or http(s)://user:pass@host:port/db "
            "(a server); unset means the embedded engine in <ONFINISH_STACK_HOME>/clickhouse."
        ),
    )
    database: str = Field(default="onfinish", description="Database that holds onfinish's tables.")

    @field_validator("dsn")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("chdb:", "http://", "https://")):
            raise ValueError("ClickHouse DSN must start with chdb:, http:// or https://")
        return value

    def display_dsn(self, stack: StackSettings) -> str:
        """The DSN with any password masked, for status lines and logs."""
        dsn = self.resolved_dsn(stack)
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))

    def resolved_dsn(self, stack: StackSettings) -> str:
        """The DSN to hand to clickhouse-connect, with the embedded default made concrete."""
        if self.dsn is not None:
            return self.dsn
        return f"chdb://{stack.clickhouse_dir}"


class StackSettings(BaseSettings):
    """The local stack that `onfinish stack up` installs and runs as plain processes."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_STACK_", extra="ignore")

    home: Path = Field(
        default=Path(".onfinish"),
        description="Project-local directory for the stack's data, logs and pid files (survives down/up).",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "onfinish",
        description="Where downloaded and built software (Kafka jars, the registry binary) is cached.",
    )
    host: str = Field(default=LOOPBACK, description="Address every local component listens on.")
    kafka_version: str = Field(
        default="3.9.2", description="Apache Kafka version fetched from Maven Central."
    )
    kafka_port: int = Field(default=9092, description="Kafka broker (client) port.")
    kafka_controller_port: int = Field(default=9093, description="Kafka KRaft controller port.")
    kafka_heap: str = Field(default="1g", description="Maximum JVM heap of the local broker (-Xmx).")
    registry_version: str = Field(
        default="v0.2.1", description="AxonOps Schema Registry module version built with Go."
    )
    registry_port: int = Field(default=8081, description="Schema registry port.")
    alertmanager_version: str = Field(
        default="v0.28.1",
        description="Prometheus Alertmanager module version built with `go install` (alerting enabled).",
    )
    alertmanager_port: int = Field(
        default=9094, description="Alertmanager port (9093, its usual one, is Kafka's controller here)."
    )
    webhook_port: int = Field(
        default=9095, description="Port of the webhook receiver that keeps the local stack's notifications."
    )
    postgres_port: int = Field(
        default=5433, description="Port of the PostgreSQL server that stores the registry's schemas."
    )
    postgres_bin_dir: Path | None = Field(
        default=None, description="Directory with initdb and postgres; unset means Debian's newest install."
    )
    maven: str = Field(default="mvn", description="Maven executable used to fetch the Kafka jars.")
    go: str = Field(
        default="go", description="Go executable used to build the schema registry and Alertmanager."
    )
    start_timeout_s: float = Field(
        default=90.0, gt=0, description="How long a component may take to become healthy."
    )
    stop_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a component may take to stop before it is killed."
    )

    @field_validator("home", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Components run with their own working directory, so every path they get is absolute.
        return value.expanduser().absolute()

    @property
    def clickhouse_dir(self) -> Path:
        """Data directory of the embedded ClickHouse engine (chDB)."""
        return self.home / "clickhouse"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.host}:{self.registry_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{self.host}:{self.alertmanager_port}"

    @property
    def notifications_path(self) -> Path:
        """Where the local webhook receiver keeps the notifications Alertmanager sent it."""
        return self.home / "webhook" / "notifications.jsonl"


ALL_SETTINGS: tuple[type[BaseSettings], ...] = (
    KafkaSettings,
    RegistrySettings,
    ClickHouseSettings,
    StackSettings,
)
