"""The demo's round trip against the real stack: registry, Kafka and ClickHouse hops all checked."""

from __future__ import annotations

from onfinish.settings import ClickHouseSettings, KafkaSettings, RegistrySettings
from onfinish.sinks import clickhouse
from onfinish.stack.roundtrip import SELFCHECK_TABLE, run_round_trip
from onfinish.stack.stack import Stack


def test_round_trip_reaches_every_system_and_reads_back_what_it_sent(
    stack: Stack,
    kafka_settings: KafkaSettings,
    registry_settings: RegistrySettings,
    clickhouse_settings: ClickHouseSettings,
):
    first = run_round_trip(kafka_settings, registry_settings, clickhouse_settings, stack.settings)
    second = run_round_trip(kafka_settings, registry_settings, clickhouse_settings, stack.settings)
    assert first.schema_id == second.schema_id > 0  # same schema, same id
    assert (second.partition, second.offset) == (first.partition, first.offset + 1)
    assert len(first.steps) == 4
    client = clickhouse.connect(clickhouse_settings, stack.settings)
    try:
        stored = client.query(
            f"SELECT toString(probe_id), offset FROM {SELFCHECK_TABLE} WHERE probe_id IN ({{a:UUID}}, {{b:UUID}})"
            " ORDER BY offset",
            parameters={"a": first.probe_id, "b": second.probe_id},
        ).result_rows
    finally:
        client.close()
    assert stored == [(first.probe_id, first.offset), (second.probe_id, second.offset)]
