-- Reservations: N GPUs of a model in a region, from-to, sold to a tenant at a discounted rate.
-- The owner pays for the capacity whether used or not (billed per period as it elapses, one
-- ledger entry per period under an idempotency key); while it sits idle it is lent out as spot,
-- and the owner is credited lend_share_pct of what that earned (lent_revenue_micros, accrued by
-- the market's tick; credited_micros is what the ledger already holds).
CREATE TABLE reservations (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id),
    gpu_model            TEXT NOT NULL,
    region               TEXT NOT NULL,
    gpus                 BIGINT NOT NULL CHECK (gpus > 0),
    starts_at            BIGINT NOT NULL,
    ends_at              BIGINT NOT NULL CHECK (ends_at > starts_at),
    price_micros         BIGINT NOT NULL CHECK (price_micros >= 0),
    lend_share_pct       BIGINT NOT NULL CHECK (lend_share_pct BETWEEN 0 AND 100),
    lent_gpu_ms          BIGINT NOT NULL DEFAULT 0,
    lent_revenue_micros  BIGINT NOT NULL DEFAULT 0,
    -- Periods billed so far, and the lending credit posted so far (moved with the ledger entries,
    -- in their transaction).
    billed_periods       BIGINT NOT NULL DEFAULT 0,
    credited_micros      BIGINT NOT NULL DEFAULT 0,
    created_at           BIGINT NOT NULL
);
CREATE INDEX reservations_by_pool ON reservations (gpu_model, region, ends_at);
CREATE INDEX reservations_by_tenant ON reservations (tenant_id, starts_at);
