"""ClickHouse for onfinish, reached only through clickhouse-connect.

The embedded default is the real ClickHouse engine in-process (chDB) on a directory in the stack
home (`chdb:///<dir>`); an `http(s)://` DSN reaches a ClickHouse server through the same code.
clickhouse-connect is imported here, on demand, so nothing light (the producer SDK) pays for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from onfinish.errors import AccessDenied, ConfigurationError
from onfinish.security import clickhouse_connect_options
from onfinish.settings import ClickHouseSettings, StackSettings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


def connect(settings: ClickHouseSettings, stack: StackSettings, *, create_database: bool = True) -> Client:
    """A clickhouse-connect client for the configured DSN, with onfinish's database selected."""
    try:
        import clickhouse_connect
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigurationError("ClickHouse needs the sinks extra: pip install 'onfinish[sinks]'") from exc
    dsn = settings.resolved_dsn(stack)
    if settings.dsn is None:
        stack.clickhouse_dir.mkdir(parents=True, exist_ok=True)
    try:
        client = clickhouse_connect.get_client(dsn=dsn, **clickhouse_connect_options(settings))
    except Exception as exc:
        refusal = _refusal(str(exc))
        if refusal is not None:
            raise AccessDenied("clickhouse", f"{settings.display_dsn(stack)} {refusal}") from None
        raise
    if create_database:
        client.command(f"CREATE DATABASE IF NOT EXISTS `{settings.database}`")
    client.database = settings.database
    return client


def trust_for_embedded_fetches(ca_file: Path, directory: Path) -> None:
    """Let embedded ClickHouse (chDB) verify a registry certificate signed by `ca_file`.

    ClickHouse fetches writer schemas itself (AvroConfluent) through OpenSSL, whose default trust
    comes from SSL_CERT_FILE; chDB has no server configuration to name a CA in. The bundle written
    here is the system's CAs plus `ca_file`, so every other verification in this process still
    trusts what it trusted before. A ClickHouse server is configured in its own openSSL section
    instead (docs/security.md).
    """
    import ssl

    system = Path(ssl.get_default_verify_paths().openssl_cafile)
    bundle = directory / "ca-bundle.pem"
    directory.mkdir(parents=True, exist_ok=True)
    parts = [system.read_text()] if system.is_file() else []
    bundle.write_text("\n".join([*parts, ca_file.read_text()]))
    os.environ["SSL_CERT_FILE"] = str(bundle)


def _refusal(text: str) -> str | None:
    """Why a ClickHouse server refused us, when waiting cannot mend it (never the password)."""
    if "AUTHENTICATION_FAILED" in text or "Code: 516" in text or "Authentication failed" in text:
        return "refused the user: check ONFINISH_CLICKHOUSE_USER / _PASSWORD"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "presented a certificate no configured CA signed: check ONFINISH_CLICKHOUSE_CA_FILE"
    return None


def server_version(client: Client) -> str:
    return str(client.command("SELECT version()"))
