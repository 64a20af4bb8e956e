"""Configuration shared by every stage: one pydantic-settings class per component.

Every field has an embedded default (the local stack on loopback) and a one-line description, and
is read from the environment with the ``ONFINISH_<COMPONENT>_`` prefix, e.g.
``ONFINISH_KAFKA_BOOTSTRAP_SERVERS``. Settings are built once at the edge (the CLI, a worker's
entry point) and passed down explicitly; nothing deeper reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from onfinish.errors import ConfigurationError

LOOPBACK = "127.0.0.1"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


def is_secret(field: FieldInfo) -> bool:
    """Whether a settings field holds a secret (a SecretStr, optional or not)."""
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


class SecretFileSource(PydanticBaseSettingsSource):
    """Each secret field may come from a file named by ``<VARIABLE>_FILE``, as container platforms
    mount secrets (``/run/secrets/...``): pydantic-settings' own ``secrets_dir`` wants one folder
    with a file per field name, which is not how compose or Kubernetes name them. The variable
    itself, when set, wins over its file."""

    def __init__(self, settings_cls: type[BaseSettings], environment: EnvSettingsSource) -> None:
        super().__init__(settings_cls)
        self.prefix = str(settings_cls.model_config.get("env_prefix", ""))

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = f"{self.prefix}{field_name.upper()}_FILE"
        path = os.environ.get(variable)
        if not path or not is_secret(field):
            return None, field_name, False
        try:
            # One trailing newline is what `echo secret > file` leaves; it is never part of a secret.
            return Path(path).read_text().removesuffix("\n"), field_name, False
        except OSError as exc:
            raise ConfigurationError(
                f"{variable} names {path}, which cannot be read: {exc.strerror}"
            ) from None

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


class OnfinishSettings(BaseSettings):
    """A settings class whose secrets may also be read from files (``<VARIABLE>_FILE``), and whose
    validation errors never quote the input: pydantic would print every value it was given, a
    password among them, in the message of a refused combination."""

    model_config = SettingsConfigDict(hide_input_in_errors=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, EnvSettingsSource)
        files = SecretFileSource(settings_cls, env_settings)
        return (init_settings, env_settings, files, dotenv_settings, file_secret_settings)


DEVELOPMENT_DLQ_SEAL_KEY = "onfinish-local-development-dead-letter-key"


class DeadLetterSettings(OnfinishSettings):
    """How dead letters are sealed: every stage that dead-letters, and `onfinish dlq replay`."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_DLQ_", extra="ignore")

    seal_key: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_DLQ_SEAL_KEY),
        description=(
            "Secret under which dead letters' key and value bytes are sealed (AES-GCM): they are "
            "records as they came, before redaction. Processors, sinks, onfinish collect and "
            "`onfinish dlq replay` need the same one; set your own in production."
        ),
    )


class KafkaSettings(OnfinishSettings):
    """How every stage reaches Kafka (address, TLS, SASL), and the shape of the topics it provisions."""

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
    connect_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How long a worker or command tries to reach and authenticate to Kafka at start before it "
            "stops with the reason (wrong password, unknown CA, missing ACL)."
        ),
    )
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (managed clusters)."
    )
    sasl_mechanism: SaslMechanism = Field(
        default="PLAIN",
        description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (OIDC client credentials).",
    )
    sasl_username: str | None = Field(
        default=None, description="SASL user (PLAIN, SCRAM); Confluent Cloud's API key."
    )
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (PLAIN, SCRAM); Confluent Cloud's API secret."
    )
    oauth_token_endpoint: str | None = Field(
        default=None, description="OAUTHBEARER: the OIDC token endpoint (client credentials grant)."
    )
    oauth_client_id: str | None = Field(default=None, description="OAUTHBEARER: the OIDC client id.")
    oauth_client_secret: SecretStr | None = Field(
        default=None, description="OAUTHBEARER: the OIDC client secret."
    )
    oauth_scope: str | None = Field(default=None, description="OAUTHBEARER: scope(s) to request, if any.")
    ssl_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed the brokers' certificates; unset: the system's.",
    )
    ssl_cert_file: Path | None = Field(
        default=None, description="PEM client certificate for mutual TLS (with ssl_key_file)."
    )
    ssl_key_file: Path | None = Field(default=None, description="PEM private key of the client certificate.")
    ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of the client key, if it is encrypted."
    )
    ssl_check_hostname: bool = Field(
        default=True, description="Check that a broker's certificate names the host connected to."
    )

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @model_validator(mode="after")
    def _complete_credentials(self) -> KafkaSettings:
        # Checked once, here: a half-configured client would otherwise fail later, in a retry loop.
        if self.uses_sasl and self.sasl_mechanism == "OAUTHBEARER":
            missing = [
                name
                for name in ("oauth_token_endpoint", "oauth_client_id", "oauth_client_secret")
                if getattr(self, name) is None
            ]
        elif self.uses_sasl:
            missing = [name for name in ("sasl_username", "sasl_password") if getattr(self, name) is None]
        else:
            missing = []
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            missing.append("ssl_key_file" if self.ssl_key_file is None else "ssl_cert_file")
        if missing:
            variables = ", ".join(f"ONFINISH_KAFKA_{name.upper()}" for name in missing)
            raise ValueError(
                f"{self.security_protocol} with {self.sasl_mechanism} needs {variables}"
                if self.uses_sasl
                else f"mutual TLS needs {variables}"
            )
        return self

    def principal(self) -> str:
        """Who this client authenticates as, for error messages (never a secret)."""
        if not self.uses_sasl:
            return "no SASL user" if self.ssl_cert_file is None else f"certificate {self.ssl_cert_file}"
        if self.sasl_mechanism == "OAUTHBEARER":
            return f"OIDC client {self.oauth_client_id!r}"
        return f"{self.sasl_mechanism} user {self.sasl_username!r}"


class RegistrySettings(OnfinishSettings):
    """How every stage reaches the Confluent-compatible schema registry (URL, TLS, credentials)."""

    model_config = SettingsConfigDict(env_prefix="ONFINISH_REGISTRY_", extra="ignore")

    url: str = Field(default=f"http://{LOOPBACK}:8081", description="Base URL of the schema registry.")
    timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one registry HTTP request.")
    basic_auth_user_info: SecretStr | None = Field(
        default=None, description="HTTP basic auth as user:password (Confluent Cloud: API key:secret)."
    )
    bearer_token: SecretStr | None = Field(
        default=None,
        description="A static bearer token sent as Authorization: Bearer (instead of basic auth).",
    )
    bearer_logical_cluster: str | None = Field(
        default=None,
        description="With a bearer token: the registry's logical cluster id (Confluent Cloud lsrc-...).",
    )
    ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA that signed the registry's certificate; unset: the system's.",
    )
    cert_file: Path | None = Field(default=None, description="PEM client certificate for mutual TLS.")
    key_file: Path | None = Field(default=None, description="PEM private key of the client certificate.")

    @model_validator(mode="after")
    def _one_kind_of_credentials(self) -> RegistrySettings:
        if self.basic_auth_user_info is not None and self.bearer_token is not None:
            raise ValueError(
                "set ONFINISH_REGISTRY_BASIC_AUTH_USER_INFO or ONFINISH_REGISTRY_BEARER_TOKEN, not both"
            )
        info = self.basic_auth_user_info
        if info is not None and ":" not in info.get_secret_value():
            raise ValueError("ONFINISH_REGISTRY_BASIC_AUTH_USER_INFO must read user:password")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "mutual TLS to the registry needs both ONFINISH_REGISTRY_CERT_FILE and _KEY_FILE"
            )
        return self

    @property
    def user(self) -> str | None:
        """The basic-auth user (never the password), for messages."""
        info = self.basic_auth_user_info
        return None if info is None else info.get_secret_value().split(":", 1)[0]


class ClickHouseSettings(OnfinishSettings):
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
    user: str | None = Field(default=None, description="ClickHouse server user (instead of one in the DSN).")
    password: SecretStr | None = Field(
        default=None, description="ClickHouse server password (instead of one in the DSN)."
    )
    ca_file: Path | None = Field(
        default=None, description="PEM file of the CA that signed the server's certificate (https DSN)."
    )
    verify: bool = Field(
        default=True, description="Verify the server's certificate and host name (https DSN); keep it on."
    )

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


class StackSettings(OnfinishSettings):
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
    secure: bool = Field(
        default=False,
        description=(
            "Run the stack secured (`stack up --secure`): Kafka SASL_SSL with SCRAM users and ACLs, the "
            "registry over TLS with basic auth; certificates and passwords under <home>/security."
        ),
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
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.host}:{self.registry_port}"

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
    DeadLetterSettings,
)


Document = TypeVar("Document", bound=BaseModel)


def load_toml_document(
    model: type[Document], what: str, package: str, resource: tuple[str, ...], path: Path | None = None
) -> Document:
    """Read and validate one of onfinish's versioned TOML files (rules, conditions, budgets): the
    file at `path`, or without one the copy packaged in `package`. Any failure is one
    ConfigurationError that names the file and, for an invalid one, each problem's place."""
    import tomllib
    from importlib.resources import files

    source = str(path) if path is not None else f"packaged {'/'.join(resource)}"
    try:
        if path is None:
            text = files(package).joinpath(*resource).read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        return model.model_validate(tomllib.loads(text))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigurationError(f"{what} {source} cannot be read: {error}") from error
    except ValidationError as error:
        raise ConfigurationError(f"{what} {source} are invalid: {validation_problems(error)}") from error


def validation_problems(error: ValidationError) -> str:
    """Pydantic's findings as one line a person can act on: where, then what (never the input)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}" for problem in error.errors()
    )
