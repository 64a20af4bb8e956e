"""Sink workers: Kafka topics into ClickHouse tables, offsets committed only after ClickHouse took them.

One process runs a thread per table family (events; rollups: windows, sessions, alerts; dlq), each
a consumer group of its own (`<prefix>-<family>`), so that a slow family never holds back another
and each can be scaled on its own. A family thread:
1. consumes records until the batch is full (`batch_rows`) or old (`batch_seconds`);
2. splits it into inserts (sinks/batches.py): enriched events pass through as AvroConfluent,
   rollups become rows, anything unstorable becomes a `dlq` row with its reason;
3. inserts each table's part with an insert deduplication token naming its offsets, retrying with
   backoff for as long as ClickHouse does not accept it (the consumer is paused meanwhile, so the
   group keeps the partitions and nothing is lost or skipped);
4. commits the offsets, synchronously; a commit that fails is tried again, with the next batch's,
   while the loop goes on consuming (librdkafka serves a rebalance only inside consume).
A worker killed between 3 and 4 re-inserts the same batch on restart (same records, same token)
and ClickHouse drops it; the replacing tables collapse anything that still arrives twice.

In embedded mode (chDB) this process owns the data directory, so `onfinish sink` also has it serve the
read-only SQL endpoint (onfinish/query/) that the CLI, the dashboard and analysts use; this module
only offers the hook (`serve_reads`), so the write path imports no application. /health and /metrics are
served on `web_port`. SIGTERM or SIGINT: every family finishes its batch, commits and closes.

Run it with `onfinish sink` (`python -m onfinish.sinks.worker` runs the write path alone).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import confluent_kafka
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from onfinish.errors import AccessDenied
from onfinish.health import HealthServer
from onfinish.offsets import Committer
from onfinish.retry import Backoff, Stopped, retry_until_stopped
from onfinish.runtime import prepare_worker
from onfinish.schemas.sealing import Seal
from onfinish.schemas.wire import (
    RegistryUnavailable,
    WriterSchemas,
    check_registry_access,
    clickhouse_registry_url,
    registry_client,
    schema_text_fetch,
)
from onfinish.security import check_kafka_access, librdkafka_config
from onfinish.settings import ClickHouseSettings, KafkaSettings, RegistrySettings, StackSettings
from onfinish.sinks import clickhouse
from onfinish.sinks.batches import (
    Batch,
    BatchBuilder,
    Insert,
    KafkaRecord,
    offset_ranges,
    topic_tables,
)
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.settings import SinkSettings
from onfinish.sinks.tables import DLQ_COLUMNS, TABLES

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)

ServeReads = Callable[["Client"], Callable[[], None]]
"""Starts read access on the owner's ClickHouse client and returns how to stop it."""


class SinkMetrics:
    """The worker's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rows = Counter("onfinish_sink_rows", "Rows inserted.", ["table"], registry=self.registry)
        self.batches = Counter(
            "onfinish_sink_batches", "Batches committed.", ["family"], registry=self.registry
        )
        self.batch_seconds = Histogram(
            "onfinish_sink_batch_seconds",
            "Time from a batch's first record to its commit.",
            ["family"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.failures = Counter(
            "onfinish_sink_insert_failures",
            "Inserts ClickHouse did not accept (retried).",
            ["family"],
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "onfinish_sink_dead_lettered",
            "Records this sink could not store (in the dlq table).",
            ["reason"],
            registry=self.registry,
        )
        self.lag = Gauge("onfinish_sink_lag", "Records not yet consumed.", ["family"], registry=self.registry)


class FamilySink:
    """One table family: its consumer group, batches, inserts and commits."""

    def __init__(
        self,
        family: str,
        settings: SinkSettings,
        kafka: KafkaSettings,
        registry: RegistrySettings,
        connect: Callable[[], Client],
        metrics: SinkMetrics,
        consumer: Any = None,
    ) -> None:
        """`consumer`: a stand-in for the family's Kafka consumer (tests); by default one is made."""
        self.family = family
        self.settings = settings
        self.kafka = kafka
        self.connect = connect
        self.metrics = metrics
        prefix = kafka.topic_prefix
        tables = topic_tables(prefix)
        wanted = {
            "events": ("events", "event_quality", "event_costs"),
            "rollups": ("windows_1m", "sessions", "alerts"),
            "dlq": (),
        }[family]
        self.topics = [
            topic for topic, specs in tables.items() if any(spec.name in wanted for spec in specs.values())
        ]
        if family == "dlq":
            self.topics = [f"{prefix}.dlq"]
        self.builder = BatchBuilder(
            WriterSchemas(schema_text_fetch(registry_client(registry))),
            tables,
            f"{prefix}.dlq",
            clock=lambda: datetime.now(UTC),
            seal=Seal.configured(),
        )
        # ClickHouse fetches writer schemas itself: the registry's credentials go in this URL.
        self.registry_url = clickhouse_registry_url(registry)
        self.consumer = (
            consumer
            if consumer is not None
            else confluent_kafka.Consumer(
                {
                    **librdkafka_config(kafka),
                    "group.id": f"{settings.group_prefix}-{family}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "client.id": f"{settings.group_prefix}-{family}",
                    "max.poll.interval.ms": 600_000,
                    "session.timeout.ms": int(settings.session_timeout_s * 1000),
                    "heartbeat.interval.ms": int(min(3.0, settings.session_timeout_s / 3) * 1000),
                    # Large fetches: a batch is tens of thousands of records.
                    "fetch.max.bytes": 64 * 1024 * 1024,
                    "max.partition.fetch.bytes": 8 * 1024 * 1024,
                    "queued.max.messages.kbytes": 256 * 1024,
                    "fetch.wait.max.ms": 100,
                }
            )
        )
        self.client: Client | None = None
        # Connections of the concurrent parts of a pass-through insert (the first part uses `client`).
        self.part_clients: list[Client] = []
        self.part_executor = (
            ThreadPoolExecutor(
                max_workers=settings.insert_parallelism - 1, thread_name_prefix=f"sink-{family}-part"
            )
            if settings.insert_parallelism > 1
            else None
        )
        self.pending: list[Any] = []  # consumed messages of the batch being built
        self.inflight: _InFlight | None = None  # the batch being inserted
        # Offsets of what ClickHouse holds, committed without holding this loop (onfinish/offsets.py).
        self.commits = Committer(
            self.consumer, self._backoff(), family, self.metrics.failures.labels(family).inc
        )
        self.paused = False  # by _complete, while a full batch waits for ClickHouse
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{family}-insert")
        self.stop = threading.Event()
        self.batch_started = 0.0

    # --- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.stop = stop
        self.consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        lag_measured = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() - lag_measured > 2.0:
                    # Measured here: the consumer is not to be used from the web server's threads.
                    self.metrics.lag.labels(self.family).set(_lag(self.consumer))
                    lag_measured = time.monotonic()
                count, timeout = self._consume_plan(time.monotonic())
                self._collect(self.consumer.consume(num_messages=count, timeout=timeout))
                if self.inflight is not None and self.inflight.future.done():
                    self._complete()
                else:
                    self.commits.commit()  # what an earlier commit could not, once its backoff is over
                if self.pending and (
                    len(self.pending) >= self.settings.batch_rows
                    or time.monotonic() - self.batch_started >= self.settings.batch_seconds
                ):
                    # Built here while the batch in flight is inserted (the inserts release the GIL).
                    prepared = self._prepare()
                    if self.inflight is not None:
                        self._complete()  # one batch in flight at a time, committed in order
                    self._submit(prepared)
            self._drain()
        except _Stopped:
            log.info("stopped with a batch not stored; it is consumed again on restart")
        finally:
            self.executor.shutdown(wait=True)
            if self.part_executor is not None:
                self.part_executor.shutdown(wait=True)
            self.consumer.close()
            self._disconnect()

    def _consume_plan(self, now: float) -> tuple[int, float]:
        """How many records the next `consume` asks for, and how long it may wait for them.

        librdkafka's consume returns when it has them all or its timeout is up, so the wait is what
        sets a batch's real age. With nothing pending it asks for one record: the first to arrive
        starts the batch's clock at once, not when the wait would have ended. With a batch pending
        it waits no later than the batch's deadline, so that a batch is inserted `batch_seconds`
        after its first record (before, up to 0.2 s after that, and its clock started up to 0.2 s
        late: about a third of a second of the end-to-end p99 at the demo's 0.5 s batches).
        """
        if not self.pending:
            return 1, _POLL_S
        left = self.batch_started + self.settings.batch_seconds - now
        return max(self.settings.batch_rows - len(self.pending), 1), min(_POLL_S, max(left, 0.0))

    def _collect(self, messages: Iterable[Any]) -> None:
        """Keep consumed records for the next batch (never drop one: a later commit would skip it)."""
        for message in messages:
            if message.error() is None:
                if not self.pending:
                    self.batch_started = time.monotonic()
                self.pending.append(message)
            else:
                log.warning("consumer error", extra={"error": str(message.error())[:200]})

    def _prepare(self) -> _Prepared:
        """Take the pending records as the next batch and split it into inserts."""
        messages, self.pending = self.pending, []
        records = [
            KafkaRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers())
            for m in messages
        ]
        try:
            batch: Batch | None = self.builder.build(records)
        except RegistryUnavailable:
            batch = None  # built on the insert thread, which waits for the registry
        return _Prepared(records, batch, self.batch_started)

    def _submit(self, prepared: _Prepared | None = None) -> None:
        """Hand the next batch to the insert thread; consuming goes on meanwhile."""
        prepared = prepared or self._prepare()
        future = self.executor.submit(self._store, prepared.records, prepared.batch)
        self.inflight = _InFlight(future, prepared.records, prepared.started)

    def _complete(self) -> None:
        """Wait for the batch in flight, then commit its offsets (on this, the consumer's, thread).

        Meanwhile the records of the batch after it are consumed, up to a batch: with the one in
        flight and the one built and waiting to be submitted, memory holds at most three batches."""
        inflight = self.inflight
        assert inflight is not None
        while not inflight.future.done():
            # Once the pending batch is full (ClickHouse is slow or away) fetching stops, but
            # polling goes on so that the group keeps us. Pausing drops what the client fetched
            # ahead, so it waits for that.
            room = self.settings.batch_rows - len(self.pending)
            if room <= 0 and not self.paused:
                self.consumer.pause(self.consumer.assignment())
                self.paused = True
            messages = self.consumer.consume(num_messages=max(room, 1), timeout=0)
            self._collect(messages)
            if not messages:  # returns as soon as the batch is stored
                wait_for([inflight.future], timeout=0.2)
        if self.paused:
            self.consumer.resume(self.consumer.assignment())
            self.paused = False
        if inflight.committed:  # a rebalance during the wait committed it already
            return
        self._commit(inflight)

    def _commit(self, inflight: _InFlight) -> None:
        """Once ClickHouse holds the batch in flight: its offsets are committed (or wait for a later
        try, with the next batches', while the loop consumes on: onfinish/offsets.py)."""
        self.inflight = None
        inflight.future.result()  # raises _Stopped when the batch was given up at shutdown
        self.commits.done_with(
            {partition: last + 1 for partition, (_, last) in offset_ranges(inflight.records).items()}
        )
        inflight.committed = True
        self.metrics.batches.labels(self.family).inc()
        self.metrics.batch_seconds.labels(self.family).observe(time.monotonic() - inflight.started)
        self.commits.commit()

    def _drain(self) -> None:
        """Store and commit everything consumed: at shutdown, and before partitions are revoked."""
        if self.inflight is not None:
            self.inflight.future.result()
            self._commit(self.inflight)
        if self.pending:
            self._submit()
            assert self.inflight is not None
            self.inflight.future.result()
            self._commit(self.inflight)
        self.commits.commit(last_chance=True)

    # Rebalance callbacks: they run inside consume, on this family's thread.

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.commits.assigned(partitions)
        if not self.paused:
            # librdkafka keeps a partition's pause across a revoke and a new assignment: one paused
            # by _complete and revoked before its resume would never be fetched again.
            consumer.resume(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # The next owner starts after what this worker stored and committed.
        self._drain()
        self._forget(partitions)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        """The group went on without this worker (its session timed out, the coordinator away): the
        partitions may be another worker's already, so nothing more of theirs is committed, and what
        was consumed and not stored is left to whoever reads them next."""
        log.warning(
            "partitions lost (the group session timed out); rejoining",
            extra={"family": self.family, "partitions": len(partitions)},
        )
        self._forget(partitions)

    def _forget(self, partitions: list[Any]) -> None:
        gone = self.commits.forget(partitions)
        self.pending = [m for m in self.pending if (m.topic(), m.partition()) not in gone]

    def _store(self, records: list[KafkaRecord], batch: Batch | None) -> None:
        """Insert a batch (on the insert thread); returns once ClickHouse took all of it."""

        def failed(exc: Exception, delay: float) -> None:
            if isinstance(exc, RegistryUnavailable):
                log.warning("schema registry unavailable; the batch waits", extra={"error": str(exc)[:200]})
                return
            # ClickHouse unreachable, locked, or refusing
            self.metrics.failures.labels(self.family).inc()
            log.warning(
                "ClickHouse did not accept the batch; retrying",
                extra={"family": self.family, "error": str(exc)[:300], "retry_in_s": delay},
            )
            self._disconnect()

        try:
            retry_until_stopped(
                lambda: self._insert(batch or self.builder.build(records)),
                backoff=self._backoff(),
                stop=self.stop,
                on_failure=failed,
            )
        except Stopped:
            raise _Stopped from None

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)

    def _insert(self, batch: Batch) -> None:
        if self.client is None:
            self.client = self.connect()
        client = self.client
        for insert in batch.inserts.values():
            parts = insert.split(self.settings.insert_parallelism, self.settings.insert_part_min_rows)
            if len(parts) > 1:  # pass-through values only, each part with its own token
                self._insert_parts(client, parts)
                continue
            settings = _insert_settings(insert)
            if insert.avro:
                self._insert_avro(client, insert, settings)
            if insert.rows:
                self._insert_rows(client, insert, settings)
        for reason, count in batch.dead_lettered.items():
            self.metrics.dead_lettered.labels(reason).inc(count)

    def _insert_rows(self, client: Client, insert: Insert, settings: dict[str, Any]) -> None:
        columns = list(DLQ_COLUMNS) if insert.table == "dlq" else list(_spec_named(insert.table).columns)
        client.insert(insert.table, insert.rows, column_names=columns, settings=settings)
        self.metrics.rows.labels(insert.table).inc(len(insert.rows))

    def _insert_parts(self, client: Client, parts: list[Insert]) -> None:
        """Insert the parts of one pass-through insert concurrently, each with its own token; the
        batch counts as stored once every part is (a part that failed is retried with the batch,
        and the parts that were stored are dropped by their tokens)."""
        assert self.part_executor is not None
        while len(self.part_clients) < len(parts) - 1:
            self.part_clients.append(self.connect())
        futures = [
            self.part_executor.submit(self._insert_avro, part_client, part, _insert_settings(part))
            for part_client, part in zip(self.part_clients, parts[1:], strict=False)
        ]
        failure: BaseException | None = None
        try:
            self._insert_avro(client, parts[0], _insert_settings(parts[0]))
        except Exception as exc:
            failure = exc
        for future in futures:  # every part is waited for before the batch is retried or committed
            error = future.exception()
            if failure is None and error is not None:
                failure = error
        if failure is not None:
            raise failure

    def _disconnect(self) -> None:
        clients = ([self.client] if self.client is not None else []) + self.part_clients
        self.client, self.part_clients = None, []
        for client in clients:
            try:
                client.close()
            except Exception as exc:  # a connection that is gone already closes nothing
                log.debug("closing a ClickHouse connection failed", extra={"error": str(exc)[:200]})

    def _insert_avro(self, client: Client, insert: Insert, settings: dict[str, Any]) -> None:
        try:
            client.raw_insert(
                insert.table,
                column_names=list(_spec_named(insert.table).record_type.field_names),
                insert_block=b"".join(insert.avro),
                fmt="AvroConfluent",
                settings={
                    **settings,
                    "format_avro_schema_registry_url": self.registry_url,
                    "input_format_skip_unknown_fields": 1,
                },
            )
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            # ClickHouse could not read some record of this insert (an insert is atomic: none of it
            # was stored). Decode its records here: the unreadable go to the dlq table with their
            # reason, the rest are inserted as rows under this insert's own token.
            log.warning(
                "ClickHouse refused a pass-through insert; decoding its records one by one",
                extra={"family": self.family, "error": str(exc)[:300]},
            )
            fallback = self.builder.build(insert.avro_records, decode_all=True)
            for part in fallback.inserts.values():
                self._insert_rows(
                    client, part, settings if part.table == insert.table else _insert_settings(part)
                )
            for reason, count in fallback.dead_lettered.items():
                self.metrics.dead_lettered.labels(reason).inc(count)
            return
        self.metrics.rows.labels(insert.table).inc(len(insert.avro))


def _insert_settings(insert: Insert) -> dict[str, Any]:
    # Replacing tables collapse duplicates at merge time and FINAL; sorting them out at every insert
    # as well costs a fifth of the insert rate.
    return {"insert_deduplication_token": insert.token(), "optimize_on_insert": 0}


# The longest a consume waits: how soon the loop notices a finished insert, the lag and a stop.
_POLL_S = 0.2


@dataclass(frozen=True)
class _Prepared:
    """A batch taken from the consumed records, split into inserts (None: the registry was away)."""

    records: list[KafkaRecord]
    batch: Batch | None
    started: float


@dataclass(eq=False)
class _InFlight:
    """A batch handed to the insert thread, and what its commit needs."""

    future: Future[None]
    records: list[KafkaRecord]
    started: float
    committed: bool = False


class _Stopped(Exception):
    """The worker stopped while ClickHouse refused a batch: it is left uncommitted."""


def _is_data_error(exc: Exception) -> bool:
    text = str(exc)
    return any(
        marker in text
        for marker in ("CANNOT_PARSE", "INCORRECT_DATA", "Avro", "avro", "CANNOT_READ", "TYPE_MISMATCH")
    )


def _spec_named(table: str) -> Any:
    return next(spec for spec in TABLES.values() if spec.name == table)


# --- the process -------------------------------------------------------------------------------


def _lag(consumer: Any) -> float:
    """Records of the assigned partitions not yet consumed, from the client's cached watermarks."""
    try:
        positions = consumer.position(consumer.assignment())
        highs = [consumer.get_watermark_offsets(tp, cached=True)[1] for tp in positions]
    except (confluent_kafka.KafkaException, RuntimeError):  # closed, or between assignments
        return 0.0
    return float(
        sum(max(high - tp.offset, 0) for tp, high in zip(positions, highs, strict=True) if tp.offset >= 0)
    )


def run(
    settings: SinkSettings | None = None,
    kafka: KafkaSettings | None = None,
    registry: RegistrySettings | None = None,
    clickhouse_settings: ClickHouseSettings | None = None,
    stack: StackSettings | None = None,
    *,
    stop: threading.Event | None = None,
    ready: Callable[[], None] | None = None,
    serve_reads: ServeReads | None = None,
) -> None:
    """Run the sink worker until `stop` is set (or SIGTERM/SIGINT when run as a program).

    With the embedded ClickHouse this process owns the data directory, and `serve_reads` (the query
    room's endpoint, given by `onfinish sink`) is started on the owner's client once the migrations
    are applied; it returns how to stop what it started.
    """
    settings = settings or SinkSettings()
    kafka = kafka or KafkaSettings()
    registry = registry or RegistrySettings()
    clickhouse_settings = clickhouse_settings or ClickHouseSettings()
    stack = stack or StackSettings()
    stop = stop or threading.Event()

    def connect() -> Client:
        return clickhouse.connect(clickhouse_settings, stack)

    check_access(settings, kafka, registry)
    if registry.ca_file is not None and clickhouse_settings.resolved_dsn(stack).startswith("chdb:"):
        clickhouse.trust_for_embedded_fetches(registry.ca_file, stack.home / "run")
    owner = _connect_with_retry(connect, stop, settings)
    if owner is None:
        return
    apply_migrations(owner, events_ttl_days=settings.events_ttl_days)
    metrics = SinkMetrics()
    families = [
        FamilySink(family, settings, kafka, registry, connect, metrics) for family in settings.families
    ]
    web = HealthServer(
        settings.web_host, settings.web_port, metrics.registry, lambda: (True, {"status": "ok"})
    ).start()
    embedded = clickhouse_settings.resolved_dsn(stack).startswith("chdb:")
    stop_reads = serve_reads(owner) if embedded and serve_reads is not None else None

    def start(family: FamilySink) -> threading.Thread:
        thread = threading.Thread(target=family.run, args=(stop,), name=f"sink-{family.family}", daemon=True)
        thread.start()
        return thread

    threads = [start(family) for family in families]
    if ready is not None:
        ready()
    try:
        while not stop.wait(0.5):
            for index, thread in enumerate(threads):
                if thread.is_alive():
                    continue
                # A family that failed in a way nobody foresaw starts over from its committed
                # offsets (what it had not committed is re-read, and dropped by its token), so
                # one failure never stops the worker nor the other families.
                name = families[index].family
                metrics.failures.labels(name).inc()
                log.error("a sink family stopped unexpectedly; restarting it", extra={"family": name})
                if stop.wait(settings.retry_initial_s):
                    break
                families[index] = FamilySink(name, settings, kafka, registry, connect, metrics)
                threads[index] = start(families[index])
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        web.stop()
        if stop_reads is not None:
            stop_reads()
        owner.close()


def check_access(settings: SinkSettings, kafka: KafkaSettings, registry: RegistrySettings) -> None:
    """AccessDenied, with the reason, when Kafka or the registry will not have this worker (a wrong
    password, an unknown CA, a missing ACL): found within the connect timeout, before any family
    starts a consumer that would retry it silently for ever. A registry that is merely away is
    waited for later, batch by batch."""
    prefix = kafka.topic_prefix
    tables = topic_tables(prefix)
    check_kafka_access(
        kafka,
        topics=sorted({*tables, f"{prefix}.dlq"}),
        groups=[f"{settings.group_prefix}-{family}" for family in settings.families],
    )
    try:
        check_registry_access(registry)
    except RegistryUnavailable as exc:
        log.warning("schema registry not reachable at start", extra={"error": str(exc)[:300]})


def _connect_with_retry(
    connect: Callable[[], Client], stop: threading.Event, settings: SinkSettings
) -> Client | None:
    def failed(exc: Exception, delay: float) -> None:
        if isinstance(exc, AccessDenied):  # a wrong password or CA: waiting mends nothing
            raise exc
        # Locked by another process, or a server that is not up yet.
        log.warning(
            "ClickHouse not reachable; retrying", extra={"error": str(exc)[:300], "retry_in_s": delay}
        )

    try:
        return retry_until_stopped(
            connect,
            backoff=Backoff(settings.retry_initial_s, settings.retry_max_s),
            stop=stop,
            on_failure=failed,
        )
    except Stopped:
        return None


def main(families: Iterable[str] | None = None, serve_reads: ServeReads | None = None) -> None:
    from onfinish.logs import LogSettings, configure_logging

    configure_logging(LogSettings())
    stop = threading.Event()

    def on_signal(signum: int, _: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    settings = SinkSettings()
    if families is not None:
        settings = settings.model_copy(update={"families": list(families)})
    prepare_worker(settings.gc_thresholds)
    try:
        run(settings, stop=stop, serve_reads=serve_reads)
    except AccessDenied as exc:
        log.error("sink worker cannot start: %s", exc)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
