-- GPU telemetry history (the infrastructure tier), one row per GPU per sample and per holder:
-- a GPU held whole has one row with its instance, a sliced GPU one row per slice holder (so an
-- instance's own history is one indexed read), a free GPU one row with instance_id ''.
-- Fleet views read one row per (node, GPU, time). Pruned past the retention.
CREATE TABLE gpu_samples (
    node_id            TEXT NOT NULL,
    gpu_index          INTEGER NOT NULL,
    at                 INTEGER NOT NULL,
    instance_id        TEXT NOT NULL,
    temperature_c      REAL NOT NULL,
    power_w            REAL NOT NULL,
    energy_mj          INTEGER NOT NULL,
    memory_used_mib    INTEGER NOT NULL,
    utilization_pct    REAL NOT NULL,
    xid                INTEGER,
    ecc_uncorrectable  INTEGER NOT NULL,
    PRIMARY KEY (node_id, gpu_index, at, instance_id)
);
CREATE INDEX gpu_samples_by_instance ON gpu_samples (instance_id, at);
CREATE INDEX gpu_samples_by_time ON gpu_samples (at);
CREATE INDEX instance_metrics_by_time ON instance_metrics (at);

-- Idle detection per tenant: an instance whose GPUs all stay under idle_percent utilization for
-- idle_minutes is flagged (an alert), and stopped when the tenant opted in (idle_stop = 1).
ALTER TABLE tenant_billing ADD COLUMN idle_percent BIGINT NOT NULL DEFAULT 5;
ALTER TABLE tenant_billing ADD COLUMN idle_minutes BIGINT NOT NULL DEFAULT 30;
ALTER TABLE tenant_billing ADD COLUMN idle_stop BIGINT NOT NULL DEFAULT 0;
