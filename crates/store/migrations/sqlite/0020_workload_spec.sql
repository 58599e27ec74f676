-- What a tenant's workload runs in and with: its container image (NULL: the node's default),
-- the ports it exposes ("8888/http,22/tcp"), and what the agent says while preparing it
-- ("pulling image ...: 45%"), cleared once it runs.
ALTER TABLE instances ADD COLUMN image TEXT;
ALTER TABLE instances ADD COLUMN ports TEXT;
ALTER TABLE instances ADD COLUMN progress TEXT;
-- Where each exposed port is published on its node while it runs ("8888=31234,22=31235").
ALTER TABLE instances ADD COLUMN published TEXT;

-- A tenant's secrets, sealed with the server's key (ChaCha20-Poly1305, bound to the tenant and
-- the name): the plaintext is never stored, and leaves the server only to the agent that starts
-- a workload referring to it.
CREATE TABLE secrets (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- Where a node's agent takes the server's proxy connections to workloads' HTTP ports, and the
-- secret those connections are signed with (made at each registration; never shown by the API).
ALTER TABLE nodes ADD COLUMN ingress_port INTEGER;
ALTER TABLE nodes ADD COLUMN ingress_secret TEXT;

-- A tenant's instance templates: what to run and with what (image, command, environment,
-- secrets, ports), as the JSON of the template request. Built-in templates live in the code.
CREATE TABLE templates (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- A tenant's credentials for private registries, the password sealed like a secret (bound to
-- the tenant and the registry). Given to a node only with a workload whose image is there.
CREATE TABLE registry_auths (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    registry    TEXT NOT NULL,
    username    TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, registry)
);
