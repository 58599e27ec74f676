-- Warm pools: a tenant keeps `size` instances of a template started (tier 'warm', billed at the
-- price book's warm rate); a request for the pool is handed one that already runs, its billing
-- switched to on-demand at that instant, and the pool refills.
CREATE TABLE warm_pools (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    name          TEXT NOT NULL,
    gpu_model     TEXT NOT NULL,
    region        TEXT,
    gpu_count     BIGINT NOT NULL CHECK (gpu_count > 0),
    command       TEXT NOT NULL,
    size          BIGINT NOT NULL CHECK (size >= 0),
    state         TEXT NOT NULL CHECK (state IN ('active', 'deleted')),
    created_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX warm_pools_by_name ON warm_pools (tenant_id, name) WHERE state = 'active';
ALTER TABLE instances ADD COLUMN pool_id TEXT;
CREATE INDEX instances_by_pool ON instances (pool_id);
