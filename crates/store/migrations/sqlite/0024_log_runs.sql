-- Where a run's log numbering starts: the agent numbers each run's chunks from 1, and the store
-- files them after everything earlier runs left, so a restarted workload's output is kept.
ALTER TABLE instances ADD COLUMN log_base BIGINT NOT NULL DEFAULT 0;
