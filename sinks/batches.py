"""From a batch of Kafka records to what is inserted: pure, so every rule is tested without Kafka.

A sink batch holds records of one table family. Each record becomes one of:
- an *Avro pass-through*: the enriched events' Confluent-framed values, concatenated and inserted
  as ClickHouse's `AvroConfluent` format (ClickHouse decodes them, in C++, with the writer schema
  from the registry): the path that carries most rows;
- a *row* built in Python (windows, sessions, alerts: few rows, and windows need their sparse
  histograms made dense);
- a *dead letter* for the `dlq` table: records of the `onfinish.dlq` topic, and any record this
  sink cannot store (not framed, unknown schema id, a schema of another record type, undecodable),
  with the reason, so a poison record never blocks its partition.

The insert deduplication token of a table's insert names the offsets it covers, so a batch that
is inserted again after a crash between insert and commit is dropped by ClickHouse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from operator import itemgetter
from typing import Any, NamedTuple

from onfinish.errors import describe_exception
from onfinish.schemas.deadletter import DeadLetter, Reason, Stage
from onfinish.schemas.sealing import Seal
from onfinish.schemas.wire import Refused, WriterSchema, framing_of, read_body, schema_id_of
from onfinish.sinks.tables import TABLES, TableSpec, dlq_row


class KafkaRecord(NamedTuple):
    """What a sink uses of a consumed record (a tuple: a batch makes tens of thousands)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


# Returns the writer of a schema id (WriterSchemas in schemas/wire.py), None when the registry does
# not know it; raises when the registry cannot be asked (the batch then waits).
WriterLookup = Callable[[int], WriterSchema | None]


_PARTITION = itemgetter(0, 1)  # of a KafkaRecord: (topic, partition)
_OFFSET = itemgetter(2)


def offset_ranges(*record_lists: Iterable[KafkaRecord]) -> dict[tuple[str, int], tuple[int, int]]:
    """The first and last offset of the records, per topic and partition.

    A batch holds tens of thousands of records in runs of one partition (as the consumer fetched
    them), so the runs are taken whole, in C: a Python step per record was 0.45 s per million."""
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for records in record_lists:
        for key, run in groupby(records, _PARTITION):
            offsets = list(map(_OFFSET, run))
            first, last = min(offsets), max(offsets)
            if key in ranges:
                known = ranges[key]
                first, last = min(first, known[0]), max(last, known[1])
            ranges[key] = (first, last)
    return ranges


@dataclass
class Insert:
    """What one batch inserts into one table."""

    table: str
    rows: list[list[Any]] = field(default_factory=list)
    avro: list[bytes] = field(default_factory=list)  # Confluent-framed values, for AvroConfluent
    avro_records: list[KafkaRecord] = field(default_factory=list)  # the records of those values
    row_records: list[KafkaRecord] = field(default_factory=list)  # the records of the rows

    def cover(self, record: KafkaRecord) -> None:
        """Count `record` as one this insert stores (as a row)."""
        self.row_records.append(record)

    def pass_through(self, record: KafkaRecord, value: bytes) -> None:
        self.avro.append(value)
        self.avro_records.append(record)

    @property
    def ranges(self) -> dict[tuple[str, int], tuple[int, int]]:
        """The first and last offset this insert covers, per topic and partition."""
        return offset_ranges(self.avro_records, self.row_records)

    def split(self, parts: int, min_rows: int) -> list[Insert]:
        """The pass-through values in up to `parts` inserts of at least `min_rows` each, to be
        inserted concurrently (ClickHouse reads one insert's Avro on one thread).

        Each part is a contiguous run of the values in consumed order, so per partition the parts
        cover disjoint offset ranges and each part's token names exactly its own records: a batch
        consumed again after a crash is split the same way and each part is dropped by its token.
        Inserts with rows (built in Python) are not split.
        """
        count = len(self.avro)
        parts = max(1, min(parts, count // max(min_rows, 1)))
        if parts == 1 or self.rows:
            return [self]
        size = -(-count // parts)
        return [
            Insert(
                self.table,
                avro=self.avro[start : start + size],
                avro_records=self.avro_records[start : start + size],
            )
            for start in range(0, count, size)
        ]

    def token(self) -> str:
        """The insert deduplication token: the table and the offsets this insert covers."""
        covered = ",".join(f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in sorted(self.ranges.items()))
        return f"{self.table}|{covered}"


@dataclass
class Batch:
    """A batch split into inserts per table (the `dlq` insert included)."""

    inserts: dict[str, Insert] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)  # reason -> count (this sink's own)

    def insert_for(self, table: str) -> Insert:
        insert = self.inserts.get(table)
        if insert is None:
            insert = self.inserts[table] = Insert(table)
        return insert


class BatchBuilder:
    """Splits records into inserts; `avro_tables` are the tables fed as AvroConfluent."""

    def __init__(
        self,
        lookup: WriterLookup,
        topic_tables: dict[str, dict[str, TableSpec]],
        dlq_topic: str,
        *,
        avro_tables: frozenset[str] = frozenset({"events"}),
        clock: Callable[[], datetime],
        seal: Seal | None = None,
    ) -> None:
        self.lookup = lookup
        self.seal = seal or Seal.configured()  # the sink's own dead letters, sealed as every stage's
        self.topic_tables = topic_tables
        self.dlq_topic = dlq_topic
        self.avro_tables = avro_tables
        self.clock = clock

    def build(self, records: Sequence[KafkaRecord], *, decode_all: bool = False) -> Batch:
        """The batch's inserts; `decode_all` decodes pass-through records in Python into rows (used
        when ClickHouse refused a pass-through insert: the record that made it fail is found and
        dead-lettered, the others are inserted as rows)."""
        batch = Batch()
        now = self.clock()
        # (topic, framing) -> the insert its records pass through to: the checks of `_add` are made
        # once per batch and schema for the records that carry most rows.
        routes: dict[tuple[str, bytes], Insert] = {}
        for record in records:
            value = record.value
            header = framing_of(value)
            if header is not None and value is not None and not decode_all:
                route = routes.get((record.topic, header))
                if route is not None:
                    route.pass_through(record, value)
                    continue
            if record.topic == self.dlq_topic:
                letter = DeadLetter.from_headers(record.key, record.value, record.headers or [])
                insert = batch.insert_for("dlq")
                insert.rows.append(dlq_row(letter, now))
                insert.cover(record)
                continue
            added = self._add(batch, self.topic_tables[record.topic], record, decode_all)
            if isinstance(added, Insert):
                assert header is not None  # only framed values pass through
                routes[(record.topic, header)] = added
            elif added is not None:
                reason, message = added
                batch.dead_lettered[reason.value] = batch.dead_lettered.get(reason.value, 0) + 1
                letter = DeadLetter.of_record(self.seal, Stage.sink, reason, message, record)
                insert = batch.insert_for("dlq")
                insert.rows.append(dlq_row(letter, now))
                insert.cover(record)
        return batch

    def _add(
        self, batch: Batch, specs: dict[str, TableSpec], record: KafkaRecord, decode_all: bool
    ) -> tuple[Reason, str] | Insert | None:
        """Adds the record to its insert: returns the insert when the record passes through to it,
        None when it became a row, the reason and message when it cannot be stored."""
        value = record.value
        try:
            schema_id = schema_id_of(value)
        except Refused as refused:
            return refused.reason, refused.message
        assert value is not None  # schema_id_of refuses an empty value
        writer = self.lookup(schema_id)
        if writer is None or writer.record_type is None:
            return Reason.unknown_schema_id, f"schema id {schema_id} is not a schema of the contract"
        spec = specs.get(writer.record_type.full_name)
        if spec is None:
            carried = ", ".join(sorted(specs))
            return (
                Reason.unknown_record_type,
                f"a {writer.record_type.full_name} on {record.topic} ({carried})",
            )
        insert = batch.insert_for(spec.name)
        if spec.name in self.avro_tables and not decode_all:
            insert.pass_through(record, value)
            return insert
        try:
            datum = read_body(value, writer.parsed, spec.record_type.parsed, schema_id)
            row = spec.to_row(datum, record.partition, record.offset)
        except Refused as refused:
            return refused.reason, refused.message
        except Exception as exc:  # row building raises assorted errors on data it cannot store
            return Reason.undecodable, describe_exception(exc)
        insert.rows.append(row)
        insert.cover(record)
        return None


def topic_tables(topic_prefix: str) -> dict[str, dict[str, TableSpec]]:
    """Each output topic of the processors, and the table of each record type it carries."""
    tables: dict[str, dict[str, TableSpec]] = {}
    for full_name, spec in TABLES.items():
        tables.setdefault(spec.record_type.topic(topic_prefix), {})[full_name] = spec
    return tables
