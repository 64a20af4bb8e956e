"""The local schema registry: AxonOps Schema Registry, a Confluent-API-compatible server in Go.

It keeps its schemas in the stack's PostgreSQL, so schema ids stay the same across restarts. Its
configuration file is written as JSON, which every YAML parser (the registry's included) reads.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from collections.abc import Mapping, Sequence

from onfinish.errors import ProvisioningError
from onfinish.stack.component import Component
from onfinish.stack.install import registry_binary
from onfinish.stack.postgres import REGISTRY_DATABASE, SUPERUSER
from onfinish.stack.security import REGISTRY_USER, StackSecurity


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
            "security": self._security() if s.secure else {"auth": {"enabled": False}},
        }

    def _security(self) -> dict[str, object]:
        """TLS with the stack's server certificate, and HTTP basic auth with roles: the schema admin
        is created on the registry's first start (its bootstrap user) with the password taken from
        the environment (the registry expands ${...} in its configuration), so the file on disk
        holds no secret; the read-only users are added through its admin API at `stack up`."""
        security = StackSecurity(self.settings)
        return {
            "tls": {
                "enabled": True,
                "cert_file": str(security.server_cert_file),
                "key_file": str(security.server_key_file),
                "min_version": "TLS1.2",
            },
            "auth": {
                "enabled": True,
                "methods": ["basic"],
                "basic": {"realm": "onfinish"},
                "bootstrap": {
                    "enabled": True,
                    "username": REGISTRY_USER,
                    "password": "${ONFINISH_STACK_REGISTRY_PASSWORD}",
                },
                # Roles on: the bootstrap user is the schema admin (super_admin); the stages' users
                # are read-only (onfinish/stack/security.py), so only the admin step registers.
                "rbac": {"enabled": True, "default_role": "readonly"},
            },
        }

    def environment(self) -> Mapping[str, str] | None:
        if not self.settings.secure:
            return None
        import os

        return {
            **os.environ,
            "ONFINISH_STACK_REGISTRY_PASSWORD": StackSecurity(self.settings).registry_password(),
        }

    def prepare(self) -> None:
        if self.settings.secure:
            StackSecurity(self.settings).ensure()
        (self.home / "config.yaml").write_text(json.dumps(self.config(), indent=2))

    def command(self) -> Sequence[str]:
        binary = registry_binary(self.settings)
        if not binary.installed:
            raise ProvisioningError(f"{binary.name} is not installed: run `onfinish stack install`")
        return [str(binary.path), "-config", str((self.home / "config.yaml").resolve())]

    def is_healthy(self) -> bool:
        request = urllib.request.Request(f"{self.settings.registry_url}/config")  # noqa: S310
        context = None
        if self.settings.secure:
            security = StackSecurity(self.settings)
            context = ssl.create_default_context(cafile=str(security.ca_file))
            token = base64.b64encode(security.registry_user_info_file.read_bytes()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
            return response.status == 200 and "compatibilityLevel" in json.load(response)
