"""The secured local stack's material: a certificate authority, certificates, principals and passwords.

Made at the first `onfinish stack up --secure` with the `cryptography` package and kept under
`<stack home>/security/` (the stack home is git-ignored): a CA, a server certificate for the
broker and the registry (valid for the stack's host, 127.0.0.1 and localhost), a client certificate
for mutual TLS, and a random password for each principal, each in a file of its own (mode 0600) so
that clients read them through `ONFINISH_..._FILE` variables and no password is ever in a command
line or the environment.

The principals and what each may do (the ACLs `onfinish stack up --secure` creates):
- `admin`: super user; provisions topics and ACLs.
- `sdk`: writes onfinish.raw, nothing else.
- `processor`: reads onfinish.raw in its group, writes the output topics and the DLQ, and owns its
  Faust topics (changelogs, the assignor's leader topic), all named after its app id.
- `sink`: reads the output topics and the DLQ in its groups.

The registry has the same principals: `admin` is its schema admin (the bootstrap user `onfinish`,
who registers the contract and sets FULL_TRANSITIVE), and `sdk`, `processor` and `sink` are
read-only users, so the stages run with auto-registration off (decision 0014).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from onfinish.settings import KafkaSettings, RegistrySettings, StackSettings

SCRAM_MECHANISM = "SCRAM-SHA-512"
PRINCIPALS = ("admin", "sdk", "processor", "sink")
# The registry's read-only users: every principal but its schema admin.
REGISTRY_READERS = ("sdk", "processor", "sink")
REGISTRY_USER = "onfinish"
CERTIFICATE_DAYS = 825  # the longest validity clients accept for a server certificate


@dataclass(frozen=True)
class Acl:
    """One ACL binding: principal, resource (type, name, pattern) and operation, all allowed."""

    principal: str
    resource_type: str  # TOPIC, GROUP, BROKER (the cluster, in confluent-kafka's names)
    name: str
    pattern: str  # LITERAL or PREFIXED
    operation: str  # READ, WRITE, DESCRIBE, CREATE, ALL, ...


def acls(topic_prefix: str, processor_app_id: str, sink_group_prefix: str) -> list[Acl]:
    """Least privilege per principal (DESIGN.md): what each stage needs and nothing more."""
    outputs = [f"{topic_prefix}.{suffix}" for suffix in ("enriched", "windows", "sessions", "alerts")]
    dlq = f"{topic_prefix}.dlq"
    raw = f"{topic_prefix}.raw"
    rules = [
        Acl("sdk", "TOPIC", raw, "LITERAL", "WRITE"),
        Acl("sdk", "TOPIC", raw, "LITERAL", "DESCRIBE"),
        # The idempotent producer needs IdempotentWrite on the cluster (Kafka < 3.0; harmless after).
        Acl("sdk", "BROKER", "kafka-cluster", "LITERAL", "IDEMPOTENT_WRITE"),
        Acl("processor", "TOPIC", raw, "LITERAL", "READ"),
        Acl("processor", "TOPIC", raw, "LITERAL", "DESCRIBE"),
        Acl("processor", "GROUP", processor_app_id, "LITERAL", "READ"),
        Acl("processor", "BROKER", "kafka-cluster", "LITERAL", "IDEMPOTENT_WRITE"),
        # Faust's own topics: <app id>-<table>-changelog and <app id>-__assignor-__leader.
        Acl("processor", "TOPIC", f"{processor_app_id}-", "PREFIXED", "ALL"),
        Acl("sink", "GROUP", f"{sink_group_prefix}-", "PREFIXED", "READ"),
    ]
    for topic in [*outputs, dlq]:
        rules += [
            Acl("processor", "TOPIC", topic, "LITERAL", "WRITE"),
            Acl("processor", "TOPIC", topic, "LITERAL", "DESCRIBE"),
            Acl("sink", "TOPIC", topic, "LITERAL", "READ"),
            Acl("sink", "TOPIC", topic, "LITERAL", "DESCRIBE"),
        ]
    return rules


class StackSecurity:
    """The secured stack's files under `<home>/security`, made once and then reused."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.root = settings.home / "security"

    # --- paths ----------------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.root / "ca-key.pem"

    @property
    def server_cert_file(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key_file(self) -> Path:
        return self.root / "server-key.pem"

    @property
    def server_keystore_file(self) -> Path:
        """Key and certificate chain in one PEM file, as Kafka's PEM keystore wants them."""
        return self.root / "server-keystore.pem"

    @property
    def client_cert_file(self) -> Path:
        return self.root / "client.pem"

    @property
    def client_key_file(self) -> Path:
        return self.root / "client-key.pem"

    def password_file(self, principal: str) -> Path:
        return self.root / "secrets" / f"kafka-{principal}.password"

    @property
    def registry_user_info_file(self) -> Path:
        """The schema admin's `user:password` (the registry's bootstrap user)."""
        return self.root / "secrets" / "registry.user-info"

    def registry_user_info_file_of(self, principal: str) -> Path:
        """`principal`'s `user:password` on the registry: the admin's, or a read-only user's."""
        if principal == "admin":
            return self.registry_user_info_file
        return self.root / "secrets" / f"registry-{principal}.user-info"

    def password(self, principal: str) -> str:
        return self.password_file(principal).read_text()

    def registry_password(self) -> str:
        return self.registry_user_info_file.read_text().split(":", 1)[1]

    # --- making them ------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Make whatever is missing: the CA and certificates, the passwords. Idempotent."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        if not self.ca_file.exists():
            self._make_certificates()
        for principal in PRINCIPALS:
            if not self.password_file(principal).exists():
                _write_secret(self.password_file(principal), secrets.token_urlsafe(24))
        if not self.registry_user_info_file.exists():
            _write_secret(self.registry_user_info_file, f"{REGISTRY_USER}:{secrets.token_urlsafe(24)}")
        for principal in REGISTRY_READERS:
            path = self.registry_user_info_file_of(principal)
            if not path.exists():
                _write_secret(path, f"{principal}:{secrets.token_urlsafe(24)}")
        (self.root / "README").write_text(
            "Made by `onfinish stack up --secure` for the local stack only; never commit these files.\n"
        )

    def _make_certificates(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onfinish local stack CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(
            common_name: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
        ) -> tuple[bytes, bytes]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
                )
            )
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            certificate = builder.sign(ca_key, hashes.SHA256())
            # PKCS#8: the only unencrypted key format Kafka's PEM keystore reads.
            key_pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            return certificate.public_bytes(serialization.Encoding.PEM), key_pem

        hosts = {self.settings.host, "127.0.0.1", "localhost"}
        names: list[x509.GeneralName] = []
        for host in sorted(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        server_cert, server_key = leaf("onfinish-local-server", ExtendedKeyUsageOID.SERVER_AUTH, names)
        client_cert, client_key = leaf("onfinish-local-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
        ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        _write_secret(
            self.ca_key_file,
            ca_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
        )
        _write_secret(self.server_key_file, server_key.decode())
        _write_secret(self.server_keystore_file, (server_key + server_cert + ca_pem).decode())
        _write_secret(self.client_key_file, client_key.decode())
        self.server_cert_file.write_bytes(server_cert + ca_pem)
        self.client_cert_file.write_bytes(client_cert)
        self.ca_file.write_bytes(ca_pem)  # last: its presence says the set is complete

    # --- what clients use ------------------------------------------------------------------------

    def kafka_environment(self, principal: str) -> dict[str, str]:
        """ONFINISH_KAFKA_* variables of a client that authenticates as `principal` (no secret:
        the password is named by its file)."""
        return {
            "ONFINISH_KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap,
            "ONFINISH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ONFINISH_KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "ONFINISH_KAFKA_SASL_USERNAME": principal,
            "ONFINISH_KAFKA_SASL_PASSWORD_FILE": str(self.password_file(principal)),
            "ONFINISH_KAFKA_SSL_CA_FILE": str(self.ca_file),
        }

    def registry_environment(self, principal: str = "admin") -> dict[str, str]:
        """ONFINISH_REGISTRY_* variables of `principal`; a read-only one's also turn the stage's
        auto-registration off (it could not register: the schema admin does)."""
        environment = {
            "ONFINISH_REGISTRY_URL": self.settings.registry_url,
            "ONFINISH_REGISTRY_BASIC_AUTH_USER_INFO_FILE": str(self.registry_user_info_file_of(principal)),
            "ONFINISH_REGISTRY_CA_FILE": str(self.ca_file),
        }
        if principal in REGISTRY_READERS:
            environment["ONFINISH_PRODUCER_AUTO_REGISTER"] = "false"
            environment["ONFINISH_PROCESSOR_AUTO_REGISTER"] = "false"
        return environment

    def environment(self, principal: str) -> dict[str, str]:
        """Every variable a process needs to run as `principal` against the secured stack."""
        return {**self.kafka_environment(principal), **self.registry_environment(principal)}

    def kafka_settings(self, principal: str, base: KafkaSettings | None = None) -> KafkaSettings:
        from pydantic import SecretStr

        return (base or KafkaSettings()).model_copy(
            update={
                "bootstrap_servers": self.settings.kafka_bootstrap,
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": SCRAM_MECHANISM,
                "sasl_username": principal,
                "sasl_password": SecretStr(self.password(principal)),
                "ssl_ca_file": self.ca_file,
            }
        )

    def registry_settings(
        self, base: RegistrySettings | None = None, principal: str = "admin"
    ) -> RegistrySettings:
        from pydantic import SecretStr

        return (base or RegistrySettings()).model_copy(
            update={
                "url": self.settings.registry_url,
                "basic_auth_user_info": SecretStr(self.registry_user_info_file_of(principal).read_text()),
                "ca_file": self.ca_file,
            }
        )


def _write_secret(path: Path, text: str) -> None:
    """Write a file only its owner may read, created so from the start (no moment at 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def shell_exports(environment: Mapping[str, str]) -> str:
    """`export NAME=value` lines for a shell (values are paths and names, never secrets)."""
    import shlex

    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in environment.items())


def describe(security: StackSecurity) -> str:
    """A JSON summary for `stack status --secure`: files and principals, never a password."""
    return json.dumps(
        {"ca": str(security.ca_file), "principals": list(PRINCIPALS), "registry_user": REGISTRY_USER}
    )


def grant_registry_readers(security: StackSecurity) -> int:
    """Create (or bring up to date) the registry's read-only users through its admin API as the
    schema admin; returns how many. Idempotent: a user that exists gets its password from its file
    again, so a stack home whose secrets were made anew still matches the registry's data."""
    import base64
    import ssl
    import urllib.error
    import urllib.request

    from onfinish.errors import StackError

    context = ssl.create_default_context(cafile=str(security.ca_file))
    token = base64.b64encode(security.registry_user_info_file.read_bytes()).decode()
    base = security.settings.registry_url

    def call(method: str, path: str, body: object | None = None) -> tuple[int, object]:
        request = urllib.request.Request(  # noqa: S310 (the stack's own https URL)
            f"{base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, None

    for principal in REGISTRY_READERS:
        user, password = security.registry_user_info_file_of(principal).read_text().split(":", 1)
        status, _ = call(
            "POST",
            "/admin/users",
            {"username": user, "password": password, "role": "readonly", "enabled": True},
        )
        if status == 409:  # there already: make its password and role the ones we hold
            _, listing = call("GET", "/admin/users")
            users = listing.get("users", []) if isinstance(listing, dict) else []
            ids = [entry["id"] for entry in users if entry.get("username") == user]
            status = (
                0
                if not ids
                else call(
                    "PUT",
                    f"/admin/users/{ids[0]}",
                    {"password": password, "role": "readonly", "enabled": True},
                )[0]
            )
        if status not in (200, 201):
            raise StackError(
                f"creating the registry's read-only user {user} failed (HTTP {status}): check that "
                "the registry runs with authentication on (onfinish stack up --secure)"
            )
    return len(REGISTRY_READERS)


def grant_acls(admin_settings: KafkaSettings) -> int:
    """Create every principal's ACLs (creating one that exists is harmless); returns how many."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    from onfinish.errors import StackError
    from onfinish.processors.settings import ProcessorSettings
    from onfinish.security import librdkafka_config
    from onfinish.sinks.settings import SinkSettings

    rules = acls(admin_settings.topic_prefix, ProcessorSettings().app_id, SinkSettings().group_prefix)
    bindings = [
        AclBinding(
            ResourceType[rule.resource_type],
            rule.name,
            ResourcePatternType[rule.pattern],
            f"User:{rule.principal}",
            "*",
            AclOperation[rule.operation],
            AclPermissionType.ALLOW,
        )
        for rule in rules
    ]
    admin = AdminClient({**librdkafka_config(admin_settings), "log_level": 2})
    for binding, future in admin.create_acls(
        bindings, request_timeout=admin_settings.request_timeout_s
    ).items():
        try:
            future.result()
        except KafkaException as exc:
            raise StackError(f"creating the ACL {binding} failed: {exc.args[0].str()}") from None
    return len(bindings)
