"""Schema ids of the contract's record types, from the registry, remembered on disk.

The Confluent wire format frames each value with the id the registry gave its schema. The SDK asks
for the ids once (registering the contract's schemas if allowed) and keeps them in the spool
directory, so a process that restarts while the registry is down can still produce.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from confluent_kafka.schema_registry import SchemaRegistryClient

from onfinish.errors import OnfinishError
from onfinish.schemas.contract import RECORD_TYPES
from onfinish.schemas.wire import framing, registry_client, schema_id_for, schema_id_of
from onfinish.settings import RegistrySettings

log = logging.getLogger(__name__)


class SchemaIds:
    """Resolves and caches the schema id of each record kind for one topic."""

    def __init__(
        self, registry: RegistrySettings, topic: str, cache_file: Path, *, auto_register: bool
    ) -> None:
        self.registry = registry
        self.topic = topic
        self.cache_file = cache_file
        self.auto_register = auto_register
        self._client: SchemaRegistryClient | None = None
        self._prefixes: dict[int, bytes] = {}
        self._load()

    def _cache_key(self, kind: int) -> str:
        record_type = RECORD_TYPES[kind]
        return f"{self.registry.url}|{record_type.subject(self.topic)}|{record_type.schema_str}"

    def _load(self) -> None:
        try:
            cached = json.loads(self.cache_file.read_text())
        except (FileNotFoundError, ValueError):
            return
        for kind in range(len(RECORD_TYPES)):
            schema_id = cached.get(self._cache_key(kind))
            if isinstance(schema_id, int):
                self._prefixes[kind] = framing(schema_id)

    def _save(self) -> None:
        cached = {self._cache_key(kind): schema_id_of(prefix) for kind, prefix in self._prefixes.items()}
        tmp = self.cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached))
        tmp.replace(self.cache_file)

    def prefix(self, kind: int) -> bytes | None:
        """Magic byte and schema id for `kind`, or None while the registry cannot be asked."""
        prefix = self._prefixes.get(kind)
        if prefix is not None:
            return prefix
        record_type = RECORD_TYPES[kind]
        subject = record_type.subject(self.topic)
        try:
            if self._client is None:
                # One quick attempt: the worker must get back to draining the hand-off queue into the
                # spool, and it retries on its own back-off. The client's default retries sleep.
                self._client = registry_client(self.registry, quick=True)
            schema_id = schema_id_for(self._client, record_type, subject, auto_register=self.auto_register)
        except Exception as exc:
            # Events wait in the spool either way: the registry away, or (auto-registration off)
            # the schema admin has not registered the contract yet. The reason says which.
            log.warning(
                "schema id unavailable; events stay spooled",
                # Only onfinish's own reasons are quoted: they are written to name no secret.
                extra={
                    "subject": subject,
                    "error": type(exc).__name__,
                    "reason": str(exc) if isinstance(exc, OnfinishError) else "",
                },
            )
            return None
        prefix = framing(schema_id)
        self._prefixes[kind] = prefix
        self._save()
        return prefix
