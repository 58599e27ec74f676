-- A tenant (an organization) divides its work into projects. Every tenant has the project
-- 'default' without a row here; rows are the projects it made. What runs belongs to a project
-- by name (instances, clusters, warm pools and volumes here, managed jobs in their spec), and a
-- key may be scoped to one.
CREATE TABLE projects (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    -- The highest priority class its work may ask for.
    max_priority TEXT NOT NULL DEFAULT 'production',
    -- A monthly spending limit (micro-units): creates in the project are refused once its
    -- month's usage reaches it. 'default' gets a row only when it is given one.
    monthly_budget_micros INTEGER,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- A project's GPUs of one model: at most gpu_limit held or queued at once (in thousandths of a
-- GPU, so slices count for their share), guaranteed of them its deserved share. Admission locks
-- this row, so concurrent creates against one limit are counted one after the other.
CREATE TABLE project_quotas (
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    project         TEXT NOT NULL,
    gpu_model       TEXT NOT NULL,
    limit_milli     INTEGER NOT NULL,
    guaranteed_milli INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, project, gpu_model)
);

ALTER TABLE instances ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
-- 1: created with "wait for quota" while its project was at its limit; not scheduled (and not
-- counted against the limit) until admission lets it in, oldest first.
ALTER TABLE instances ADD COLUMN quota_held INTEGER NOT NULL DEFAULT 0;
-- batch, default or production: the scheduler serves higher classes first (with aging).
ALTER TABLE instances ADD COLUMN priority TEXT NOT NULL DEFAULT 'default';
ALTER TABLE clusters ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
ALTER TABLE volumes ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
ALTER TABLE warm_pools ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
ALTER TABLE api_keys ADD COLUMN project TEXT;
CREATE INDEX instances_by_project ON instances (tenant_id, project, gpu_model);
CREATE INDEX instances_quota_held ON instances (created_at) WHERE quota_held = 1;

-- Per-key rate limits shared by every replica: a key's token bucket (in thousandths of a
-- token). Replicas take tokens in small batches, so a request writes here rarely.
CREATE TABLE rate_buckets (
    key_id      TEXT PRIMARY KEY,
    milli       INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
