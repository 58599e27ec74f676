//! Persistence of the money: billing rules, the price book, usage intervals and their charges,
//! the ledger with its kept balances, invoices, tenants' money settings and alerts. Kept apart
//! from `sql.rs`, behind its own trait that every `Store` also implements.

use crate::billing_rows::*;
use crate::sql::{SqlStore, corrupt, parse};
use crate::*;
use async_trait::async_trait;
use gpucloud_billing::{Account, EntryKind, PricePoint, Rules};
use gpucloud_model::{GpuModel, Money, Region, TenantId, Tier, Timestamp};
use sqlx::{Acquire, Row};
use std::collections::HashMap;

#[async_trait]
pub trait LedgerStore: Send + Sync {
    async fn billing_rules(&self) -> Result<gpucloud_billing::Rules>;
    /// Applies to usage that starts from now on; running intervals keep the rules they began with.
    async fn set_billing_rules(&self, rules: gpucloud_billing::Rules) -> Result<()>;
    /// Adds a price point; false if one exists for the same key and time.
    async fn add_price(&self, price: &PriceRow, at: Timestamp) -> Result<bool>;
    async fn list_prices(&self) -> Result<Vec<PriceRow>>;
    async fn prices_for(
        &self,
        model: gpucloud_model::GpuModel,
        region: &Region,
        tier: gpucloud_model::Tier,
    ) -> Result<Vec<gpucloud_billing::PricePoint>>;

    /// Intervals whose charge may still grow: open ones, and closed ones not yet fully charged.
    async fn unsettled_intervals(&self) -> Result<Vec<UsageInterval>>;
    async fn unsettled_intervals_of(&self, tenant: &TenantId) -> Result<Vec<UsageInterval>>;
    /// Unsettled intervals that have ended: what metering settles between posting points.
    async fn ended_unsettled_intervals(&self) -> Result<Vec<UsageInterval>>;
    /// Up to `limit` running intervals that started before `point` and are not yet posted
    /// through it.
    async fn intervals_to_post(&self, point: Timestamp, limit: u32) -> Result<Vec<UsageInterval>>;
    async fn intervals_of_tenant(&self, tenant: &TenantId) -> Result<Vec<UsageInterval>>;
    /// Moves each interval's charge from what the caller read (`charged_seconds`, `charged`) to
    /// its new charge, posting the difference to the ledger, all in one transaction. An item is
    /// false when someone else charged that interval meanwhile, or its entry's key was used
    /// before, or it names an interval an earlier item of the batch moved (nothing of it written).
    async fn charge_intervals(&self, items: &[ChargeItem]) -> Result<Vec<bool>>;

    async fn charge_interval(
        &self,
        interval: &UsageInterval,
        charge: gpucloud_billing::Charge,
        settled: bool,
        record: Option<&LedgerRecord>,
    ) -> Result<bool> {
        let item =
            ChargeItem { interval: interval.clone(), charge, settled, record: record.cloned(), posted_through: None };
        Ok(self.charge_intervals(std::slice::from_ref(&item)).await?.pop().unwrap_or(false))
    }
    /// Appends an entry; false if its idempotency key was used before (nothing written).
    async fn post_ledger(&self, record: &LedgerRecord) -> Result<bool>;
    /// The tenant's prepaid balance: the sum of postings to its credit account.
    async fn balance(&self, tenant: &TenantId) -> Result<gpucloud_model::Money>;
    /// The tenant's balance counting only entries created before `before`.
    async fn balance_before(&self, tenant: &TenantId, before: Timestamp) -> Result<gpucloud_model::Money>;
    /// The sum of every posting, per currency: zero when the books balance.
    async fn ledger_totals(&self) -> Result<Vec<(String, gpucloud_model::Money)>>;
    /// Usage posted to a tenant in a UTC month (`YYYYMM`, see `year_month`), as a positive amount.
    async fn usage_in_month(&self, tenant: &TenantId, year_month: i64) -> Result<gpucloud_model::Money>;
    /// Every tenant's balance and usage posted in a UTC month, in two reads: what a pass over
    /// the whole fleet's books reads instead of two per tenant. Tenants with neither are absent.
    async fn tenant_totals(&self, year_month: i64) -> Result<HashMap<TenantId, TenantTotals>>;
    /// Posts many entries in one transaction (imports, benchmarks); returns how many were new.
    async fn post_ledger_batch(&self, records: &[LedgerRecord]) -> Result<usize>;
    /// What a billing audit needs from the ledger as a whole.
    async fn ledger_audit(&self) -> Result<LedgerAudit>;
    async fn ledger_lines(&self, tenant: &TenantId, from: Timestamp, to: Timestamp) -> Result<Vec<LedgerLine>>;

    /// Stores a closed invoice; false if that tenant's month was closed before (nothing written).
    async fn insert_invoice(&self, invoice: &StoredInvoice) -> Result<bool>;
    async fn get_invoice(&self, tenant: &TenantId, month: &str) -> Result<Option<StoredInvoice>>;
    /// Closed invoices of a tenant, oldest first.
    async fn list_invoices(&self, tenant: &TenantId) -> Result<Vec<StoredInvoice>>;

    /// A tenant's money settings; the defaults when never set.
    async fn tenant_billing(&self, tenant: &TenantId) -> Result<TenantBilling>;
    async fn set_tenant_billing(&self, settings: &TenantBilling) -> Result<()>;
    /// Settings of every tenant that has a budget or is prepaid.
    async fn guarded_tenants(&self) -> Result<Vec<TenantBilling>>;
    /// Raises an alert; false if one with its dedupe key exists (nothing written).
    async fn raise_alert(&self, alert: &Alert) -> Result<bool>;
    async fn list_alerts(&self, tenant: &TenantId) -> Result<Vec<Alert>>;
}

#[async_trait]
impl LedgerStore for SqlStore {
    async fn billing_rules(&self) -> Result<Rules> {
        let mut conn = self.pool.acquire().await?;
        rules_in(&mut conn).await
    }

    async fn set_billing_rules(&self, rules: Rules) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (key, value) in [(GRANULARITY_KEY, rules.granularity_s), (MINIMUM_KEY, rules.minimum_s)] {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2")
                .bind(key)
                .bind(value.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn add_price(&self, p: &PriceRow, at: Timestamp) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO prices (gpu_model, region, tier, effective_from, per_gpu_hour_micros, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (gpu_model, region, tier, effective_from) DO NOTHING",
        )
        .bind(p.model.name())
        .bind(p.region.to_string())
        .bind(p.tier.as_str())
        .bind(p.point.effective_from.0)
        .bind(p.point.per_gpu_hour.micros())
        .bind(at.0)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn list_prices(&self) -> Result<Vec<PriceRow>> {
        let rows = sqlx::query(
            "SELECT gpu_model, region, tier, effective_from, per_gpu_hour_micros FROM prices \
             ORDER BY region, gpu_model, tier, effective_from",
        )
        .fetch_all(&self.pool)
        .await?;
        let t = "prices";
        rows.iter()
            .map(|r| {
                Ok(PriceRow {
                    model: parse::<GpuModel>(t, &r.try_get::<String, _>(0)?)?,
                    region: Region::parse(&r.try_get::<String, _>(1)?).map_err(|e| corrupt(t, e))?,
                    tier: parse::<Tier>(t, &r.try_get::<String, _>(2)?)?,
                    point: PricePoint { effective_from: Timestamp(r.try_get(3)?), per_gpu_hour: Money(r.try_get(4)?) },
                })
            })
            .collect()
    }

    async fn prices_for(&self, model: GpuModel, region: &Region, tier: Tier) -> Result<Vec<PricePoint>> {
        let rows = sqlx::query(
            "SELECT effective_from, per_gpu_hour_micros FROM prices \
             WHERE gpu_model = $1 AND region = $2 AND tier = $3 ORDER BY effective_from",
        )
        .bind(model.name())
        .bind(region.to_string())
        .bind(tier.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(PricePoint { effective_from: Timestamp(r.try_get(0)?), per_gpu_hour: Money(r.try_get(1)?) }))
            .collect()
    }

    async fn unsettled_intervals(&self) -> Result<Vec<UsageInterval>> {
        let sql = format!("{UNSETTLED} ORDER BY u.started_at, u.id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(interval_from_row).collect()
    }

    async fn ended_unsettled_intervals(&self) -> Result<Vec<UsageInterval>> {
        let sql = format!("{UNSETTLED} AND u.ended_at IS NOT NULL ORDER BY u.started_at, u.id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(interval_from_row).collect()
    }

    async fn intervals_to_post(&self, point: Timestamp, limit: u32) -> Result<Vec<UsageInterval>> {
        let sql = format!(
            "{UNSETTLED} AND u.posted_through < $1 AND u.ended_at IS NULL AND u.started_at < $1 \
             ORDER BY u.posted_through, u.id LIMIT {limit}"
        );
        let rows = sqlx::query(&sql).bind(point.0).fetch_all(&self.pool).await?;
        rows.iter().map(interval_from_row).collect()
    }

    async fn unsettled_intervals_of(&self, tenant: &TenantId) -> Result<Vec<UsageInterval>> {
        let sql = format!("{UNSETTLED} AND u.tenant_id = $1 ORDER BY u.started_at, u.id");
        let rows = sqlx::query(&sql).bind(tenant.to_string()).fetch_all(&self.pool).await?;
        rows.iter().map(interval_from_row).collect()
    }

    async fn intervals_of_tenant(&self, tenant: &TenantId) -> Result<Vec<UsageInterval>> {
        let sql =
            format!("SELECT {INTERVAL_COLUMNS} FROM usage_intervals WHERE tenant_id = $1 ORDER BY started_at, id");
        let rows = sqlx::query(&sql).bind(tenant.to_string()).fetch_all(&self.pool).await?;
        rows.iter().map(interval_from_row).collect()
    }

    async fn charge_intervals(&self, items: &[ChargeItem]) -> Result<Vec<bool>> {
        // A pass's charges in a few multi-row statements: one compare-and-set of every interval,
        // then the moved ones' entries. Per interval (a savepoint and four to six statements) a
        // posting point of 10,000 running instances took half a minute on PostgreSQL.
        let mut ids = std::collections::HashSet::with_capacity(items.len());
        if items.iter().all(|i| ids.insert(i.interval.id.as_str())) {
            let mut tx = self.pool.begin().await?;
            let moved = charge_bulk(&mut tx, items).await?;
            let records: Vec<LedgerRecord> =
                items.iter().filter(|i| moved.contains(&i.interval.id)).filter_map(|i| i.record.clone()).collect();
            if insert_ledger_bulk(&mut tx, &records).await? == records.len() {
                tx.commit().await?;
                return Ok(items.iter().map(|i| moved.contains(&i.interval.id)).collect());
            }
            // An entry's key was used before: that interval must not move. Rare (a retried
            // pass), so the whole batch goes again one interval at a time.
            tx.rollback().await?;
        }
        // One commit per metering pass (one fsync on SQLite) instead of one per interval.
        let mut tx = self.pool.begin().await?;
        let mut done = Vec::with_capacity(items.len());
        let mut totals = TotalsDelta::default();
        for item in items {
            let mut savepoint = tx.begin().await?;
            match charge_one(&mut savepoint, item).await? {
                Some(delta) => {
                    savepoint.commit().await?;
                    totals.merge(delta);
                    done.push(true);
                }
                None => {
                    savepoint.rollback().await?;
                    done.push(false);
                }
            }
        }
        totals.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn post_ledger(&self, record: &LedgerRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if !insert_ledger(&mut tx, record).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn balance(&self, tenant: &TenantId) -> Result<Money> {
        let sum: Option<i64> = sqlx::query_scalar("SELECT balance_micros FROM account_balances WHERE account = $1")
            .bind(Account::TenantCredit(tenant.clone()).to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(Money(sum.unwrap_or(0)))
    }

    async fn balance_before(&self, tenant: &TenantId, before: Timestamp) -> Result<Money> {
        let sum: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(p.amount_micros), 0) AS BIGINT) FROM ledger_postings p \
             JOIN ledger_entries e ON e.id = p.entry_id WHERE p.account = $1 AND e.created_at < $2",
        )
        .bind(Account::TenantCredit(tenant.clone()).to_string())
        .bind(before.0)
        .fetch_one(&self.pool)
        .await?;
        Ok(Money(sum))
    }

    async fn ledger_totals(&self) -> Result<Vec<(String, Money)>> {
        let rows = sqlx::query(
            "SELECT currency, CAST(SUM(amount_micros) AS BIGINT) FROM ledger_postings GROUP BY currency ORDER BY currency",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, Money(r.try_get(1)?)))).collect()
    }

    async fn usage_in_month(&self, tenant: &TenantId, year_month: i64) -> Result<Money> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT usage_micros FROM tenant_month_usage WHERE tenant_id = $1 AND month = $2")
                .bind(tenant.to_string())
                .bind(year_month)
                .fetch_optional(&self.pool)
                .await?;
        Ok(Money(v.unwrap_or(0)))
    }

    async fn tenant_totals(&self, year_month: i64) -> Result<HashMap<TenantId, TenantTotals>> {
        let mut totals: HashMap<TenantId, TenantTotals> = HashMap::new();
        let rows = sqlx::query("SELECT account, balance_micros FROM account_balances WHERE account LIKE 'tenant:%'")
            .fetch_all(&self.pool)
            .await?;
        for r in rows {
            let account: String = r.try_get(0)?;
            if let Ok(Account::TenantCredit(t)) = account.parse::<Account>() {
                totals.entry(t).or_default().balance = Money(r.try_get(1)?);
            }
        }
        let rows = sqlx::query("SELECT tenant_id, usage_micros FROM tenant_month_usage WHERE month = $1")
            .bind(year_month)
            .fetch_all(&self.pool)
            .await?;
        for r in rows {
            if let Ok(t) = TenantId::parse(&r.try_get::<String, _>(0)?) {
                totals.entry(t).or_default().month_usage = Money(r.try_get(1)?);
            }
        }
        Ok(totals)
    }

    async fn post_ledger_batch(&self, records: &[LedgerRecord]) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let new = insert_ledger_bulk(&mut tx, records).await?;
        tx.commit().await?;
        Ok(new)
    }

    async fn ledger_audit(&self) -> Result<LedgerAudit> {
        let unbalanced: Vec<String> = sqlx::query_scalar(
            "SELECT entry_id FROM ledger_postings GROUP BY entry_id HAVING SUM(amount_micros) <> 0 ORDER BY entry_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT s.account, CAST(COALESCE(b.balance_micros, 0) AS BIGINT), s.total FROM \
             (SELECT account, CAST(SUM(amount_micros) AS BIGINT) AS total FROM ledger_postings GROUP BY account) s \
             LEFT JOIN account_balances b ON b.account = s.account \
             WHERE b.balance_micros IS NULL OR b.balance_micros <> s.total ORDER BY s.account",
        )
        .fetch_all(&self.pool)
        .await?;
        let drift = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, Money(r.try_get(1)?), Money(r.try_get(2)?))))
            .collect::<Result<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT e.interval_id, CAST(SUM(p.amount_micros) AS BIGINT), CAST(SUM(e.seconds) AS BIGINT) \
             FROM ledger_entries e JOIN ledger_postings p ON p.entry_id = e.id AND p.account = 'tenant:' || e.tenant_id \
             WHERE e.kind = 'usage' AND e.interval_id IS NOT NULL GROUP BY e.interval_id ORDER BY e.interval_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let posted = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, Money(r.try_get(1)?), r.try_get(2)?)))
            .collect::<Result<Vec<_>>>()?;
        let entries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_entries").fetch_one(&self.pool).await?;
        Ok(LedgerAudit { unbalanced, drift, posted, entries: entries as u64 })
    }

    async fn ledger_lines(&self, tenant: &TenantId, from: Timestamp, to: Timestamp) -> Result<Vec<LedgerLine>> {
        let rows = sqlx::query(
            "SELECT e.id, e.kind, e.memo, e.instance_id, e.gpu_model, e.seconds, p.amount_micros, e.created_at \
             FROM ledger_entries e JOIN ledger_postings p ON p.entry_id = e.id AND p.account = $1 \
             WHERE e.tenant_id = $2 AND e.created_at >= $3 AND e.created_at < $4 ORDER BY e.created_at, e.id",
        )
        .bind(Account::TenantCredit(tenant.clone()).to_string())
        .bind(tenant.to_string())
        .bind(from.0)
        .bind(to.0)
        .fetch_all(&self.pool)
        .await?;
        let t = "ledger_entries";
        rows.iter()
            .map(|r| {
                let instance: Option<String> = r.try_get(3)?;
                let model: Option<String> = r.try_get(4)?;
                Ok(LedgerLine {
                    id: r.try_get(0)?,
                    kind: parse::<EntryKind>(t, &r.try_get::<String, _>(1)?)?,
                    memo: r.try_get(2)?,
                    instance_id: instance.map(|i| parse::<InstanceId>(t, &i)).transpose()?,
                    model: model.map(|m| parse::<GpuModel>(t, &m)).transpose()?,
                    seconds: r.try_get(5)?,
                    amount: Money(r.try_get(6)?),
                    created_at: Timestamp(r.try_get(7)?),
                })
            })
            .collect()
    }

    async fn insert_invoice(&self, inv: &StoredInvoice) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO invoices (tenant_id, month, total_micros, closed_at, document) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, month) DO NOTHING",
        )
        .bind(inv.tenant_id.to_string())
        .bind(&inv.month)
        .bind(inv.total.micros())
        .bind(inv.closed_at.0)
        .bind(&inv.document)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn get_invoice(&self, tenant: &TenantId, month: &str) -> Result<Option<StoredInvoice>> {
        let row = sqlx::query(
            "SELECT tenant_id, month, total_micros, closed_at, document FROM invoices WHERE tenant_id = $1 AND month = $2",
        )
        .bind(tenant.to_string())
        .bind(month)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| invoice_from_row(&r)).transpose()
    }

    async fn list_invoices(&self, tenant: &TenantId) -> Result<Vec<StoredInvoice>> {
        let rows = sqlx::query(
            "SELECT tenant_id, month, total_micros, closed_at, document FROM invoices WHERE tenant_id = $1 ORDER BY month",
        )
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(invoice_from_row).collect()
    }

    async fn tenant_billing(&self, tenant: &TenantId) -> Result<TenantBilling> {
        let row = sqlx::query(&format!("SELECT {TB_COLUMNS} FROM tenant_billing WHERE tenant_id = $1"))
            .bind(tenant.to_string())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => tenant_billing_from_row(&r),
            None => Ok(TenantBilling::default_for(tenant.clone())),
        }
    }

    async fn set_tenant_billing(&self, b: &TenantBilling) -> Result<()> {
        let thresholds: Vec<String> = b.thresholds.iter().map(u32::to_string).collect();
        sqlx::query(&format!(
            "INSERT INTO tenant_billing ({TB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (tenant_id) DO UPDATE SET \
             prepaid = $2, budget_micros = $3, thresholds = $4, action = $5, webhook_url = $6, idle_percent = $7, \
             idle_minutes = $8, idle_stop = $9, webhook_secret = $10, credit_limit_micros = $11"
        ))
        .bind(b.tenant_id.to_string())
        .bind(b.prepaid as i64)
        .bind(b.monthly_budget.map(|m| m.micros()))
        .bind(thresholds.join(","))
        .bind(b.action.as_str())
        .bind(b.webhook_url.clone())
        .bind(i64::from(b.idle.below_percent))
        .bind(i64::from(b.idle.minutes))
        .bind(b.idle.auto_stop as i64)
        .bind(b.webhook_secret.clone())
        .bind(b.credit_limit.map(|m| m.micros()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn guarded_tenants(&self) -> Result<Vec<TenantBilling>> {
        let rows = sqlx::query(&format!(
            "SELECT {TB_COLUMNS} FROM tenant_billing WHERE prepaid = 1 OR budget_micros IS NOT NULL \
             OR credit_limit_micros IS NOT NULL ORDER BY tenant_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tenant_billing_from_row).collect()
    }

    async fn raise_alert(&self, a: &Alert) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO alerts (id, tenant_id, kind, message, dedupe_key, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .bind(&a.id)
        .bind(a.tenant_id.to_string())
        .bind(&a.kind)
        .bind(&a.message)
        .bind(&a.dedupe_key)
        .bind(a.created_at.0)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn list_alerts(&self, tenant: &TenantId) -> Result<Vec<Alert>> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, kind, message, dedupe_key, created_at FROM alerts WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Alert {
                    id: r.try_get(0)?,
                    tenant_id: parse("alerts", &r.try_get::<String, _>(1)?)?,
                    kind: r.try_get(2)?,
                    message: r.try_get(3)?,
                    dedupe_key: r.try_get(4)?,
                    created_at: Timestamp(r.try_get(5)?),
                })
            })
            .collect()
    }
}
