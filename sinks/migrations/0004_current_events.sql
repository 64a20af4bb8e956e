-- What is known about each call now: its event, the latest feedback and the latest re-pricing.
--
-- `onfinish reprice` applies a price-catalog version to stored events. It never rewrites the
-- events table (which keeps what the call cost when it finished, and the catalog that priced it):
-- it sends one CostCorrection per event to onfinish.enriched, stored here, where the latest
-- re-pricing of an event_id wins (version: when it was made, in microseconds). Re-pricing twice
-- with the same catalog writes the same rows again, so nothing counts twice; a later catalog
-- replaces an earlier one. ingested_cost_usd is the event's cost as stored, so a correction's
-- delta needs no join. Totals over the 1-minute windows get the same deltas as correction rows of
-- their own in windows_1m (sinks/tables.py REPRICING_PARTITION).

CREATE TABLE IF NOT EXISTS event_costs
(
    event_id UUID,
    request_id String,
    session_id Nullable(String),
    finished_at DateTime64(6, 'UTC'),
    provider LowCardinality(String),
    model_id LowCardinality(String),
    cost_input_usd Float64,
    cost_cached_input_usd Float64,
    cost_output_usd Float64,
    cost_reasoning_usd Float64,
    cost_usd Float64,
    cost_source LowCardinality(String),
    ingested_cost_usd Float64,
    version UInt64,
    repriced_at DateTime64(6, 'UTC'),
    kafka_partition UInt32 DEFAULT 0,
    kafka_offset UInt64 DEFAULT 0,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY event_id
SETTINGS non_replicated_deduplication_window = 1000;

-- Every stored event with its current cost (re-priced when it was) and quality (with feedback).
-- ingested_cost_usd is what it cost when stored; repriced says whether a correction applies.
CREATE OR REPLACE VIEW current_events AS
SELECT
    e.* EXCEPT (
        cost_input_usd, cost_cached_input_usd, cost_output_usd, cost_reasoning_usd, cost_usd,
        cost_source, quality_score, regenerated, edited, rating
    ),
    if(c.version = 0, e.cost_input_usd, c.cost_input_usd) AS cost_input_usd,
    if(c.version = 0, e.cost_cached_input_usd, c.cost_cached_input_usd) AS cost_cached_input_usd,
    if(c.version = 0, e.cost_output_usd, c.cost_output_usd) AS cost_output_usd,
    if(c.version = 0, e.cost_reasoning_usd, c.cost_reasoning_usd) AS cost_reasoning_usd,
    if(c.version = 0, e.cost_usd, c.cost_usd) AS cost_usd,
    if(c.version = 0, e.cost_source, c.cost_source) AS cost_source,
    e.cost_usd AS ingested_cost_usd,
    c.version != 0 AS repriced,
    if(q.scored_request_id = '', e.quality_score, q.quality_score) AS quality_score,
    if(q.scored_request_id = '', e.regenerated, q.regenerated) AS regenerated,
    if(q.scored_request_id = '', e.edited, q.edited) AS edited,
    if(q.scored_request_id = '', e.rating, q.rating) AS rating
FROM events AS e FINAL
LEFT JOIN
(
    SELECT
        event_id AS repriced_event_id, cost_input_usd, cost_cached_input_usd, cost_output_usd,
        cost_reasoning_usd, cost_usd, cost_source, version
    FROM event_costs FINAL
) AS c ON c.repriced_event_id = e.event_id
LEFT JOIN
(
    SELECT request_id AS scored_request_id, quality_score, regenerated, edited, rating
    FROM event_quality FINAL
) AS q ON q.scored_request_id = e.request_id;

-- Cost per day and dimension set, at current prices.
CREATE OR REPLACE VIEW cost_by_dimension AS
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
FROM current_events AS e
GROUP BY day, provider, model_id, feature_id, variant_id, environment;

-- One row per session, its latest snapshot, its cost at current prices.
CREATE OR REPLACE VIEW session_costs AS
SELECT
    s.session_id AS session_id,
    s.user_id AS user_id,
    s.service AS service,
    s.environment AS environment,
    s.first_at AS first_at,
    s.last_at AS last_at,
    s.turns AS turns,
    s.cost_usd + ifNull(d.delta_usd, 0) AS cost_usd,
    s.duration_ms AS duration_ms,
    s.prompt_tokens AS prompt_tokens,
    s.completion_tokens AS completion_tokens,
    s.errors AS errors,
    s.regenerations AS regenerations,
    s.edits AS edits,
    s.quality_mean AS quality_mean,
    s.models AS models,
    s.closed AS closed
FROM sessions AS s FINAL
LEFT JOIN
(
    SELECT session_id, sum(cost_usd - ingested_cost_usd) AS delta_usd
    FROM event_costs FINAL
    WHERE session_id IS NOT NULL
    GROUP BY session_id
) AS d ON d.session_id = s.session_id;
