-- Billing that accrues exactly and posts sparsely.
-- A spot interval's bid: no second of it is priced above this.
ALTER TABLE usage_intervals ADD COLUMN price_cap_micros BIGINT;
-- Wall-clock time already paid for by the instance's previous run (its minimum): this interval
-- is not billed before it, and has no minimum of its own.
ALTER TABLE usage_intervals ADD COLUMN free_until BIGINT;
-- The latest posting point the interval's charge was posted through (0: none yet).
ALTER TABLE usage_intervals ADD COLUMN posted_through BIGINT NOT NULL DEFAULT 0;

-- A postpaid tenant may owe up to this much; beyond it, creates are refused and instances stop.
ALTER TABLE tenant_billing ADD COLUMN credit_limit_micros BIGINT;

-- Each account's balance, kept in the same transaction as every posting, so reading a balance
-- does not sum the whole ledger.
CREATE TABLE account_balances (
    account         TEXT PRIMARY KEY,
    balance_micros  BIGINT NOT NULL
);
INSERT INTO account_balances (account, balance_micros)
    SELECT account, CAST(SUM(amount_micros) AS BIGINT) FROM ledger_postings GROUP BY account;

-- Between posting points metering reads only the unsettled intervals that have ended, and a
-- tenant's balance reads its own unsettled intervals.
CREATE INDEX usage_unsettled_ended ON usage_intervals (settled, ended_at);
CREATE INDEX usage_to_post ON usage_intervals (settled, posted_through);
CREATE INDEX usage_unsettled_by_tenant ON usage_intervals (tenant_id, settled);

-- Usage posted per tenant per calendar month (UTC, YYYYMM), kept with every usage posting: a
-- month's usage so far is one row, not a sum over the month's entries.
CREATE TABLE tenant_month_usage (
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    month         BIGINT NOT NULL,
    usage_micros  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, month)
);
INSERT INTO tenant_month_usage (tenant_id, month, usage_micros)
    SELECT e.tenant_id, CAST(to_char(to_timestamp(e.created_at / 1000) AT TIME ZONE 'UTC', 'YYYYMM') AS BIGINT),
        CAST(-SUM(p.amount_micros) AS BIGINT)
    FROM ledger_entries e JOIN ledger_postings p ON p.entry_id = e.id AND p.account = 'tenant:' || e.tenant_id
    WHERE e.kind = 'usage' GROUP BY 1, 2;
