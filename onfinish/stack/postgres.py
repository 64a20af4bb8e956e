"""The PostgreSQL server that stores the schema registry's schemas, so ids survive a restart.

It is Debian's PostgreSQL, run by the stack from a data directory in the stack home and reachable
over TCP on loopback only (no Unix socket, whose path length would depend on where the project is).
PostgreSQL refuses to run as root; when we are root, it runs in a user namespace where it has an
ordinary uid, which needs no second account and no change to the project directory's ownership.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from onfinish.errors import ComponentStartError
from onfinish.stack.component import Component
from onfinish.stack.install import postgres_bin_dir

SUPERUSER = "onfinish"
REGISTRY_DATABASE = "schemaregistry"


def _unprivileged_prefix() -> list[str]:
    """Run as an ordinary uid when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return []
    for account in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(account)
        except KeyError:
            continue
        return ["unshare", "--user", f"--map-user={entry.pw_uid}", f"--map-group={entry.pw_gid}"]
    return ["unshare", "--user", "--map-user=65534", "--map-group=65534"]


class PostgresServer(Component):
    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to disconnect.
    stop_signal = signal.SIGINT

    @property
    def ports(self) -> Sequence[int]:
        return (self.settings.postgres_port,)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def _bin(self, tool: str) -> str:
        return str(postgres_bin_dir(self.settings) / tool)

    def prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        result = subprocess.run(
            [
                *_unprivileged_prefix(),
                self._bin("initdb"),
                "-D",
                str(self.data_dir.resolve()),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text(result.stdout + result.stderr)
            raise ComponentStartError(self.name, "initdb failed", self.log_path)

    def command(self) -> Sequence[str]:
        return [
            *_unprivileged_prefix(),
            self._bin("postgres"),
            "-D",
            str(self.data_dir.resolve()),
            "-p",
            str(self.settings.postgres_port),
            "-c",
            f"listen_addresses={self.settings.host}",
            "-c",
            "unix_socket_directories=",
        ]

    def _psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                self._bin("psql"),
                "-h",
                self.settings.host,
                "-p",
                str(self.settings.postgres_port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        if result.returncode != 0:
            raise ComponentStartError(self.name, f"query failed: {result.stderr.strip()}", self.log_path)
        return result.stdout.strip()

    def is_healthy(self) -> bool:
        return self._psql("SELECT 1") == "1"

    def after_start(self) -> None:
        exists = f"SELECT 1 FROM pg_database WHERE datname = '{REGISTRY_DATABASE}'"  # noqa: S608 - a constant
        if self._psql(exists) != "1":
            self._psql(f"CREATE DATABASE {REGISTRY_DATABASE}")
