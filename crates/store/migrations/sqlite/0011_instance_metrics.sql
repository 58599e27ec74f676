-- Business metrics a workload pushes through its metadata endpoint (the SDK's log_metrics): a
-- named value at a time, with the training step when given.
CREATE TABLE instance_metrics (
    instance_id  TEXT NOT NULL REFERENCES instances(id),
    at           INTEGER NOT NULL,
    step         INTEGER,
    name         TEXT NOT NULL,
    value        REAL NOT NULL
);
CREATE INDEX instance_metrics_by_instance ON instance_metrics (instance_id, name, at);
