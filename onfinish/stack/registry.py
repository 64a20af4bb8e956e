"""The local schema registry: AxonOps Schema Registry, a Confluent-API-compatible server in Go.

It keeps its schemas in the stack's PostgreSQL, so schema ids stay the same across restarts. Its
configuration file is written as JSON, which every YAML parser (the registry's included) reads.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping, Sequence

from onfinish.errors import ProvisioningError
from onfinish.stack.component import Component
from onfinish.stack.install import registry_binary
from onfinish.stack.postgres import REGISTRY_DATABASE, SUPERUSER


class SchemaRegistryServer(Component):
    name = "registry"

    @property
    def ports(self) -> Sequence[int]:
        return (self.settings.registry_port,)

    @property
    def address(self) -> str:
        return self.settings.registry_url

    def config(self) -> Mapping[str, object]:
        s = self.settings
        return {
            "server": {"host": s.host, "port": s.registry_port},
            "storage": {
                "type": "postgresql",
                "postgresql": {
                    "host": s.host,
                    "port": s.postgres_port,
                    "database": REGISTRY_DATABASE,
                    # Trust authentication on loopback; the driver still wants a non-empty password.
                    "user": SUPERUSER,
                    "password": "local",
                    "ssl_mode": "disable",
                },
            },
            # Confluent's default; the project sets stricter levels per subject (FULL_TRANSITIVE on raw).
            "compatibility": {"default_level": "BACKWARD"},
            "logging": {"level": "info", "format": "json"},
            "security": {"auth": {"enabled": False}},
        }

    def prepare(self) -> None:
        (self.home / "config.yaml").write_text(json.dumps(self.config(), indent=2))

    def command(self) -> Sequence[str]:
        binary = registry_binary(self.settings)
        if not binary.installed:
            raise ProvisioningError(f"{binary.name} is not installed: run `onfinish stack install`")
        return [str(binary.path), "-config", str((self.home / "config.yaml").resolve())]

    def is_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.settings.registry_url}/config", timeout=2) as response:  # noqa: S310
            return response.status == 200 and "compatibilityLevel" in json.load(response)
