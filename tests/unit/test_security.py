"""Security settings: secrets as SecretStr and from files, and one rendering per client kind that
says the same thing to librdkafka, aiokafka (through Faust's credentials) and the registry client."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from onfinish.cli.configuration import rows, settings_classes
from onfinish.errors import ConfigurationError
from onfinish.schemas.wire import clickhouse_registry_url, registry_config
from onfinish.security import aiokafka_config, clickhouse_connect_options, librdkafka_config
from onfinish.settings import ClickHouseSettings, KafkaSettings, RegistrySettings, StackSettings
from onfinish.stack.security import StackSecurity, acls

SECRET = "s3cr3t-value-Zq9"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ONFINISH_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> StackSecurity:
    """A real CA and certificates, as the secured stack makes them."""
    security = StackSecurity(StackSettings(home=tmp_path_factory.mktemp("home"), secure=True))
    security.ensure()
    return security


def test_a_secret_comes_from_its_file_and_the_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")  # as `echo` writes it
    monkeypatch.setenv("ONFINISH_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ONFINISH_KAFKA_SASL_USERNAME", "sdk")
    monkeypatch.setenv("ONFINISH_KAFKA_SASL_PASSWORD_FILE", str(secret_file))
    settings = KafkaSettings()
    assert isinstance(settings.sasl_password, SecretStr)
    assert settings.sasl_password.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    monkeypatch.setenv("ONFINISH_KAFKA_SASL_PASSWORD", "from-the-variable")
    assert KafkaSettings().sasl_password == SecretStr("from-the-variable")


def test_every_secret_of_every_component_may_come_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "info").write_text("user:" + SECRET)
    (tmp_path / "token").write_text(SECRET)
    monkeypatch.setenv("ONFINISH_REGISTRY_BASIC_AUTH_USER_INFO_FILE", str(tmp_path / "info"))
    monkeypatch.setenv("ONFINISH_CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("ONFINISH_PROCESSOR_PSEUDONYM_KEY_FILE", str(tmp_path / "token"))
    from onfinish.processors.settings import ProcessorSettings

    assert RegistrySettings().basic_auth_user_info == SecretStr("user:" + SECRET)
    assert ClickHouseSettings().password == SecretStr(SECRET)
    assert ProcessorSettings().pseudonym_key == SecretStr(SECRET)


def test_a_secret_file_that_cannot_be_read_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ONFINISH_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match=r"ONFINISH_KAFKA_SASL_PASSWORD_FILE names .*missing"):
        KafkaSettings()


def test_a_refused_setting_never_quotes_a_secret(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ONFINISH_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("ONFINISH_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")  # and no user: refused
    with pytest.raises(ValidationError) as refused:
        KafkaSettings()
    assert "ONFINISH_KAFKA_SASL_USERNAME" in str(refused.value)
    assert SECRET not in str(refused.value)


def test_half_configured_security_is_refused_at_construction():
    with pytest.raises(ValidationError, match="ONFINISH_KAFKA_SASL_PASSWORD"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_username="sdk")
    with pytest.raises(ValidationError, match="ONFINISH_KAFKA_OAUTH_TOKEN_ENDPOINT"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", oauth_client_id="c")
    with pytest.raises(ValidationError, match="ONFINISH_KAFKA_SSL_KEY_FILE"):
        KafkaSettings(security_protocol="SSL", ssl_cert_file=Path("client.pem"))
    with pytest.raises(ValidationError, match="not both"):
        RegistrySettings(basic_auth_user_info=SecretStr("a:b"), bearer_token=SecretStr("t"))
    with pytest.raises(ValidationError, match="user:password"):
        RegistrySettings(basic_auth_user_info=SecretStr("no-colon"))


def test_config_lists_secrets_as_set_or_not_set_never_their_value(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ONFINISH_KAFKA_SASL_PASSWORD", SECRET)
    listed = {variable: default for cls in settings_classes() for variable, default, _ in rows(cls)}
    assert listed["ONFINISH_KAFKA_SASL_PASSWORD"] == "(set)"
    assert listed["ONFINISH_REGISTRY_BEARER_TOKEN"] == "(not set)"
    output = subprocess.run(
        [sys.executable, "-m", "onfinish", "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "ONFINISH_KAFKA_SASL_PASSWORD": SECRET, "COLUMNS": "300"},
        check=True,
    ).stdout
    assert SECRET not in output
    assert "ONFINISH_KAFKA_SASL_PASSWORD" in output


def _scram(material: StackSecurity) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers="b-1:9096,b-2:9096",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="sdk",
        sasl_password=SecretStr(SECRET),
        ssl_ca_file=material.ca_file,
        ssl_cert_file=material.client_cert_file,
        ssl_key_file=material.client_key_file,
    )


def test_librdkafka_aiokafka_and_faust_say_the_same_for_the_same_settings(material: StackSecurity):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from onfinish.processors.credentials import faust_credentials

    kafka = _scram(material)
    librdkafka = librdkafka_config(kafka)
    aiokafka = aiokafka_config(kafka)
    through_faust = credentials_to_aiokafka_auth(faust_credentials(kafka))
    assert librdkafka["bootstrap.servers"].split(",") == aiokafka["bootstrap_servers"]
    for rendering in (aiokafka, through_faust):
        assert rendering["security_protocol"] == librdkafka["security.protocol"] == "SASL_SSL"
        assert rendering["sasl_mechanism"] == librdkafka["sasl.mechanism"] == "SCRAM-SHA-512"
        assert rendering["sasl_plain_username"] == librdkafka["sasl.username"] == "sdk"
        assert rendering["sasl_plain_password"] == librdkafka["sasl.password"] == SECRET
        context = rendering["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
        # The context trusts exactly the configured CA, as librdkafka's ssl.ca.location does.
        assert [c["subject"] for c in context.get_ca_certs()] == [
            ((("commonName", "onfinish local stack CA"),),)
        ]
    assert librdkafka["ssl.ca.location"] == str(material.ca_file)
    assert librdkafka["ssl.certificate.location"] == str(material.client_cert_file)
    assert librdkafka["ssl.key.location"] == str(material.client_key_file)
    assert librdkafka["ssl.endpoint.identification.algorithm"] == "https"


def test_hostname_verification_can_be_turned_off_in_both_renderings(material: StackSecurity):
    kafka = _scram(material).model_copy(update={"ssl_check_hostname": False})
    assert librdkafka_config(kafka)["ssl.endpoint.identification.algorithm"] == "none"
    assert aiokafka_config(kafka)["ssl_context"].check_hostname is False


def test_plaintext_adds_nothing_but_the_protocol():
    assert librdkafka_config(KafkaSettings()) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
    }
    assert aiokafka_config(KafkaSettings())["ssl_context"] is None
    from onfinish.processors.credentials import faust_credentials

    assert faust_credentials(KafkaSettings()) is None


def test_oauthbearer_is_oidc_client_credentials_in_both_renderings():
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from onfinish.processors.credentials import faust_credentials

    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        oauth_token_endpoint="https://idp.example/oauth2/token",
        oauth_client_id="onfinish-sdk",
        oauth_client_secret=SecretStr(SECRET),
        oauth_scope="kafka",
    )
    librdkafka = librdkafka_config(kafka)
    assert librdkafka["sasl.oauthbearer.method"] == "oidc"
    assert librdkafka["sasl.oauthbearer.token.endpoint.url"] == "https://idp.example/oauth2/token"
    assert (librdkafka["sasl.oauthbearer.client.id"], librdkafka["sasl.oauthbearer.scope"]) == (
        "onfinish-sdk",
        "kafka",
    )
    provider = aiokafka_config(kafka)["sasl_oauth_token_provider"]
    assert (provider.endpoint, provider.client_id, provider.scope) == (
        "https://idp.example/oauth2/token",
        "onfinish-sdk",
        "kafka",
    )
    through_faust = credentials_to_aiokafka_auth(faust_credentials(kafka))
    assert through_faust["sasl_mechanism"] == "OAUTHBEARER"
    assert through_faust["sasl_oauth_token_provider"].credentials.client_id == "onfinish-sdk"


def test_the_registry_client_gets_the_same_trust_and_credentials(material: StackSecurity):
    from confluent_kafka.schema_registry import SchemaRegistryClient

    registry = RegistrySettings(
        url="https://registry.example:8081",
        basic_auth_user_info=SecretStr(f"key:{SECRET}"),
        ca_file=material.ca_file,
        cert_file=material.client_cert_file,
        key_file=material.client_key_file,
    )
    config = registry_config(registry)
    assert config["basic.auth.user.info"] == f"key:{SECRET}"
    assert (
        config["ssl.ca.location"]
        == str(material.ca_file)
        == librdkafka_config(_scram(material))["ssl.ca.location"]
    )
    assert config["ssl.certificate.location"] == str(material.client_cert_file)
    SchemaRegistryClient(config)  # the client accepts every key it is given
    bearer = registry_config(
        RegistrySettings(bearer_token=SecretStr(SECRET), bearer_logical_cluster="lsrc-1")
    )
    assert (bearer["bearer.auth.credentials.source"], bearer["bearer.auth.token"]) == ("STATIC_TOKEN", SECRET)
    SchemaRegistryClient(bearer)


def test_clickhouse_reads_the_registry_with_user_info_in_its_url():
    registry = RegistrySettings(
        url="https://registry.example:8081", basic_auth_user_info=SecretStr("k:p@ss/w")
    )
    assert clickhouse_registry_url(registry) == "https://k:p%40ss%2Fw@registry.example:8081"
    assert clickhouse_registry_url(RegistrySettings(url="http://r:8081")) == "http://r:8081"


def test_clickhouse_server_options_verify_tls_and_carry_the_credentials(tmp_path: Path):
    settings = ClickHouseSettings(
        dsn="https://ch.example:8443/onfinish",
        user="sink",
        password=SecretStr(SECRET),
        ca_file=tmp_path / "ca.pem",
    )
    assert clickhouse_connect_options(settings) == {
        "username": "sink",
        "password": SECRET,
        "verify": True,
        "ca_cert": str(tmp_path / "ca.pem"),
    }
    assert clickhouse_connect_options(ClickHouseSettings()) == {}


def test_each_principal_gets_least_privilege():
    rules = acls("onfinish", "onfinish-processors", "onfinish-sink")
    granted = {(r.principal, r.resource_type, r.name, r.operation) for r in rules}
    assert ("sdk", "TOPIC", "onfinish.raw", "WRITE") in granted
    assert not any(p == "sdk" and op == "READ" for p, _, _, op in granted)
    assert not any(p == "sdk" and name != "onfinish.raw" for p, kind, name, _ in granted if kind == "TOPIC")
    assert not any(
        p == "processor" and name == "onfinish.raw" and op == "WRITE" for p, _, name, op in granted
    )
    assert not any(p == "sink" and op in ("WRITE", "ALL") for p, _, _, op in granted)
    assert ("sink", "TOPIC", "onfinish.enriched", "READ") in granted


def test_stack_material_is_private_and_reused(material: StackSecurity):
    first = material.password("sdk")
    material.ensure()
    assert material.password("sdk") == first
    for secret in (material.password_file("sdk"), material.server_keystore_file, material.ca_key_file):
        assert secret.stat().st_mode & 0o077 == 0
    assert "SASL_PASSWORD_FILE" in " ".join(material.environment("sdk"))
    assert first not in " ".join(material.environment("sdk").values())
    for principal in ("sdk", "processor", "sink"):
        reader = material.registry_user_info_file_of(principal)
        assert reader.stat().st_mode & 0o077 == 0 and reader.read_text().startswith(f"{principal}:")
        environment = material.environment(principal)
        assert environment["ONFINISH_REGISTRY_BASIC_AUTH_USER_INFO_FILE"] == str(reader)
        assert environment["ONFINISH_PRODUCER_AUTO_REGISTER"] == "false"
        assert environment["ONFINISH_PROCESSOR_AUTO_REGISTER"] == "false"
    admin = material.environment("admin")
    assert admin["ONFINISH_REGISTRY_BASIC_AUTH_USER_INFO_FILE"] == str(material.registry_user_info_file)
    assert "ONFINISH_PRODUCER_AUTO_REGISTER" not in admin
