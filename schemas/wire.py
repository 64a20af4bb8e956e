"""The Confluent wire format and the schema registry: the one place onfinish frames, reads and fetches.

Every Avro value on onfinish's topics is Confluent-framed: a magic byte 0, the writer schema's
registry id in 4 big-endian bytes, then the Avro body. Every stage and command goes through here
to frame a value (`framing`), to read one (`schema_id_of`, then `read_body`), to reach the
registry (`registry_client`) and to learn writer schemas by id (`WriterSchemas`, one cache per
process use); no other module slices the header.

What comes from confluent-kafka's `schema_registry` package and what is kept here, and why:
- The registry client is theirs (`SchemaRegistryClient`); `registry_config` is the one function
  that turns onfinish's settings (URL, TLS, basic auth or bearer token) into its configuration,
  and `clickhouse_registry_url` the URL ClickHouse fetches writer schemas from itself.
- The header is written with their `SchemaId.id_to_bytes` (once per schema id, then reused).
  It is read here with `int.from_bytes`: their `SchemaId.from_bytes` wants a BytesIO and unpacks
  with struct, about 1 µs a record on the processors' path against 0.15 µs, and it raises one
  generic error where the dead-letter contract needs a reason and a message.
- Magic byte 1 (their newer framing with a 16-byte schema GUID) is recognised and refused with
  its own message: onfinish's registry and producers use ids, so a GUID-framed record comes from a
  producer configured otherwise, and its dead letter says so.
- Their Avro deserializer decodes a whole value with schema rules and migrations; onfinish reads
  bodies with fastavro's schemaless reader against the contract's reader schema and needs every
  failure classified (truncated, invalid UTF-8, trailing bytes), so `read_body` stays here.

`describe_validation_error` is the one PII-safe rendering of a pydantic error: locations and
messages, never the values, which may be personal data and end up in dead letters and logs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.serde import SchemaId
from pydantic import ValidationError

from onfinish.errors import AccessDenied, OnfinishError, describe_exception
from onfinish.schemas.contract import RECORD_TYPES_BY_NAME, RecordType
from onfinish.schemas.deadletter import Reason
from onfinish.settings import RegistrySettings

MAGIC_BYTE = 0
"""Confluent framing with a 4-byte schema id: what onfinish writes and reads."""
MAGIC_BYTE_GUID = 1
"""Confluent's newer framing with a 16-byte schema GUID: recognised, and refused with its reason."""
HEADER_BYTES = 5
"""Magic byte and schema id: the Avro body starts here."""
QUICK_TIMEOUT_S = 2.0
"""Longest registry request a worker's hot loop waits for, whatever the configured timeout."""
MAX_MESSAGE_CHARS = 1000


class RegistryUnavailable(OnfinishError):
    """The registry could not be asked: not the record's fault, so the record must wait, not die."""


class SchemaRefused(OnfinishError):
    """The registry refused a schema (an incompatible one holds its subject): not the record's fault
    either, and no wait mends it; a worker stops until an operator does."""


class Refused(Exception):  # a verdict on a record, not a failure of the stage
    """The record cannot enter (or be stored): `reason` (the dead-letter contract's) and `message`
    say why. Raised here for values that cannot be read; stages raise it for their own checks."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


# --- Framing ------------------------------------------------------------------------------------------


def framing(schema_id: int) -> bytes:
    """The header that frames a body written with `schema_id` (magic byte 0 and the id)."""
    return SchemaId("AVRO", schema_id).id_to_bytes()


def frame(schema_id: int, body: bytes) -> bytes:
    """A Confluent-framed value: the header, then the Avro body."""
    return framing(schema_id) + body


def schema_id_of(value: bytes | None) -> int:
    """The schema id that frames `value`; Refused (empty, not framed) otherwise. The body
    starts at HEADER_BYTES."""
    if not value:
        raise Refused(Reason.empty, "the record has no value")
    magic = value[0]
    if magic == MAGIC_BYTE_GUID and len(value) >= 17:
        raise Refused(
            Reason.not_confluent_framed,
            "magic byte 0x01 frames a schema GUID (Confluent's newer framing); onfinish reads "
            "schema ids: produce with the serializer's id framing (magic byte 0x00)",
        )
    if magic != MAGIC_BYTE:
        raise Refused(Reason.not_confluent_framed, f"first byte {magic:#04x}, expected the magic byte 0x00")
    if len(value) < HEADER_BYTES:
        raise Refused(
            Reason.not_confluent_framed,
            f"{len(value)} bytes, shorter than the header (magic byte and schema id)",
        )
    return int.from_bytes(value[1:HEADER_BYTES], "big")


def framing_of(value: bytes | None) -> bytes | None:
    """The header of an id-framed value (magic byte and schema id, as bytes), else None: a cheap key
    for values written with the same schema, for paths that route many values by it."""
    if value and value[0] == MAGIC_BYTE and len(value) >= HEADER_BYTES:
        return value[:HEADER_BYTES]
    return None


def read_body(value: bytes, writer: Any, reader: Any | None, schema_id: int) -> dict[str, Any]:
    """The record in a framed value's body, written with the parsed schema `writer` and resolved to
    `reader` (None: as written); Refused with the reason when the body is not exactly one record."""
    body = io.BytesIO(value)
    body.seek(HEADER_BYTES)
    try:
        datum = fastavro.schemaless_reader(body, writer, reader)
    except UnicodeDecodeError as exc:
        raise Refused(Reason.invalid_encoding, f"invalid UTF-8 in a string: {exc.reason}") from None
    except (EOFError, StopIteration, IndexError) as exc:
        raise Refused(Reason.truncated, f"the body ends early ({type(exc).__name__})") from None
    except Exception as exc:  # fastavro raises assorted errors on garbage; all mean "not decodable"
        raise Refused(Reason.undecodable, describe_exception(exc)) from None
    if body.tell() != len(value):
        raise Refused(
            Reason.undecodable, f"{len(value) - body.tell()} bytes left after the record (schema {schema_id})"
        )
    if not isinstance(datum, dict):
        raise Refused(Reason.undecodable, "the body is not a record")
    return datum


# --- The registry -------------------------------------------------------------------------------------


def registry_config(settings: RegistrySettings, *, quick: bool = False) -> dict[str, Any]:
    """The registry client's configuration from onfinish's settings: the one place it is made.

    `quick`: one attempt of at most QUICK_TIMEOUT_S per call. The client's own retries sleep in the
    caller's thread (a worker's event loop, the SDK's drain thread) while the registry is away;
    those callers retry on their own, asynchronously.
    """
    config: dict[str, Any] = {"url": settings.url, "timeout": settings.timeout_s}
    if quick:
        config.update({"timeout": min(settings.timeout_s, QUICK_TIMEOUT_S), "max.retries": 0})
    if settings.ca_file is not None:
        config["ssl.ca.location"] = str(settings.ca_file)
    if settings.cert_file is not None and settings.key_file is not None:
        config["ssl.certificate.location"] = str(settings.cert_file)
        config["ssl.key.location"] = str(settings.key_file)
    if settings.basic_auth_user_info is not None:
        config["basic.auth.user.info"] = settings.basic_auth_user_info.get_secret_value()
    elif settings.bearer_token is not None:
        config["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        config["bearer.auth.token"] = settings.bearer_token.get_secret_value()
        # The client requires a logical cluster with a static token (Confluent Cloud's lsrc-...);
        # other registries ignore the header it becomes.
        config["bearer.auth.logical.cluster"] = settings.bearer_logical_cluster or "default"
    return config


def registry_client(settings: RegistrySettings, *, quick: bool = False) -> SchemaRegistryClient:
    """A registry client configured from onfinish's settings (`registry_config`)."""
    return SchemaRegistryClient(registry_config(settings, quick=quick))


def clickhouse_registry_url(settings: RegistrySettings) -> str:
    """The registry URL for ClickHouse's `format_avro_schema_registry_url`: ClickHouse fetches writer
    schemas itself and takes basic-auth credentials only as user info in this URL (percent-encoded).
    A bearer token cannot reach it; TLS is verified against ClickHouse's own CA configuration."""
    info = settings.basic_auth_user_info
    if info is None:
        return settings.url
    user, _, password = info.get_secret_value().partition(":")
    parts = urlsplit(settings.url)
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{parts.netloc.rpartition('@')[2]}"))


class RegistryAccessDenied(AccessDenied):
    """The registry refused our credentials (401) or their rights (403), or its certificate is
    signed by no CA we trust: no wait mends it."""

    def __init__(self, reason: str) -> None:
        super().__init__("schema registry", reason)


def check_registry_access(settings: RegistrySettings) -> None:
    """One request that proves the registry can be reached with these credentials, at a worker's
    start: RegistryAccessDenied (401, 403) or RegistryUnavailable, each with one clear reason."""
    client = registry_client(settings, quick=True)
    try:
        client.get_subjects()
    except SchemaRegistryError as exc:
        if exc.http_status_code in (401, 403):
            who = f"as user {settings.user!r}" if settings.user else "with no credentials"
            if settings.bearer_token is not None:
                who = "with the bearer token"
            raise RegistryAccessDenied(
                f"{settings.url} refused access {who} (HTTP {exc.http_status_code}): "
                "check ONFINISH_REGISTRY_BASIC_AUTH_USER_INFO / ONFINISH_REGISTRY_BEARER_TOKEN"
            ) from None
        raise RegistryUnavailable(f"schema registry at {settings.url}: {exc}") from None
    except Exception as exc:  # transport: refused connection, TLS verification
        reason = _reason(exc)
        if "CERTIFICATE_VERIFY_FAILED" in reason:  # an unknown CA: no wait mends it either
            raise RegistryAccessDenied(
                f"TLS to {settings.url} failed: {reason} (check ONFINISH_REGISTRY_CA_FILE)"
            ) from None
        raise RegistryUnavailable(f"schema registry at {settings.url} cannot be reached: {reason}") from None


def _reason(exc: BaseException) -> str:
    """The innermost reason of a transport error (an unknown CA, a refused connection), short."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def schema_text_fetch(client: SchemaRegistryClient) -> Callable[[int], str | None]:
    """Fetches a schema's text by id: None when the registry does not know the id, and
    RegistryUnavailable when it cannot be asked."""

    def fetch(schema_id: int) -> str | None:
        try:
            return str(client.get_schema(schema_id).schema_str)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise RegistryUnavailable(f"schema {schema_id}: {exc}") from exc
        except Exception as exc:  # the client's transport errors
            raise RegistryUnavailable(f"schema {schema_id}: {exc}") from exc

    return fetch


def register(client: SchemaRegistryClient, record_type: RecordType, subject: str) -> int:
    """Register `record_type`'s schema under `subject` (harmless when it is there) and return its id:
    SchemaRefused when the registry will not take it, RegistryUnavailable when it cannot be asked."""
    from confluent_kafka.schema_registry import Schema

    try:
        return int(client.register_schema(subject, Schema(record_type.schema_str, "AVRO")))
    except SchemaRegistryError as exc:
        if exc.http_status_code < 500:  # an incompatible schema, say: waiting mends nothing
            raise SchemaRefused(f"registering {subject}: {exc}") from exc
        raise RegistryUnavailable(f"registering {subject}: {exc}") from exc  # starting up
    except Exception as exc:  # the client's transport errors: the registry is away
        raise RegistryUnavailable(f"registering {subject}: {exc}") from exc


def registered_id(client: SchemaRegistryClient, record_type: RecordType, subject: str) -> int:
    """The id `record_type`'s schema already has under `subject`, found with reads only.

    For principals that may only read the registry (auto-registration off, decision 0014): the
    Confluent client's own `lookup_schema` is a POST to the subject, which registries with roles
    (AxonOps among them) count as a write. So the subject's versions are read, newest first, and
    the first whose schema is the contract's (same JSON, else the same Parsing Canonical Form) gives
    the id. SchemaRefused when no version matches (the schema admin has not registered this
    contract: `onfinish schema register`), RegistryAccessDenied on 401/403, RegistryUnavailable
    when the registry cannot be asked.
    """
    from fastavro.schema import to_parsing_canonical_form

    wanted = json.loads(record_type.schema_str)
    canonical: str | None = None
    try:
        versions = client.get_versions(subject)
        for version in sorted(versions, reverse=True):
            registered = client.get_version(subject, version)
            text, schema_id = registered.schema.schema_str, registered.schema_id
            if text is None or schema_id is None:
                continue
            if json.loads(text) == wanted:
                return int(schema_id)
            canonical = canonical or to_parsing_canonical_form(wanted)
            if to_parsing_canonical_form(json.loads(text)) == canonical:
                return int(schema_id)
    except SchemaRegistryError as exc:
        if exc.http_status_code in (401, 403):
            raise RegistryAccessDenied(
                f"reading {subject} was refused (HTTP {exc.http_status_code}): this principal needs "
                "read rights on the registry's subjects"
            ) from None
        if exc.http_status_code != 404:
            raise RegistryUnavailable(f"reading {subject}: {exc}") from exc
    except Exception as exc:  # the client's transport errors: the registry is away
        raise RegistryUnavailable(f"reading {subject}: {_reason(exc)}") from exc
    raise SchemaRefused(
        f"{subject} holds no version of this onfinish's schema and auto-registration is off: have "
        "the schema admin run `onfinish schema register` (or turn auto-registration on)"
    )


def schema_id_for(
    client: SchemaRegistryClient, record_type: RecordType, subject: str, *, auto_register: bool
) -> int:
    """`record_type`'s id under `subject`: registered if missing when `auto_register`, else found
    with reads only (`registered_id`)."""
    if auto_register:
        return register(client, record_type, subject)
    return registered_id(client, record_type, subject)


@dataclass(frozen=True)
class WriterSchema:
    """A registered schema values were written with: parsed, and the contract record it is, if any.

    `text` is the schema as registered: the processors' native engine plans its reads from it
    (processors/engines.py). Without it, that engine reads only values written with the contract's
    own schema (`parsed` being the record type's) and leaves the others to the Python path.
    """

    record_type: RecordType | None
    parsed: Any
    text: str | None = None


class WriterSchemas:
    """Writer schemas by id, each fetched once: None for an id the registry does not know.

    The fetch raises RegistryUnavailable when the registry cannot be asked; nothing is cached then,
    so the next call asks again.
    """

    def __init__(self, fetch: Callable[[int], str | None]) -> None:
        self._fetch = fetch
        self._cache: dict[int, WriterSchema | None] = {}

    def __call__(self, schema_id: int) -> WriterSchema | None:
        try:
            return self._cache[schema_id]
        except KeyError:
            pass
        text = self._fetch(schema_id)
        writer: WriterSchema | None = None
        if text is not None:
            document = json.loads(text)
            record_type = None
            if isinstance(document, dict):
                record_type = RECORD_TYPES_BY_NAME.get(
                    f"{document.get('namespace', '')}.{document.get('name', '')}"
                )
            writer = WriterSchema(record_type, fastavro.parse_schema(document), text)
        self._cache[schema_id] = writer
        return writer


def describe_validation_error(error: ValidationError) -> str:
    """Where and how a record breaks the contract, without its values (they may be PII)."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in error.errors(include_input=False)
    )[:MAX_MESSAGE_CHARS]
