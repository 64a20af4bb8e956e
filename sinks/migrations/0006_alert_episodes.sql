-- Alerts as episodes (Alert v3): a condition that starts to hold opens an episode (a `firing`
-- record), which ends when it clears (a `resolved` record with the same episode_id). Per-call and
-- per-session breaches stay in the same table as `fact`s, which nobody is notified of; records
-- before Alert v3 read as facts.
--
-- A firing record is sent again under the same alert_id when its peak grows, so the table keeps
-- the latest; the resolved record carries the episode's final peak and when the condition cleared.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS state LowCardinality(String) DEFAULT 'fact' AFTER raw_partition;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS episode_id Nullable(String) AFTER state;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS started_at Nullable(DateTime64(6, 'UTC')) AFTER episode_id;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS ended_at Nullable(DateTime64(6, 'UTC')) AFTER started_at;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS peak Nullable(Float64) AFTER ended_at;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS feature_id LowCardinality(Nullable(String)) AFTER peak;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS environment LowCardinality(Nullable(String)) AFTER feature_id;

-- One row per episode: when its condition began to hold, when it fired, when it cleared and was
-- resolved (NULL while open), its peak and its latest observed value and message.
CREATE VIEW IF NOT EXISTS alert_episodes AS
SELECT
    episode_id,
    any(rule) AS rule,
    any(rules_version) AS rules_version,
    argMax(severity, at) AS severity,
    any(subject_kind) AS subject_kind,
    any(subject) AS subject,
    any(provider) AS provider,
    any(model_id) AS model_id,
    any(feature_id) AS feature_id,
    any(environment) AS environment,
    min(started_at) AS started_at,
    minIfOrNull(at, state = 'firing') AS fired_at,
    maxIfOrNull(ended_at, state = 'resolved') AS ended_at,
    maxIfOrNull(at, state = 'resolved') AS resolved_at,
    countIf(state = 'resolved') = 0 AS open,
    argMax(peak, (state = 'resolved', at)) AS peak,
    argMax(observed, (state = 'resolved', at)) AS observed,
    any(threshold) AS threshold,
    argMax(baseline, (state = 'resolved', at)) AS baseline,
    argMax(message, (state = 'resolved', at)) AS message
FROM alerts FINAL
WHERE state IN ('firing', 'resolved') AND episode_id IS NOT NULL
GROUP BY episode_id;

-- The episodes still open, longest first: what is firing now.
CREATE VIEW IF NOT EXISTS open_alert_episodes AS
SELECT *
FROM alert_episodes
WHERE open
ORDER BY started_at;
