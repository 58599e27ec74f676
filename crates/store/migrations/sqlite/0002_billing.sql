-- Billing: settings, the price book, usage intervals, and the append-only double-entry ledger.
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- A price applies from effective_from until the next point for the same model, region and tier.
CREATE TABLE prices (
    gpu_model            TEXT NOT NULL,
    region               TEXT NOT NULL,
    tier                 TEXT NOT NULL,
    effective_from       INTEGER NOT NULL,
    per_gpu_hour_micros  INTEGER NOT NULL CHECK (per_gpu_hour_micros >= 0),
    created_at           INTEGER NOT NULL,
    PRIMARY KEY (gpu_model, region, tier, effective_from)
);

-- One row per stretch of billable time (running or stopping). Opened and closed in the same
-- transaction as the instance state change; charged_* say what the ledger already holds for it.
CREATE TABLE usage_intervals (
    id              TEXT PRIMARY KEY,
    instance_id     TEXT NOT NULL REFERENCES instances(id),
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    gpu_model       TEXT NOT NULL,
    region          TEXT NOT NULL,
    tier            TEXT NOT NULL,
    milli_gpus      INTEGER NOT NULL CHECK (milli_gpus > 0),
    started_at      INTEGER NOT NULL,
    ended_at        INTEGER,
    granularity_s   INTEGER NOT NULL,
    minimum_s       INTEGER NOT NULL,
    charged_micros  INTEGER NOT NULL,
    charged_seconds INTEGER NOT NULL,
    settled         INTEGER NOT NULL
);
CREATE INDEX usage_unsettled ON usage_intervals (settled);
CREATE INDEX usage_by_instance ON usage_intervals (instance_id);

CREATE TABLE ledger_entries (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    kind             TEXT NOT NULL,
    memo             TEXT NOT NULL,
    instance_id      TEXT,
    interval_id      TEXT,
    gpu_model        TEXT,
    seconds          INTEGER NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    created_at       INTEGER NOT NULL
);
CREATE INDEX ledger_by_tenant ON ledger_entries (tenant_id, created_at);

CREATE TABLE ledger_postings (
    entry_id       TEXT NOT NULL REFERENCES ledger_entries(id),
    account        TEXT NOT NULL,
    currency       TEXT NOT NULL,
    amount_micros  INTEGER NOT NULL
);
CREATE INDEX postings_by_account ON ledger_postings (account);
CREATE INDEX postings_by_entry ON ledger_postings (entry_id);

-- Append-only: corrections are new entries, never edits.
CREATE TRIGGER ledger_entries_append_only_u BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_entries_append_only_d BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_postings_append_only_u BEFORE UPDATE ON ledger_postings
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_postings_append_only_d BEFORE DELETE ON ledger_postings
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;

-- Every state change of every instance, written in the same transaction as the change: the
-- history that billing is checked against.
CREATE TABLE instance_events (
    instance_id  TEXT NOT NULL REFERENCES instances(id),
    generation   INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    PRIMARY KEY (instance_id, generation)
);

-- A closed month's invoice: the document as issued. Written once, never changed.
CREATE TABLE invoices (
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    month         TEXT NOT NULL,
    total_micros  INTEGER NOT NULL,
    closed_at     INTEGER NOT NULL,
    document      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, month)
);
CREATE TRIGGER invoices_immutable_u BEFORE UPDATE ON invoices
BEGIN SELECT RAISE(ABORT, 'a closed invoice is immutable'); END;
CREATE TRIGGER invoices_immutable_d BEFORE DELETE ON invoices
BEGIN SELECT RAISE(ABORT, 'a closed invoice is immutable'); END;

-- Per-tenant money settings: prepaid (stop before the balance goes negative) and a monthly budget.
CREATE TABLE tenant_billing (
    tenant_id      TEXT PRIMARY KEY REFERENCES tenants(id),
    prepaid        INTEGER NOT NULL,
    budget_micros  INTEGER,
    thresholds     TEXT NOT NULL,
    action         TEXT NOT NULL CHECK (action IN ('notify', 'checkpoint-and-stop')),
    webhook_url    TEXT
);

-- Alerts raised for tenants; dedupe_key makes each one fire once (per threshold per month, ...).
CREATE TABLE alerts (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL,
    dedupe_key  TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE INDEX alerts_by_tenant ON alerts (tenant_id, created_at);
