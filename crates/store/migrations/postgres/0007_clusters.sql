-- Clusters: a tenant's group of identical members (instances of gpus_per_node GPUs each, one node
-- each) that it resizes between min_nodes and max_nodes. Members are instances with cluster_id
-- and their rank; ranks stay 0..size-1 (scale-down removes the highest).
CREATE TABLE clusters (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    name            TEXT NOT NULL,
    gpu_model       TEXT NOT NULL,
    region          TEXT,
    gpus_per_node   BIGINT NOT NULL CHECK (gpus_per_node > 0),
    min_nodes       BIGINT NOT NULL CHECK (min_nodes >= 1),
    max_nodes       BIGINT NOT NULL CHECK (max_nodes >= min_nodes),
    target_nodes    BIGINT NOT NULL,
    command         TEXT NOT NULL,
    tier            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('active', 'deleted')),
    -- Bumped by every resize: members carry the epoch they were launched for.
    epoch           BIGINT NOT NULL,
    generation      BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX clusters_by_name ON clusters (tenant_id, name) WHERE state = 'active';
ALTER TABLE instances ADD COLUMN cluster_id TEXT;
ALTER TABLE instances ADD COLUMN cluster_rank BIGINT;
CREATE INDEX instances_by_cluster ON instances (cluster_id);
-- Where a node's agent can be reached by its peers (a member's MASTER_ADDR); its name if unset.
ALTER TABLE nodes ADD COLUMN address TEXT;
