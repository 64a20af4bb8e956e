"""A compiled Avro encoder for the contract's flat records: about twice as fast as fastavro's.

Why not only fastavro: the SDK encodes every event on its one worker thread, and for our 55-field
record fastavro spends most of ~24 µs walking the schema per field and per union branch. Here the
schema is walked once, at start, into a Python function that writes each field directly: ~12 µs,
and the difference is most of the SDK's throughput. The encoding is the Avro binary encoding, byte
for byte what fastavro writes (tests/schemas/test_avro_encoder.py checks that on generated traffic
and on edge cases); fastavro stays the decoder, and the encoder for any schema this compiler does
not handle.

Handled: a record of fields of type string, int, long, double, boolean, enum, arrays of strings,
ints or longs, maps of strings, the logical types uuid and timestamp-micros, and unions of null
with one of those.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

Encoder = Callable[[dict[str, Any]], bytes]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class UnsupportedSchema(ValueError):
    """The schema uses a construct this compiler does not handle: use fastavro for it."""


def _zigzag_varint(value: int) -> bytes:
    """Avro's variable-length zig-zag encoding of a long."""
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{value} does not fit an Avro long")
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Counts, token numbers, partitions and string lengths are mostly small: their encodings are kept.
_SMALL_LIMIT = 16384
_SMALL = [_zigzag_varint(i) for i in range(-_SMALL_LIMIT, _SMALL_LIMIT)]


def _long(value: int) -> bytes:
    if -_SMALL_LIMIT <= value < _SMALL_LIMIT:
        return _SMALL[value + _SMALL_LIMIT]
    return _zigzag_varint(value)


def _int(value: int) -> bytes:
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"{value} does not fit an Avro int")
    return _long(value)


def _string(value: str) -> bytes:
    encoded = value.encode()
    return _long(len(encoded)) + encoded


def _timestamp_micros(value: datetime | int) -> bytes:
    if isinstance(value, int):
        return _long(value)
    if value.tzinfo is None:
        raise ValueError("timestamp-micros needs a timezone-aware datetime")
    return _long((value - _EPOCH) // _MICROSECOND)


_pack_double = struct.Struct("<d").pack
_TRUE, _FALSE, _NULL_BRANCH, _VALUE_BRANCH, _END = b"\x01", b"\x00", b"\x00", b"\x02", b"\x00"


def _double(value: float) -> bytes:
    try:
        return _pack_double(value)
    except struct.error as exc:
        raise TypeError(f"{value!r} is not a double") from exc


def _boolean(value: bool) -> bytes:
    if value is True:
        return _TRUE
    if value is False:
        return _FALSE
    raise TypeError(f"{value!r} is not a boolean")


def _array_of_strings(value: list[str]) -> bytes:
    if not value:
        return _END
    return _long(len(value)) + b"".join(_string(item) for item in value) + _END


def _array_of_longs(value: list[int]) -> bytes:
    if not value:
        return _END
    return _long(len(value)) + b"".join(_long(item) for item in value) + _END


def _array_of_ints(value: list[int]) -> bytes:
    if not value:
        return _END
    return _long(len(value)) + b"".join(_int(item) for item in value) + _END


def _map_of_strings(value: dict[str, str]) -> bytes:
    if not value:
        return _END
    return _long(len(value)) + b"".join(_string(k) + _string(v) for k, v in value.items()) + _END


# How one value is written, as a statement of the generated function: `{v}` is the value. Small
# longs and lengths are looked up in place (a call per field was a fifth of the encoder's time).
_STATEMENTS = {
    "string": "s = {v}.encode(); n = len(s); a(S[n + K] if n < K else L(n)); a(s)",
    "int": "n = {v}; a(S[n + K] if -K <= n < K else I(n))",
    "long": "n = {v}; a(S[n + K] if -K <= n < K else L(n))",
    "double": "a(D({v}))",
    "boolean": "a(B({v}))",
    "uuid": "s = str({v}).encode(); n = len(s); a(S[n + K] if n < K else L(n)); a(s)",
    "timestamp-micros": "a(T({v}))",
    "array-of-strings": "a(AS({v}))",
    "array-of-longs": "a(AL({v}))",
    "array-of-ints": "a(AI({v}))",
    "map-of-strings": "a(MS({v}))",
}
_NAMESPACE: dict[str, Any] = {
    "S": _SMALL,
    "K": _SMALL_LIMIT,
    "L": _long,
    "I": _int,
    "D": _double,
    "B": _boolean,
    "T": _timestamp_micros,
    "AS": _array_of_strings,
    "AL": _array_of_longs,
    "AI": _array_of_ints,
    "MS": _map_of_strings,
    "NULL": _NULL_BRANCH,
    "VALUE": _VALUE_BRANCH,
}


def _statement(avro_type: Any, value: str, enums: dict[str, dict[str, bytes]]) -> str:
    """The statement that writes `value` (an expression) of a non-union type."""
    if isinstance(avro_type, str):
        if avro_type not in ("string", "int", "long", "double", "boolean"):
            raise UnsupportedSchema(f"type {avro_type!r}")
        return _STATEMENTS[avro_type].format(v=value)
    if not isinstance(avro_type, dict):
        raise UnsupportedSchema(f"type {avro_type!r}")
    logical, kind = avro_type.get("logicalType"), avro_type["type"]
    if (logical, kind) in (("uuid", "string"), ("timestamp-micros", "long")):
        return _STATEMENTS[str(logical)].format(v=value)
    if logical is not None:
        raise UnsupportedSchema(f"logical type {logical!r}")
    if kind == "enum":
        table = f"E{len(enums)}"
        enums[table] = {symbol: _long(index) for index, symbol in enumerate(avro_type["symbols"])}
        return f"a({table}[{value}])"  # an unknown symbol raises KeyError
    if kind == "array" and avro_type["items"] in ("string", "long", "int"):
        return _STATEMENTS[f"array-of-{avro_type['items']}s"].format(v=value)
    if kind == "map" and avro_type["values"] == "string":
        return _STATEMENTS["map-of-strings"].format(v=value)
    return _statement(kind, value, enums)


def compile_encoder(schema: dict[str, Any]) -> Encoder:
    """An encoder for a flat record schema; UnsupportedSchema when the schema needs fastavro.

    The schema becomes the source of one function with a statement per field, compiled once (the
    generated source is kept on the function as `__source__` for reading). It takes the record as a
    dict (every field present) and returns its Avro binary encoding; a value of the wrong type or
    out of range raises ValueError, TypeError, KeyError or AttributeError.
    """
    if schema.get("type") != "record":
        raise UnsupportedSchema("only records are compiled")
    enums: dict[str, dict[str, bytes]] = {}
    lines = ["def encode(r):", "    parts = []", "    a = parts.append"]
    for field in schema["fields"]:
        name, avro_type = field["name"], field["type"]
        if not name.isidentifier():
            raise UnsupportedSchema(f"field name {name!r}")
        if isinstance(avro_type, list):
            if len(avro_type) != 2 or avro_type[0] != "null":
                raise UnsupportedSchema(f"union {avro_type!r} of field {name!r}")
            lines += [
                f"    x = r[{name!r}]",
                "    if x is None:",
                "        a(NULL)",
                "    else:",
                "        a(VALUE)",
                f"        {_statement(avro_type[1], 'x', enums)}",
            ]
        else:
            lines.append(f"    {_statement(avro_type, f'r[{name!r}]', enums)}")
    lines.append("    return b''.join(parts)")
    source = "\n".join(lines)
    namespace = {**_NAMESPACE, **enums}
    exec(compile(source, f"<avro encoder of {schema.get('name')}>", "exec"), namespace)  # noqa: S102
    encode: Encoder = namespace["encode"]
    encode.__source__ = source  # type: ignore[attr-defined]
    return encode
