-- Tenants, API keys, nodes with their GPUs, instances, idempotency records.
-- Times are integer milliseconds since the Unix epoch (UTC).
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('operator', 'tenant')),
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    prefix      TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE nodes (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    region          TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('ready', 'cordoned', 'draining')),
    health          TEXT NOT NULL CHECK (health IN ('healthy', 'unhealthy', 'lost')),
    generation      INTEGER NOT NULL,
    last_heartbeat  INTEGER,
    created_at      INTEGER NOT NULL
);

CREATE TABLE instances (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    name            TEXT NOT NULL,
    region          TEXT,
    gpu_model       TEXT NOT NULL,
    gpu_count       INTEGER NOT NULL CHECK (gpu_count > 0),
    command         TEXT NOT NULL,
    state           TEXT NOT NULL,
    stop_target     TEXT,
    node_id         TEXT REFERENCES nodes(id),
    generation      INTEGER NOT NULL,
    pending_reason  TEXT,
    exit_code       INTEGER,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX instances_by_tenant ON instances (tenant_id, created_at);
CREATE INDEX instances_by_state ON instances (state, created_at);
CREATE INDEX instances_by_node ON instances (node_id);
CREATE INDEX nodes_by_region ON nodes (region);

-- One row per physical GPU; instance_id is the allocation. A GPU has one owner by construction.
CREATE TABLE gpus (
    node_id      TEXT NOT NULL REFERENCES nodes(id),
    idx          INTEGER NOT NULL,
    model        TEXT NOT NULL,
    uuid         TEXT NOT NULL UNIQUE,
    instance_id  TEXT REFERENCES instances(id),
    PRIMARY KEY (node_id, idx)
);
CREATE INDEX gpus_by_instance ON gpus (instance_id);

CREATE TABLE idempotency (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    -- The server process handling it: a key held by a process that is gone can be taken over.
    owner        TEXT NOT NULL,
    status       INTEGER,
    body         TEXT,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
