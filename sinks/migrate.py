"""Versioned ClickHouse migrations, applied idempotently when a sink starts.

The migrations are the numbered ``migrations/NNNN_name.sql`` files shipped inside this package.
Each is rendered (its placeholders expanded, see :func:`render`), split into statements, run one
statement at a time (clickhouse-connect's ``command`` runs one) and then recorded in
``schema_migrations`` with the checksum of its rendered text. A second start applies nothing; a
migration whose text changed after it was applied is refused, because the database no longer
matches the file. Statements are ``CREATE ... IF NOT EXISTS``, so a migration interrupted half-way
runs again from its start.

Placeholders are part of the schema, not of the deployment: ``{{bucket_count}}`` and
``{{quantile(<counts>, <q>)}}`` come from the histogram grid, which stored counts depend on. The
events retention is deployment configuration, so it is not a placeholder (a new retention would
change the checksum): :func:`apply_events_ttl` sets it after the migrations, and only when the
table's TTL differs from the one asked for.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING

from onfinish.errors import ConfigurationError
from onfinish.schemas.histogram_grid import DEFAULT_GRID

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

MIGRATIONS_TABLE = "schema_migrations"
EVENTS_TABLE = "events"
DEFAULT_EVENTS_TTL_DAYS = 90

_CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
SETTINGS non_replicated_deduplication_window = 1000
"""

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_QUANTILE = re.compile(r"^\s*quantile\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,\s*([0-9]*\.?[0-9]+)\s*\)\s*$")
_TTL_DAYS = re.compile(
    r"TTL\s+toDateTime\(finished_at\)\s*\+\s*(?:toIntervalDay\((\d+)\)|INTERVAL\s+(\d+)\s+DAY)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Migration:
    """One numbered migration file, rendered."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The statements of the migration, in order, without their semicolons.

        A statement ends at a line whose last character is a semicolon, outside a ``--`` comment
        line; a semicolon inside a line (in a string literal, say) does not end it. Pieces that are
        only comments are dropped.
        """
        statements: list[str] = []
        lines: list[str] = []
        for line in [*self.sql.splitlines(), ";"]:
            stripped = line.rstrip()
            if stripped.endswith(";") and not stripped.lstrip().startswith("--"):
                lines.append(stripped.removesuffix(";"))
                statement = "\n".join(lines).strip()
                if _has_code(statement):
                    statements.append(statement)
                lines = []
            else:
                lines.append(line)
        return statements


def apply_migrations(client: Client, *, events_ttl_days: int = DEFAULT_EVENTS_TTL_DAYS) -> list[str]:
    """Apply the migrations not yet recorded in the client's database, then the events retention.

    Returns the names of the migrations applied, in order (empty when the database was up to
    date). Raises ConfigurationError when an applied migration's file has changed since.
    """
    if events_ttl_days < 1:
        raise ConfigurationError(f"events_ttl_days must be at least 1, not {events_ttl_days}")
    client.command(_CREATE_MIGRATIONS_TABLE)
    applied = _applied_checksums(client)
    names = []
    for migration in load_migrations():
        recorded = applied.get(migration.version)
        if recorded is not None:
            if recorded != migration.checksum:
                raise ConfigurationError(
                    f"migration {migration.name} was applied with checksum {recorded}, but its file now has "
                    f"{migration.checksum}: never edit an applied migration, add a new one"
                )
            continue
        for statement in migration.statements():
            client.command(statement)
        client.insert(
            MIGRATIONS_TABLE,
            [[migration.version, migration.name, migration.checksum, datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
        )
        names.append(migration.name)
    # Versions recorded without a file here were applied by a newer onfinish; the tables they
    # changed stay readable by this one, so an older worker may still start.
    apply_events_ttl(client, events_ttl_days)
    return names


def apply_events_ttl(client: Client, days: int) -> bool:
    """Make the events table keep rows ``days`` days after finished_at; True when it changed.

    ``MODIFY TTL`` rewrites the TTL information of every existing part, so it runs only when the
    table's current TTL differs, which keeps every start after the first free.
    """
    create = str(
        client.command(
            "SELECT create_table_query FROM system.tables "
            "WHERE database = currentDatabase() AND name = {table:String}",
            parameters={"table": EVENTS_TABLE},
        )
    )
    match = _TTL_DAYS.search(create)
    if match is not None and int(match.group(1) or match.group(2)) == days:
        return False
    client.command(
        f"ALTER TABLE {EVENTS_TABLE} MODIFY TTL toDateTime(finished_at) + INTERVAL {int(days)} DAY"
    )
    return True


def load_migrations() -> list[Migration]:
    """The packaged migrations, rendered, by version."""
    folder = resources.files("onfinish.sinks").joinpath("migrations")
    migrations = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        name = entry.name.removesuffix(".sql")
        migrations.append(
            Migration(int(match.group(1)), name, render(entry.read_text(encoding="utf-8"), name))
        )
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    if len(versions) != len(set(versions)):
        raise ConfigurationError(f"two migrations share a version number: {sorted(versions)}")
    return migrations


def render(template: str, name: str = "migration") -> str:
    """Expand the schema placeholders of a migration's text.

    ``{{bucket_count}}`` is the length of every histogram counts array; ``{{quantile(c, q)}}`` is the
    q-quantile of the Array(UInt64) counts ``c`` (NULL when empty), as quantile_from_counts gives it.
    """

    def expand(match: re.Match[str]) -> str:
        placeholder = match.group(1).strip()
        if placeholder == "bucket_count":
            return str(DEFAULT_GRID.bucket_count)
        quantile = _QUANTILE.match(placeholder)
        if quantile is not None:
            return DEFAULT_GRID.clickhouse_quantile_expression(quantile.group(1), float(quantile.group(2)))
        raise ConfigurationError(f"migration {name} has an unknown placeholder {{{{{placeholder}}}}}")

    return _PLACEHOLDER.sub(expand, template)


def _applied_checksums(client: Client) -> dict[int, str]:
    result = client.query("SELECT version, checksum FROM schema_migrations FINAL")
    return {int(version): str(checksum) for version, checksum in result.result_rows}


def _has_code(piece: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in piece.splitlines())
