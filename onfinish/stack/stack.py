"""The whole local stack: install, up, down and status, in dependency order.

PostgreSQL comes before the registry that stores its schemas in it; Kafka is independent; with
alerting enabled, the webhook receiver comes before the Alertmanager that notifies it. `up` is
idempotent (a running component is left alone) and serialised per stack home by a file lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from onfinish.alerting.settings import AlertingSettings
from onfinish.schemas.governance import Registration, register
from onfinish.settings import ClickHouseSettings, KafkaSettings, RegistrySettings, StackSettings
from onfinish.stack import install, process
from onfinish.stack.alertmanager import AlertmanagerServer, WebhookReceiverServer
from onfinish.stack.component import Component, ComponentStatus, StartResult
from onfinish.stack.kafka import KafkaBroker
from onfinish.stack.postgres import PostgresServer
from onfinish.stack.registry import SchemaRegistryServer
from onfinish.stack.security import StackSecurity, grant_acls, grant_registry_readers
from onfinish.stack.topics import TopicResult, provision_topics

# Reports one step of a long operation: (what is happening, whether it is done).
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class UpReport:
    started: list[StartResult] = field(default_factory=list)
    topics: list[TopicResult] = field(default_factory=list)
    registrations: list[Registration] = field(default_factory=list)
    clickhouse: str = ""
    clickhouse_version: str = ""
    acls: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class InstallStep:
    artefact: install.Artefact
    run: Callable[[StackSettings], install.Artefact]


class Stack:
    """Kafka, the schema registry (with PostgreSQL), embedded ClickHouse and, with alerting enabled,
    Alertmanager and its webhook receiver, for one stack home."""

    def __init__(
        self,
        settings: StackSettings | None = None,
        kafka: KafkaSettings | None = None,
        clickhouse: ClickHouseSettings | None = None,
        alerting: AlertingSettings | None = None,
    ) -> None:
        self.settings = settings or StackSettings()
        self.security = StackSecurity(self.settings)
        self.alerting = alerting or AlertingSettings()
        # The stack's own broker is the one its topics are provisioned on (as its admin, secured).
        kafka = (kafka or KafkaSettings()).model_copy(
            update={"bootstrap_servers": self.settings.kafka_bootstrap}
        )
        if self.settings.secure:
            self.security.ensure()
            kafka = self.security.kafka_settings("admin", kafka)
        self.kafka_settings = kafka
        self.clickhouse_settings = clickhouse or ClickHouseSettings()
        self.registry_settings = RegistrySettings(url=self.settings.registry_url)
        if self.settings.secure:
            self.registry_settings = self.security.registry_settings(self.registry_settings)
        self.components: tuple[Component, ...] = (
            PostgresServer(self.settings),
            SchemaRegistryServer(self.settings),
            KafkaBroker(self.settings),
        )
        if self.alerting.enabled:
            self.components += (
                WebhookReceiverServer(self.settings),
                AlertmanagerServer(self.settings, self.alerting),
            )
        self._lock_path = self.settings.home / "run" / "stack.lock"

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def install_steps(self) -> list[InstallStep]:
        steps = [
            InstallStep(install.kafka_libs(self.settings), install.install_kafka),
            InstallStep(install.registry_binary(self.settings), install.install_registry),
        ]
        if self.alerting.enabled:
            steps.append(
                InstallStep(install.alertmanager_binary(self.settings), install.install_alertmanager)
            )
        return steps

    def install(self, progress: Progress = _quiet) -> None:
        """Fetch and build whatever software is missing from the cache."""
        install.postgres_bin_dir(self.settings)
        for step in self.install_steps():
            if not step.artefact.installed:
                progress(f"installing {step.artefact.name}")
                step.run(self.settings)

    def up(self, progress: Progress = _quiet) -> UpReport:
        began = time.monotonic()
        self.install(progress)
        report = UpReport()
        with process.exclusive_lock(self._lock_path):
            for component in self.components:
                progress(f"starting {component.name}")
                report.started.append(component.start())
        progress("provisioning topics")
        report.topics = provision_topics(self.kafka_settings)
        progress("registering the contract (FULL_TRANSITIVE)")
        report.registrations = register(self.registry_settings, self.kafka_settings.topic_prefix)
        if self.settings.secure:
            progress("granting each principal its ACLs and its read-only registry user")
            report.acls = grant_acls(self.kafka_settings)
            grant_registry_readers(self.security)
        progress("opening ClickHouse")
        report.clickhouse, report.clickhouse_version = self._check_clickhouse()
        report.seconds = time.monotonic() - began
        return report

    def _check_clickhouse(self) -> tuple[str, str]:
        from onfinish.sinks import clickhouse

        client = clickhouse.connect(self.clickhouse_settings, self.settings)
        try:
            return self.clickhouse_settings.display_dsn(self.settings), clickhouse.server_version(client)
        finally:
            client.close()

    def down(self, progress: Progress = _quiet) -> list[str]:
        """Stop, in reverse order, every process this stack home started. Returns their names."""
        stopped = []
        with process.exclusive_lock(self._lock_path):
            for component in reversed(self.components):
                progress(f"stopping {component.name}")
                if component.stop():
                    stopped.append(component.name)
        return stopped

    def status(self) -> list[ComponentStatus]:
        return [component.status() for component in self.components]
