"""The local Apache Kafka broker: one node in KRaft mode (broker and controller in one JVM).

Its storage is formatted on first start and kept in the stack home, so topics and offsets survive
`down`/`up`. The class path is the jar set `onfinish stack install` fetched with Maven.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka.admin import AdminClient

from onfinish.errors import ComponentStartError, ProvisioningError
from onfinish.security import librdkafka_config
from onfinish.settings import KafkaSettings
from onfinish.stack import process
from onfinish.stack.component import Component
from onfinish.stack.install import kafka_libs
from onfinish.stack.security import PRINCIPALS, SCRAM_MECHANISM, StackSecurity

_LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka=WARN
log4j.logger.kafka.coordinator=WARN
log4j.logger.state.change.logger=WARN
"""


def java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise ProvisioningError("Kafka needs Java 17 or newer: no `java` on PATH and no JAVA_HOME")
    return found


class KafkaBroker(Component):
    name = "kafka"

    @property
    def ports(self) -> Sequence[int]:
        return (self.settings.kafka_port, self.settings.kafka_controller_port)

    @property
    def data_dir(self) -> Path:
        # A secured broker keeps data of its own: its SCRAM users are written when storage is
        # formatted, so a plain store cannot become a secured one.
        return self.home / ("data-secure" if self.settings.secure else "data")

    @property
    def security(self) -> StackSecurity:
        return StackSecurity(self.settings)

    @property
    def classpath(self) -> str:
        libs = kafka_libs(self.settings)
        if not libs.installed:
            raise ProvisioningError(f"{libs.name} are not installed: run `onfinish stack install`")
        return str(libs.path / "libs" / "*")

    def server_properties(self) -> str:
        s = self.settings
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{s.host}:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{s.host}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir.resolve()),
            # One node: internal topics cannot have more replicas than brokers.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "min.insync.replicas": "1",
            # Topics are provisioned explicitly (onfinish stack up); a typo must not create one.
            "auto.create.topics.enable": "false",
            # A lone consumer should not wait 3 s for peers that will never join.
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": "1",
        }
        if s.secure:
            settings.update(self._secure_properties())
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _secure_properties(self) -> dict[str, str]:
        """Clients reach the broker only over SASL_SSL with SCRAM, and may do only what ACLs allow.

        The controller listener stays PLAINTEXT on the stack's loopback address: KRaft's controller
        cannot authenticate with SCRAM (its users live in the metadata it serves), and the broker
        in this same JVM reaches it as ANONYMOUS, which must therefore be a super user. Clients
        cannot produce or fetch through a controller listener.
        """
        s, security = self.settings, self.security
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="admin" password="{security.password("admin")}";'
        )
        return {
            "listeners": f"SASL_SSL://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
            "advertised.listeners": f"SASL_SSL://{s.host}:{s.kafka_port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(security.server_keystore_file),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(security.ca_file),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:admin;User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }

    def prepare(self) -> None:
        if self.settings.secure:
            self.security.ensure()
        properties = self.home / "server.properties"
        properties.touch(mode=0o600)  # it holds the broker's own password when secured
        properties.write_text(self.server_properties())
        (self.home / "log4j.properties").write_text(_LOG4J)
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = self._random_cluster_id()
        result = subprocess.run(
            [
                *self._java(),
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                cluster_id,
                "-c",
                str(self.home / "server.properties"),
                *self._scram_users(),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            output = result.stdout + result.stderr
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text(output)
            last = output.strip().splitlines()[-1:] or ["no output"]
            raise ComponentStartError(
                self.name, f"formatting KRaft storage failed ({last[0]})", self.log_path
            )

    def _scram_users(self) -> list[str]:
        """kafka-storage's --add-scram arguments: every principal's SCRAM credential, written into
        the metadata log at format time (the broker's own login needs one before it can serve)."""
        if not self.settings.secure:
            return []
        arguments: list[str] = []
        for principal in PRINCIPALS:
            password = self.security.password(principal)
            arguments += ["--add-scram", f"{SCRAM_MECHANISM}=[name={principal},password={password}]"]
        return arguments

    @staticmethod
    def _random_cluster_id() -> str:
        """16 random bytes in URL-safe base64 without padding, as Kafka's own cluster ids.

        One id in 64 would start with "-", which kafka-storage's argument parser reads as an option
        ("argument --cluster-id/-t: expected one argument"); Kafka's Uuid.randomUuid() draws again
        in that case, and so does this.
        """
        while True:
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if not cluster_id.startswith("-"):
                return cluster_id

    def _java(self) -> list[str]:
        return [
            java_executable(),
            "-cp",
            self.classpath,
            f"-Dlog4j.configuration=file:{(self.home / 'log4j.properties').resolve()}",
        ]

    def client_settings(self) -> KafkaSettings:
        """How the stack itself reaches its broker: as the admin principal when secured."""
        plain = KafkaSettings(bootstrap_servers=self.address, security_protocol="PLAINTEXT")
        return self.security.kafka_settings("admin", plain) if self.settings.secure else plain

    def command(self) -> Sequence[str]:
        return [
            java_executable(),
            f"-Xmx{self.settings.kafka_heap}",
            "-Xms256m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            *self._java()[1:],
            "kafka.Kafka",
            str(self.home / "server.properties"),
        ]

    def is_healthy(self) -> bool:
        if not process.port_is_open(self.settings.host, self.settings.kafka_port):
            return False
        # log_level 2: the probe's own connection errors are expected while the broker starts.
        admin = AdminClient(
            {**librdkafka_config(self.client_settings()), "socket.timeout.ms": 2000, "log_level": 2}
        )
        metadata = admin.list_topics(timeout=2)
        return len(metadata.brokers) > 0
