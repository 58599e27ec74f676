-- A tenant's SSH public keys: any of them opens a session in any of the tenant's running
-- instances (the agent's SSH server is given them with each heartbeat). Public keys only: a
-- private key is never sent to the server.
CREATE TABLE ssh_keys (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    -- The key without its comment, as nodes are given it.
    public_key  TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    comment     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name),
    UNIQUE (tenant_id, fingerprint)
);

-- Where a node's agent serves SSH (container runtime only), and its host key for clients'
-- known_hosts.
ALTER TABLE nodes ADD COLUMN ssh_port INTEGER;
ALTER TABLE nodes ADD COLUMN ssh_host_key TEXT;
