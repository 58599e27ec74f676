-- A tenant's volumes: storage that outlives instances. A volume lives on the node where its first
-- instance was placed (node_id NULL until then) and every later instance that mounts it is
-- placed there. It is attached to one live instance at a time (instance_id; an instance that is
-- terminated no longer holds it). Billed per GiB-hour from creation until deletion: charged and
-- charged_seconds are what metering has posted so far, settled once the deletion is billed.
CREATE TABLE volumes (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    name             TEXT NOT NULL,
    region           TEXT NOT NULL,
    size_gib         BIGINT NOT NULL,
    node_id          TEXT,
    instance_id      TEXT,
    created_at       BIGINT NOT NULL,
    deleted_at       BIGINT,
    purged_at        BIGINT,
    charged_micros   BIGINT NOT NULL DEFAULT 0,
    charged_seconds  BIGINT NOT NULL DEFAULT 0,
    settled          BIGINT NOT NULL DEFAULT 0
);
-- A name is taken only while its volume exists.
CREATE UNIQUE INDEX volumes_live_name ON volumes (tenant_id, name) WHERE deleted_at IS NULL;
CREATE INDEX volumes_by_node ON volumes (node_id);

-- The volume an instance mounts, and where ("data:/workspace").
ALTER TABLE instances ADD COLUMN volume_id TEXT;
ALTER TABLE instances ADD COLUMN volume_mount TEXT;

-- The price of a GiB-hour of volume storage per region, from a time on (like GPU prices: the
-- past is never rewritten).
CREATE TABLE storage_prices (
    region                TEXT NOT NULL,
    effective_from        BIGINT NOT NULL,
    per_gib_hour_micros   BIGINT NOT NULL,
    PRIMARY KEY (region, effective_from)
);
