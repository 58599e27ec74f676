-- The market: how an instance is sold (tier, a spot bid), its preemption notice, the checkpoints
-- its workload reported, and managed jobs that relaunch their work after a preemption.
ALTER TABLE instances ADD COLUMN tier TEXT NOT NULL DEFAULT 'on-demand';
-- A spot instance's bid, micro-units per GPU-hour: preempted when the spot price rises above it.
ALTER TABLE instances ADD COLUMN max_price_micros BIGINT;
-- Extra environment for the workload, a JSON object (managed jobs: GPUCLOUD_RESUME_FROM...).
ALTER TABLE instances ADD COLUMN env TEXT;
ALTER TABLE instances ADD COLUMN job_id TEXT;
ALTER TABLE instances ADD COLUMN attempt BIGINT;
-- When the current run became billable: how much work a preemption would cost.
ALTER TABLE instances ADD COLUMN running_since BIGINT;
-- A preemption notice: decided at notice_at; the deadline (preempt_at) counts notice_ms from the
-- moment the agent carried it to the node, so the workload always gets the full notice.
ALTER TABLE instances ADD COLUMN notice_at BIGINT;
ALTER TABLE instances ADD COLUMN notice_ms BIGINT;
ALTER TABLE instances ADD COLUMN notice_reason TEXT;
ALTER TABLE instances ADD COLUMN preempt_at BIGINT;
ALTER TABLE instances ADD COLUMN checkpoint TEXT;
ALTER TABLE instances ADD COLUMN checkpoint_at BIGINT;
CREATE INDEX instances_by_job ON instances (job_id);
CREATE INDEX instances_by_tier ON instances (tier, state);

-- A managed job: a command that runs until it succeeds, relaunched after each preemption or
-- node loss (up to max_restarts) from its latest checkpoint. spec is the JSON of what was asked.
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    name            TEXT NOT NULL,
    spec            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    checkpoint      TEXT,
    reason          TEXT,
    generation      BIGINT NOT NULL,
    idempotency_key TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX jobs_by_tenant ON jobs (tenant_id, created_at);
CREATE INDEX jobs_by_state ON jobs (state);
