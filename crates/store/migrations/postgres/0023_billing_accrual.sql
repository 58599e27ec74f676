-- Billing that accrues exactly and posts sparsely.
-- A spot interval's bid: no second of it is priced above this.
ALTER TABLE usage_intervals ADD COLUMN price_cap_micros BIGINT;
-- Wall-clock time already paid for by the instance's previous run (its minimum): this interval
-- is not billed before it, and has no minimum of its own.
ALTER TABLE usage_intervals ADD COLUMN free_until BIGINT;

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
