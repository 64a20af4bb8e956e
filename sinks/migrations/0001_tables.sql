-- The sink tables: one per topic family, each idempotent under re-delivery.
--
-- Every table is a ReplacingMergeTree whose sorting key is the record's identity, so a duplicate or
-- an older snapshot collapses at merge time and never counts in a query that reads with FINAL; and
-- non_replicated_deduplication_window makes ClickHouse drop a retried insert block (same data or
-- same insert_deduplication_token), so a re-delivered batch changes no query result even before a
-- merge. Partition keys are functions of the sorting key only: rows of one identity always meet in
-- one partition, where ReplacingMergeTree can collapse them.
--
-- kafka_partition and kafka_offset say where the sink read the row; they are 0 for rows that
-- ClickHouse read itself from Avro (an AvroConfluent insert has no per-row Kafka metadata; it needs
-- input_format_avro_allow_missing_fields = 1 for them and for inserted_at).
--
-- The events TTL is not written here: the migrator sets it after the migrations with an idempotent
-- ALTER TABLE events MODIFY TTL from its events_ttl_days parameter, so retention can change without
-- changing this file's checksum. The bucket_count placeholder is the histogram grid's array
-- length (processors/histograms.py): a new grid is a schema change, and changes the checksum.

CREATE TABLE IF NOT EXISTS events
(
    event_id UUID,
    request_id String,
    trace_id Nullable(String),
    span_id Nullable(String),
    session_id Nullable(String),
    user_id Nullable(String),
    service LowCardinality(String),
    environment LowCardinality(String),
    region LowCardinality(Nullable(String)),
    deployment_id LowCardinality(Nullable(String)),
    feature_id LowCardinality(Nullable(String)),
    variant_id LowCardinality(Nullable(String)),
    prompt_template_id LowCardinality(Nullable(String)),
    routing_strategy LowCardinality(String),
    operation LowCardinality(String),
    provider LowCardinality(String),
    model_id LowCardinality(String),
    model_version LowCardinality(Nullable(String)),
    started_at DateTime64(6, 'UTC'),
    finished_at DateTime64(6, 'UTC'),
    latency_ms Float64,
    ttft_ms Nullable(Float64),
    queue_ms Nullable(Float64),
    streamed Bool,
    stream_chunks UInt32,
    prompt_tokens UInt32,
    completion_tokens UInt32,
    cached_tokens UInt32,
    reasoning_tokens UInt32,
    reported_cost_usd Nullable(Float64),
    status LowCardinality(String),
    finish_reason LowCardinality(Nullable(String)),
    error_type LowCardinality(Nullable(String)),
    error_code LowCardinality(Nullable(String)),
    error_message Nullable(String) CODEC(ZSTD(3)),
    http_status Nullable(UInt16),
    retry_count UInt32,
    tool_call_count UInt32,
    safety_flags Array(LowCardinality(String)),
    safety_score Nullable(Float64),
    regenerated Bool,
    edited Bool,
    rating Nullable(Int8),
    prompt_hash Nullable(String),
    prompt_chars UInt32,
    completion_chars UInt32,
    attributes Map(String, String),
    schema_version UInt16,
    sdk_name LowCardinality(String),
    sdk_version LowCardinality(String),
    cost_input_usd Float64,
    cost_cached_input_usd Float64,
    cost_output_usd Float64,
    cost_reasoning_usd Float64,
    cost_usd Float64,
    cost_source LowCardinality(String),
    model_family LowCardinality(Nullable(String)),
    context_window Nullable(UInt32),
    quality_score Float64,
    cache_hit Bool,
    processed_at DateTime64(6, 'UTC'),
    redaction_version UInt32,
    raw_partition UInt32,
    raw_offset UInt64,
    kafka_partition UInt32 DEFAULT 0,
    kafka_offset UInt64 DEFAULT 0,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(finished_at)
-- Only fields of the event itself: a duplicate (re-delivered, or re-processed with another
-- processed_at or offset) has the same key, so it collapses.
ORDER BY (provider, model_id, finished_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS windows_1m
(
    window_id String,
    version UInt64,
    raw_partition UInt32,
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    provider LowCardinality(String),
    model_id LowCardinality(String),
    feature_id LowCardinality(String),
    variant_id LowCardinality(String),
    environment LowCardinality(String),
    status LowCardinality(String),
    events UInt64,
    errors UInt64,
    prompt_tokens UInt64,
    completion_tokens UInt64,
    cached_tokens UInt64,
    reasoning_tokens UInt64,
    cost_usd Float64,
    cache_hits UInt64,
    fallbacks UInt64,
    tool_use UInt64,
    streamed UInt64,
    quality_sum Float64,
    latency_count UInt64,
    latency_sum_ms Float64,
    latency_min_ms Nullable(Float64),
    latency_max_ms Nullable(Float64),
    -- Dense counts on the shared grid, so hours and days are sumForEach of minutes.
    latency_counts Array(UInt64),
    ttft_count UInt64,
    ttft_sum_ms Float64,
    ttft_min_ms Nullable(Float64),
    ttft_max_ms Nullable(Float64),
    ttft_counts Array(UInt64),
    emitted_at DateTime64(6, 'UTC'),
    kafka_partition UInt32 DEFAULT 0,
    kafka_offset UInt64 DEFAULT 0,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    CONSTRAINT latency_counts_on_grid CHECK length(latency_counts) = {{bucket_count}},
    CONSTRAINT ttft_counts_on_grid CHECK length(ttft_counts) = {{bucket_count}}
)
-- version is the highest raw offset the snapshot includes: the latest snapshot wins.
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (provider, model_id, window_start, environment, feature_id, variant_id, status, raw_partition)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS sessions
(
    session_id String,
    version UInt64,
    raw_partition UInt32,
    user_id Nullable(String),
    service LowCardinality(String),
    environment LowCardinality(String),
    first_at DateTime64(6, 'UTC'),
    last_at DateTime64(6, 'UTC'),
    duration_ms Float64,
    turns UInt32,
    prompt_tokens UInt64,
    completion_tokens UInt64,
    cached_tokens UInt64,
    reasoning_tokens UInt64,
    cost_usd Float64,
    errors UInt32,
    regenerations UInt32,
    edits UInt32,
    models Array(LowCardinality(String)),
    quality_mean Float64,
    closed Bool,
    emitted_at DateTime64(6, 'UTC'),
    kafka_partition UInt32 DEFAULT 0,
    kafka_offset UInt64 DEFAULT 0,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
-- Not partitioned: first_at moves earlier when a late call arrives, and the snapshots of one
-- session must share a partition to replace each other.
ORDER BY session_id
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    rule LowCardinality(String),
    rules_version UInt32,
    severity LowCardinality(String),
    subject_kind LowCardinality(String),
    subject String,
    observed Float64,
    threshold Float64,
    provider LowCardinality(Nullable(String)),
    model_id LowCardinality(Nullable(String)),
    at DateTime64(6, 'UTC'),
    message String,
    raw_partition UInt32,
    kafka_partition UInt32 DEFAULT 0,
    kafka_offset UInt64 DEFAULT 0,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
-- alert_id is rule and subject: an alert re-emitted after a replay replaces itself.
ENGINE = ReplacingMergeTree
ORDER BY alert_id
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS dlq
(
    stage LowCardinality(String),
    reason LowCardinality(String),
    message String,
    source_topic LowCardinality(String),
    -- Signed: a letter whose headers lack its origin says -1.
    source_partition Int32,
    source_offset Int64,
    -- The original key and value bytes, base64 (empty when absent), so a replay sends them back
    -- exactly; base64Decode(value) gives the bytes in SQL.
    key String,
    value String CODEC(ZSTD(3)),
    value_bytes UInt64,
    received_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
-- A re-delivered dead letter has the same origin and stage, so it collapses.
ORDER BY (source_topic, source_partition, source_offset, stage)
SETTINGS non_replicated_deduplication_window = 1000;
