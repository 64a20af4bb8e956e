-- Alerts carry the baseline they were judged against (the insights' anomalies), from Alert v2 on.
-- Version 1 alerts read it as NULL.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS baseline Nullable(Float64) AFTER threshold;
