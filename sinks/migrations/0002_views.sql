-- Views for the questions analysts ask first.
--
-- Each reads its table with FINAL, so a duplicate event or an older snapshot never counts.
-- Percentiles come from minute histograms summed bucket by bucket (sumForEach): the quantile
-- placeholders expand to processors/histograms.py's expression, the SQL twin of
-- quantile_from_counts, so a percentile here is the one Python computes from the same counts.
-- Views compute nothing at write time: a view whose question changes is replaced by a later
-- migration.
--
-- Inner queries name their aggregates apart from the columns they read (calls_total, not
-- events) so that no alias shadows a column, whichever query analyzer the server runs.

-- Per hour and model, from the 1-minute windows: every raw partition's latest snapshot of every
-- minute, summed. Windows leave out events that arrived after their minute closed; events do not.
CREATE VIEW IF NOT EXISTS model_hourly AS
SELECT
    hour,
    provider,
    model_id,
    calls_total AS calls,
    errors_total AS errors,
    (calls_total - errors_total) / calls_total AS success_rate,
    errors_total / calls_total AS error_rate,
    {{quantile(latency_histogram, 0.5)}} AS latency_p50,
    {{quantile(latency_histogram, 0.95)}} AS latency_p95,
    {{quantile(latency_histogram, 0.99)}} AS latency_p99,
    if(latency_n = 0, NULL, latency_total_ms / latency_n) AS latency_mean_ms,
    latency_peak_ms AS latency_max_ms,
    {{quantile(ttft_histogram, 0.5)}} AS ttft_p50,
    {{quantile(ttft_histogram, 0.95)}} AS ttft_p95,
    {{quantile(ttft_histogram, 0.99)}} AS ttft_p99,
    if(ttft_n = 0, NULL, ttft_total_ms / ttft_n) AS ttft_mean_ms,
    cost_total AS cost_usd,
    prompt_total AS prompt_tokens,
    completion_total AS completion_tokens,
    cached_total AS cached_tokens,
    reasoning_total AS reasoning_tokens,
    cache_hits_total / calls_total AS cache_hit_rate,
    fallbacks_total / calls_total AS fallback_rate,
    tool_use_total / calls_total AS tool_use_rate,
    streamed_total / calls_total AS streaming_share,
    quality_total / calls_total AS quality_mean
FROM
(
    SELECT
        toStartOfHour(window_start) AS hour,
        provider,
        model_id,
        sum(events) AS calls_total,
        sum(errors) AS errors_total,
        sum(cost_usd) AS cost_total,
        sum(prompt_tokens) AS prompt_total,
        sum(completion_tokens) AS completion_total,
        sum(cached_tokens) AS cached_total,
        sum(reasoning_tokens) AS reasoning_total,
        sum(cache_hits) AS cache_hits_total,
        sum(fallbacks) AS fallbacks_total,
        sum(tool_use) AS tool_use_total,
        sum(streamed) AS streamed_total,
        sum(quality_sum) AS quality_total,
        sum(latency_count) AS latency_n,
        sum(latency_sum_ms) AS latency_total_ms,
        max(latency_max_ms) AS latency_peak_ms,
        sumForEach(latency_counts) AS latency_histogram,
        sum(ttft_count) AS ttft_n,
        sum(ttft_sum_ms) AS ttft_total_ms,
        sumForEach(ttft_counts) AS ttft_histogram
    FROM windows_1m FINAL
    GROUP BY hour, provider, model_id
);

-- The same per day: daily percentiles come from the minutes, not from hourly percentiles.
CREATE VIEW IF NOT EXISTS model_daily AS
SELECT
    day,
    provider,
    model_id,
    calls_total AS calls,
    errors_total AS errors,
    (calls_total - errors_total) / calls_total AS success_rate,
    errors_total / calls_total AS error_rate,
    {{quantile(latency_histogram, 0.5)}} AS latency_p50,
    {{quantile(latency_histogram, 0.95)}} AS latency_p95,
    {{quantile(latency_histogram, 0.99)}} AS latency_p99,
    {{quantile(ttft_histogram, 0.5)}} AS ttft_p50,
    {{quantile(ttft_histogram, 0.95)}} AS ttft_p95,
    {{quantile(ttft_histogram, 0.99)}} AS ttft_p99,
    cost_total AS cost_usd,
    cache_hits_total / calls_total AS cache_hit_rate,
    fallbacks_total / calls_total AS fallback_rate,
    tool_use_total / calls_total AS tool_use_rate,
    streamed_total / calls_total AS streaming_share,
    quality_total / calls_total AS quality_mean
FROM
(
    SELECT
        toDate(window_start) AS day,
        provider,
        model_id,
        sum(events) AS calls_total,
        sum(errors) AS errors_total,
        sum(cost_usd) AS cost_total,
        sum(cache_hits) AS cache_hits_total,
        sum(fallbacks) AS fallbacks_total,
        sum(tool_use) AS tool_use_total,
        sum(streamed) AS streamed_total,
        sum(quality_sum) AS quality_total,
        sumForEach(latency_counts) AS latency_histogram,
        sumForEach(ttft_counts) AS ttft_histogram
    FROM windows_1m FINAL
    GROUP BY day, provider, model_id
);

-- Cost per day and dimension set, from the events themselves (exact, late events included, for
-- as long as events are retained). No feature or variant reads as ''.
CREATE VIEW IF NOT EXISTS cost_by_dimension AS
SELECT
    toDate(e.finished_at) AS day,
    e.provider AS provider,
    e.model_id AS model_id,
    ifNull(e.feature_id, '') AS feature_id,
    ifNull(e.variant_id, '') AS variant_id,
    e.environment AS environment,
    count() AS calls,
    sum(e.cost_usd) AS cost_usd,
    sum(e.prompt_tokens) AS prompt_tokens,
    sum(e.completion_tokens) AS completion_tokens,
    sum(e.cached_tokens) AS cached_tokens,
    sum(e.reasoning_tokens) AS reasoning_tokens,
    sum(e.prompt_tokens + e.completion_tokens) AS tokens
FROM events AS e FINAL
GROUP BY day, provider, model_id, feature_id, variant_id, environment;

-- One row per session, its latest snapshot.
CREATE VIEW IF NOT EXISTS session_costs AS
SELECT
    session_id,
    user_id,
    service,
    environment,
    first_at,
    last_at,
    turns,
    cost_usd,
    duration_ms,
    prompt_tokens,
    completion_tokens,
    errors,
    regenerations,
    edits,
    quality_mean,
    models,
    closed
FROM sessions FINAL;

-- Failed calls (error, timeout, cancelled) per day, model and error.
CREATE VIEW IF NOT EXISTS top_error_codes AS
SELECT
    toDate(e.finished_at) AS day,
    e.model_id AS model_id,
    e.error_type AS error_type,
    e.error_code AS error_code,
    count() AS count
FROM events AS e FINAL
WHERE e.status != 'success'
GROUP BY day, model_id, error_type, error_code;

-- Implicit quality signals per day, model and variant (an A/B comparison's first table).
CREATE VIEW IF NOT EXISTS quality_by_model_variant AS
SELECT
    toDate(e.finished_at) AS day,
    e.model_id AS model_id,
    ifNull(e.variant_id, '') AS variant_id,
    count() AS calls,
    avg(e.quality_score) AS quality_mean,
    countIf(e.regenerated) / count() AS regeneration_rate,
    countIf(e.edited) / count() AS edit_rate,
    count(e.rating) AS ratings,
    avg(e.rating) AS rating_mean
FROM events AS e FINAL
GROUP BY day, model_id, variant_id;

-- Dead letters per day, stage and reason: what is refused, and where.
CREATE VIEW IF NOT EXISTS dlq_by_reason AS
SELECT
    toDate(d.received_at) AS day,
    d.stage AS stage,
    d.reason AS reason,
    d.source_topic AS source_topic,
    count() AS letters,
    sum(d.value_bytes) AS value_bytes
FROM dlq AS d FINAL
GROUP BY day, stage, reason, source_topic;
