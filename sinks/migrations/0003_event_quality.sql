-- Feedback that arrives after its event: the call's updated quality score and flags.
--
-- The processors send a QualityUpdate next to the events (onfinish.enriched) when Feedback about a
-- call they have seen arrives; the latest version (raw offset of the feedback) of a request_id
-- wins. The events table keeps the score the call had when it finished; views that report quality
-- take the update when there is one.

CREATE TABLE IF NOT EXISTS event_quality
(
    request_id String,
    session_id Nullable(String),
    quality_score Float64,
    regenerated Bool,
    edited Bool,
    rating Nullable(Int8),
    version UInt64,
    raw_partition UInt32,
    updated_at DateTime64(6, 'UTC'),
    kafka_partition UInt32 DEFAULT 0,
    kafka_offset UInt64 DEFAULT 0,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY request_id
SETTINGS non_replicated_deduplication_window = 1000;

-- Every stored event with its current quality: the update's score and flags when feedback came.
CREATE OR REPLACE VIEW scored_events AS
SELECT
    e.event_id AS event_id,
    e.request_id AS request_id,
    e.session_id AS session_id,
    e.finished_at AS finished_at,
    e.provider AS provider,
    e.model_id AS model_id,
    e.feature_id AS feature_id,
    e.variant_id AS variant_id,
    e.status AS status,
    if(q.request_id = '', e.quality_score, q.quality_score) AS quality_score,
    if(q.request_id = '', e.regenerated, q.regenerated) AS regenerated,
    if(q.request_id = '', e.edited, q.edited) AS edited,
    if(q.request_id = '', e.rating, q.rating) AS rating,
    q.request_id != '' AS updated_by_feedback
FROM events AS e FINAL
LEFT JOIN (SELECT request_id, quality_score, regenerated, edited, rating FROM event_quality FINAL) AS q
    ON q.request_id = e.request_id;

-- Implicit quality signals per day, model and variant, with later feedback applied.
CREATE OR REPLACE VIEW quality_by_model_variant AS
SELECT
    toDate(s.finished_at) AS day,
    s.model_id AS model_id,
    ifNull(s.variant_id, '') AS variant_id,
    count() AS calls,
    avg(s.quality_score) AS quality_mean,
    countIf(s.regenerated) / count() AS regeneration_rate,
    countIf(s.edited) / count() AS edit_rate,
    count(s.rating) AS ratings,
    avg(s.rating) AS rating_mean
FROM scored_events AS s
GROUP BY day, model_id, variant_id;
