"""Security settings turned into each client's configuration: the one place that is done.

Every Kafka connection onfinish makes goes through `librdkafka_config` (confluent-kafka's Producer,
Consumer and AdminClient: the SDK, the processors' output producer, the sinks, every command and
benchmark) or `aiokafka_config` (Faust's consumer, its producer, admin and changelog topics, via
processors/faust_overrides.py). The registry client's configuration is made in schemas/wire.py
(`registry_config`, which reads the same RegistrySettings), ClickHouse's in `clickhouse_connect_options`.
A unit test holds the three Kafka renderings equivalent for the same settings.

What is kept here rather than taken from a library, and why:
- OAUTHBEARER for aiokafka: librdkafka fetches OIDC client-credentials tokens itself
  (`sasl.oauthbearer.method=oidc`), aiokafka only asks a token provider; `OidcClientCredentials`
  is that provider's synchronous core (one form POST, the token cached until a minute before it
  expires), so the processors need no OAuth library.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from onfinish.errors import AccessDenied, ConfigurationError
from onfinish.settings import ClickHouseSettings, KafkaSettings

OAUTH_REFRESH_MARGIN_S = 60.0
"""A token is fetched again this long before it expires: a broker refuses an expired one mid-session."""


def librdkafka_config(kafka: KafkaSettings) -> dict[str, Any]:
    """The address and security part of a confluent-kafka Producer, Consumer or AdminClient config;
    callers add their own tuning (`{**librdkafka_config(kafka), "linger.ms": 50}`)."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
    }
    if kafka.uses_tls:
        if kafka.ssl_ca_file is not None:
            config["ssl.ca.location"] = str(kafka.ssl_ca_file)
        if kafka.ssl_cert_file is not None and kafka.ssl_key_file is not None:
            config["ssl.certificate.location"] = str(kafka.ssl_cert_file)
            config["ssl.key.location"] = str(kafka.ssl_key_file)
        if kafka.ssl_key_password is not None:
            config["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
        # librdkafka's default is "https" already; written out so the setting is visibly honoured.
        config["ssl.endpoint.identification.algorithm"] = "https" if kafka.ssl_check_hostname else "none"
    if kafka.uses_sasl:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        if kafka.sasl_mechanism == "OAUTHBEARER":
            assert kafka.oauth_client_secret is not None  # checked by the settings
            config.update(
                {
                    "sasl.oauthbearer.method": "oidc",
                    "sasl.oauthbearer.token.endpoint.url": kafka.oauth_token_endpoint,
                    "sasl.oauthbearer.client.id": kafka.oauth_client_id,
                    "sasl.oauthbearer.client.secret": kafka.oauth_client_secret.get_secret_value(),
                }
            )
            if kafka.oauth_scope:
                config["sasl.oauthbearer.scope"] = kafka.oauth_scope
        else:
            assert kafka.sasl_password is not None  # checked by the settings
            config["sasl.username"] = kafka.sasl_username
            config["sasl.password"] = kafka.sasl_password.get_secret_value()
    return config


def kafka_ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of a Python Kafka client (aiokafka), None on a plaintext protocol."""
    if not kafka.uses_tls:
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(kafka.ssl_ca_file) if kafka.ssl_ca_file is not None else None
        )
        if kafka.ssl_cert_file is not None and kafka.ssl_key_file is not None:
            password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
            context.load_cert_chain(str(kafka.ssl_cert_file), str(kafka.ssl_key_file), password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"Kafka TLS files cannot be loaded: {exc}") from None
    context.check_hostname = kafka.ssl_check_hostname
    return context


def aiokafka_config(kafka: KafkaSettings) -> dict[str, Any]:
    """The address and security keyword arguments of an aiokafka client, as Faust passes them."""
    config: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "security_protocol": kafka.security_protocol,
        "ssl_context": kafka_ssl_context(kafka),
    }
    if kafka.uses_sasl:
        config["sasl_mechanism"] = kafka.sasl_mechanism
        if kafka.sasl_mechanism == "OAUTHBEARER":
            config["sasl_oauth_token_provider"] = OidcClientCredentials(kafka)
        else:
            assert kafka.sasl_password is not None
            config["sasl_plain_username"] = kafka.sasl_username
            config["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return config


class OidcClientCredentials:
    """Access tokens from an OIDC token endpoint by the client-credentials grant (RFC 6749 4.4)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        assert kafka.oauth_token_endpoint and kafka.oauth_client_id and kafka.oauth_client_secret
        self.endpoint = kafka.oauth_token_endpoint
        self.client_id = kafka.oauth_client_id
        self._secret = kafka.oauth_client_secret
        self.scope = kafka.oauth_scope
        self.timeout_s = kafka.connect_timeout_s
        self._token = ""
        self._expires = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if time.monotonic() < self._expires - OAUTH_REFRESH_MARGIN_S:
                return self._token
            form = {"grant_type": "client_credentials"}
            if self.scope:
                form["scope"] = self.scope
            request = urllib.request.Request(  # noqa: S310 - the configured https endpoint
                self.endpoint,
                data=urllib.parse.urlencode(form).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
            )
            # Client authentication by HTTP basic (RFC 6749 2.3.1), which every OIDC provider accepts.
            password_manager = urllib.request.HTTPPasswordMgrWithPriorAuth()
            password_manager.add_password(
                None, self.endpoint, self.client_id, self._secret.get_secret_value(), is_authenticated=True
            )
            opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(password_manager))
            try:
                with opener.open(request, timeout=self.timeout_s) as response:
                    answer = json.load(response)
            except Exception as exc:  # the message names the endpoint, never the secret
                raise ConfigurationError(
                    f"no OAuth token from {self.endpoint} for client {self.client_id!r}: {exc}"
                ) from None
            self._token = str(answer["access_token"])
            self._expires = time.monotonic() + float(answer.get("expires_in", 300))
            return self._token


def clickhouse_connect_options(clickhouse: ClickHouseSettings) -> dict[str, Any]:
    """Keyword arguments of clickhouse_connect.get_client beside the DSN (https, credentials)."""
    options: dict[str, Any] = {}
    if clickhouse.user is not None:
        options["username"] = clickhouse.user
    if clickhouse.password is not None:
        options["password"] = clickhouse.password.get_secret_value()
    dsn = clickhouse.dsn or ""
    if dsn.startswith("https://"):
        options["verify"] = clickhouse.verify
        if clickhouse.ca_file is not None:
            options["ca_cert"] = str(clickhouse.ca_file)
    return options


# --- Checking access at start ----------------------------------------------------------------------


def check_kafka_access(
    kafka: KafkaSettings, *, topics: Sequence[str] = (), groups: Sequence[str] = ()
) -> None:
    """Prove, within `kafka.connect_timeout_s`, that Kafka takes these credentials and lets us see
    `topics` and `groups`: AccessDenied with one clear reason otherwise (a wrong password, a broker
    certificate no configured CA signed, a missing ACL), or AccessDenied("kafka", "not reachable").

    librdkafka retries a refused login for ever and only reports it to an error callback, so a
    worker that just started its clients would sit in that loop, silent; this runs first instead.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    reported: list[KafkaError] = []
    config: dict[str, Any] = {
        **librdkafka_config(kafka),
        "error_cb": reported.append,
        "log_level": 0,  # the reason is reported once, below, not as librdkafka's retry chatter
        "socket.connection.setup.timeout.ms": int(kafka.connect_timeout_s * 1000),
        # A topic asked for by name must never be created by the asking (librdkafka's default for
        # this, a producer-type handle, is to allow it where the broker does).
        "allow.auto.create.topics": False,
    }
    admin = AdminClient(config)
    deadline = time.monotonic() + kafka.connect_timeout_s
    who = kafka.principal()
    while True:
        remaining = deadline - time.monotonic()
        try:
            metadata = admin.list_topics(timeout=max(0.5, min(remaining, 2.0)))
            break
        except KafkaException as exc:
            admin.poll(0)  # serves the error callback: librdkafka reports a refused login only there
            refusal = refusal_of(reported, kafka)
            if refusal is not None:
                raise AccessDenied("kafka", refusal) from None
            if remaining <= 0:
                last = reported[-1].str() if reported else exc.args[0].str()
                raise AccessDenied(
                    "kafka",
                    f"{kafka.bootstrap_servers} not reachable within {kafka.connect_timeout_s:.0f}s ({last})",
                ) from None
    for topic in topics:
        entry = metadata.topics.get(topic)
        if entry is not None and entry.error is None:
            continue
        # A topic we may not describe is left out of a listing; asked for by name it says why.
        named = admin.list_topics(topic=topic, timeout=max(1.0, deadline - time.monotonic()))
        error = named.topics[topic].error if topic in named.topics else None
        if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise AccessDenied("kafka", f"{who} is not allowed to use topic {topic} (missing ACL)")
    for group in groups:
        future = admin.describe_consumer_groups(
            [group], request_timeout=max(1.0, deadline - time.monotonic())
        )[group]
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                raise AccessDenied(
                    "kafka", f"{who} is not allowed to use consumer group {group} (missing ACL)"
                ) from None


def refusal_of(reported: list[Any], kafka: KafkaSettings) -> str | None:
    """The reason, when librdkafka reported (to an error callback) a refusal that retrying cannot
    mend: a login refused, or a broker certificate no configured CA signed."""
    from confluent_kafka import KafkaError

    who = kafka.principal()
    for error in reported:
        text = error.str()
        if error.code() == KafkaError._AUTHENTICATION or "SASL authentication error" in text:
            return (
                f"{kafka.bootstrap_servers} refused {who}: {text.split(': ', 1)[-1][:200]} "
                "(check ONFINISH_KAFKA_SASL_USERNAME / _PASSWORD)"
            )
        if (
            error.code() == KafkaError._SSL
            or "SSL handshake failed" in text
            or "certificate verify failed" in text
        ):
            return (
                f"TLS to {kafka.bootstrap_servers} failed: {text.split(': ', 1)[-1][:200]} "
                "(check ONFINISH_KAFKA_SSL_CA_FILE and the broker's certificate)"
            )
    return None
