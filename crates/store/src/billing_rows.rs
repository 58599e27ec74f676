//! Billing rows: the rules in force, usage intervals, ledger entries, invoices and tenants'
//! billing settings as SQL reads and writes, shared by the store's trait implementations.

use crate::sql::{corrupt, parse};
use crate::{BudgetAction, ChargeItem, Instance, LedgerRecord, Result, StoredInvoice, TenantBilling, UsageInterval};
use gpucloud_billing::{CURRENCY, Rules};
use gpucloud_model::{GpuModel, Money, Region, Tier, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

pub(crate) const GRANULARITY_KEY: &str = "billing.granularity_s";
pub(crate) const MINIMUM_KEY: &str = "billing.minimum_s";

pub(crate) const INTERVAL_COLUMNS: &str = "id, instance_id, tenant_id, gpu_model, region, tier, milli_gpus, started_at, ended_at, \
    granularity_s, minimum_s, charged_micros, charged_seconds, settled, price_cap_micros, free_until, CAST(NULL AS BIGINT)";

/// Unsettled intervals with the last heartbeat of the node each runs on: a silent node's
/// instances accrue no further than its last sign of life and the grace.
pub(crate) const UNSETTLED: &str = "SELECT u.id, u.instance_id, u.tenant_id, u.gpu_model, u.region, u.tier, u.milli_gpus, \
    u.started_at, u.ended_at, u.granularity_s, u.minimum_s, u.charged_micros, u.charged_seconds, u.settled, \
    u.price_cap_micros, u.free_until, n.last_heartbeat FROM usage_intervals u \
    LEFT JOIN instances i ON i.id = u.instance_id LEFT JOIN nodes n ON n.id = i.node_id WHERE u.settled = 0";

const INSERT_COLUMNS: &str = "id, instance_id, tenant_id, gpu_model, region, tier, milli_gpus, started_at, ended_at, \
    granularity_s, minimum_s, charged_micros, charged_seconds, settled, price_cap_micros, free_until";

pub(crate) async fn rules_in(conn: &mut sqlx::AnyConnection) -> Result<Rules> {
    let rows = sqlx::query("SELECT key, value FROM settings WHERE key IN ($1, $2)")
        .bind(GRANULARITY_KEY)
        .bind(MINIMUM_KEY)
        .fetch_all(&mut *conn)
        .await?;
    let mut rules = Rules::default();
    for r in rows {
        let key: String = r.try_get(0)?;
        let value: i64 = parse("settings", &r.try_get::<String, _>(1)?)?;
        if key == GRANULARITY_KEY {
            rules.granularity_s = value;
        } else {
            rules.minimum_s = value;
        }
    }
    Ok(rules)
}

pub(crate) async fn open_interval(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    inst: &Instance,
    generation: i64,
    at: Timestamp,
) -> Result<()> {
    let Some(node) = &inst.node_id else {
        return Err(corrupt("instances", format!("{} became billable without a node", inst.id)));
    };
    let region: String = sqlx::query_scalar("SELECT region FROM nodes WHERE id = $1")
        .bind(node.to_string())
        .fetch_one(&mut **tx)
        .await?;
    let mut rules = rules_in(tx).await?;
    // A start while the previous run's paid time is left runs free until it, with no minimum
    // of its own: stopping and starting within a minute pays the minimum once, not twice.
    let prev = sqlx::query(
        "SELECT started_at, ended_at, granularity_s, minimum_s, free_until FROM usage_intervals \
         WHERE instance_id = $1 AND ended_at IS NOT NULL ORDER BY started_at DESC LIMIT 1",
    )
    .bind(inst.id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    let mut free_until = None;
    if let Some(p) = prev {
        let usage = gpucloud_billing::Usage {
            started_at: Timestamp(p.try_get(0)?),
            free_until: p.try_get::<Option<i64>, _>(4)?.map(Timestamp),
            milli_gpus: 1000,
            rules: Rules { granularity_s: p.try_get(2)?, minimum_s: p.try_get(3)? },
            price_cap: None,
        };
        let paid = usage.paid_until(Timestamp(p.try_get::<Option<i64>, _>(1)?.unwrap_or(0)));
        if paid > at {
            free_until = Some(paid.0);
            rules.minimum_s = 0;
        }
    }
    let cap = match inst.sale.tier {
        gpucloud_model::Tier::Spot => inst.sale.max_price.map(|m| m.micros()),
        _ => None,
    };
    sqlx::query(&format!(
        "INSERT INTO usage_intervals ({INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, 0, 0, 0, $11, $12)"
    ))
    .bind(format!("{}.{generation}", inst.id))
    .bind(inst.id.to_string())
    .bind(inst.tenant_id.to_string())
    .bind(inst.model.name())
    .bind(region)
    .bind(inst.sale.tier.as_str())
    .bind(inst.share.as_ref().map_or(i64::from(inst.count) * 1000, |s| s.milli as i64))
    .bind(at.0)
    .bind(rules.granularity_s)
    .bind(rules.minimum_s)
    .bind(cap)
    .bind(free_until)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) fn interval_from_row(r: &AnyRow) -> Result<UsageInterval> {
    let t = "usage_intervals";
    let ended: Option<i64> = r.try_get(8)?;
    Ok(UsageInterval {
        id: r.try_get(0)?,
        instance_id: parse(t, &r.try_get::<String, _>(1)?)?,
        tenant_id: parse(t, &r.try_get::<String, _>(2)?)?,
        model: parse::<GpuModel>(t, &r.try_get::<String, _>(3)?)?,
        region: Region::parse(&r.try_get::<String, _>(4)?).map_err(|e| corrupt(t, e))?,
        tier: parse::<Tier>(t, &r.try_get::<String, _>(5)?)?,
        milli_gpus: r.try_get::<i64, _>(6)? as u32,
        started_at: Timestamp(r.try_get(7)?),
        ended_at: ended.map(Timestamp),
        rules: Rules { granularity_s: r.try_get(9)?, minimum_s: r.try_get(10)? },
        charged: Money(r.try_get(11)?),
        charged_seconds: r.try_get(12)?,
        settled: r.try_get::<i64, _>(13)? != 0,
        price_cap: r.try_get::<Option<i64>, _>(14)?.map(Money),
        free_until: r.try_get::<Option<i64>, _>(15)?.map(Timestamp),
        node_heartbeat: r.try_get::<Option<i64>, _>(16)?.map(Timestamp),
    })
}

/// What entries move in the kept totals: balances per account and usage per tenant and month.
/// Summed over a batch and written once per row, so a pass that posts thousands of entries
/// updates the one revenue account row once, not once per entry (on PostgreSQL each update of a
/// row within one transaction also walks the versions the earlier ones left).
#[derive(Debug, Default)]
pub(crate) struct TotalsDelta {
    balances: std::collections::BTreeMap<String, i64>,
    months: std::collections::BTreeMap<(String, i64), i64>,
}

impl TotalsDelta {
    fn add(&mut self, rec: &LedgerRecord) {
        let to_tenant = gpucloud_billing::Account::TenantCredit(rec.entry.tenant.clone());
        for p in rec.entry.postings() {
            *self.balances.entry(p.account.to_string()).or_default() += p.amount.micros();
            if rec.entry.kind == gpucloud_billing::EntryKind::Usage && p.account == to_tenant {
                *self.months.entry((rec.entry.tenant.to_string(), year_month(rec.created_at))).or_default() -=
                    p.amount.micros();
            }
        }
    }

    pub(crate) fn merge(&mut self, other: TotalsDelta) {
        for (k, v) in other.balances {
            *self.balances.entry(k).or_default() += v;
        }
        for (k, v) in other.months {
            *self.months.entry(k).or_default() += v;
        }
    }

    /// Writes the sums, one statement per account and per tenant-month.
    pub(crate) async fn apply(self, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
        for (account, delta) in self.balances {
            sqlx::query(
                "INSERT INTO account_balances (account, balance_micros) VALUES ($1, $2) \
                 ON CONFLICT (account) DO UPDATE SET balance_micros = account_balances.balance_micros + $2",
            )
            .bind(account)
            .bind(delta)
            .execute(&mut **tx)
            .await?;
        }
        for ((tenant, month), usage) in self.months {
            sqlx::query(
                "INSERT INTO tenant_month_usage (tenant_id, month, usage_micros) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id, month) DO UPDATE SET usage_micros = tenant_month_usage.usage_micros + $3",
            )
            .bind(tenant)
            .bind(month)
            .bind(usage)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// Inserts an entry and its postings; false if the idempotency key was used before.
pub(crate) async fn insert_ledger(tx: &mut sqlx::Transaction<'_, sqlx::Any>, rec: &LedgerRecord) -> Result<bool> {
    match insert_entry(tx, rec).await? {
        Some(delta) => {
            delta.apply(tx).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Inserts an entry and its postings and says what it moves in the kept totals, for the caller
/// to apply (`None`: its idempotency key was used before, nothing written).
pub(crate) async fn insert_entry(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rec: &LedgerRecord,
) -> Result<Option<TotalsDelta>> {
    if !rec.entry.is_balanced() {
        return Err(corrupt("ledger_entries", format!("entry {} does not balance", rec.id)));
    }
    let inserted = sqlx::query(
        "INSERT INTO ledger_entries (id, tenant_id, kind, memo, instance_id, interval_id, gpu_model, seconds, \
         idempotency_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&rec.id)
    .bind(rec.entry.tenant.to_string())
    .bind(rec.entry.kind.as_str())
    .bind(&rec.memo)
    .bind(rec.instance_id.as_ref().map(|i| i.to_string()))
    .bind(rec.interval_id.clone())
    .bind(rec.model.map(|m| m.name().to_string()))
    .bind(rec.seconds)
    .bind(&rec.idempotency_key)
    .bind(rec.created_at.0)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() != 1 {
        return Ok(None);
    }
    for p in rec.entry.postings() {
        sqlx::query("INSERT INTO ledger_postings (entry_id, account, currency, amount_micros) VALUES ($1, $2, $3, $4)")
            .bind(&rec.id)
            .bind(p.account.to_string())
            .bind(CURRENCY)
            .bind(p.amount.micros())
            .execute(&mut **tx)
            .await?;
    }
    let mut delta = TotalsDelta::default();
    delta.add(rec);
    Ok(Some(delta))
}

/// `($a, $b, ...), ...` placeholders for `rows` rows of `cols` columns, numbered from `first`.
pub(crate) fn placeholders(rows: usize, cols: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (0..cols).map(|c| format!("${}", first + r * cols + c)).collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `insert_ledger` does for each record, in a few multi-row statements: an import or a
/// benchmark's history of a million entries would otherwise cost six round trips per entry.
/// Records whose idempotency key was used before (or repeats within the batch) write nothing.
pub(crate) async fn insert_ledger_bulk(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    records: &[LedgerRecord],
) -> Result<usize> {
    use std::collections::HashSet;
    if let Some(r) = records.iter().find(|r| !r.entry.is_balanced()) {
        return Err(corrupt("ledger_entries", format!("entry {} does not balance", r.id)));
    }
    // Both backends take at least 32,766 bound values in one statement.
    const ROWS: usize = 1_000;
    let mut inserted: HashSet<String> = HashSet::new();
    for chunk in records.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO ledger_entries (id, tenant_id, kind, memo, instance_id, interval_id, gpu_model, seconds, \
             idempotency_key, created_at) VALUES {} ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            placeholders(chunk.len(), 10, 1)
        );
        let mut q = sqlx::query(&sql);
        for rec in chunk {
            q = q
                .bind(rec.id.clone())
                .bind(rec.entry.tenant.to_string())
                .bind(rec.entry.kind.as_str())
                .bind(rec.memo.clone())
                .bind(rec.instance_id.as_ref().map(|i| i.to_string()))
                .bind(rec.interval_id.clone())
                .bind(rec.model.map(|m| m.name().to_string()))
                .bind(rec.seconds)
                .bind(rec.idempotency_key.clone())
                .bind(rec.created_at.0);
        }
        for row in q.fetch_all(&mut **tx).await? {
            inserted.insert(row.try_get(0)?);
        }
    }
    let new: Vec<&LedgerRecord> = records.iter().filter(|r| inserted.contains(&r.id)).collect();
    let mut delta = TotalsDelta::default();
    let mut postings = Vec::new();
    for rec in &new {
        delta.add(rec);
        for p in rec.entry.postings() {
            postings.push((rec.id.clone(), p.account.to_string(), p.amount.micros()));
        }
    }
    for chunk in postings.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO ledger_postings (entry_id, account, currency, amount_micros) VALUES {}",
            placeholders(chunk.len(), 4, 1)
        );
        let mut q = sqlx::query(&sql);
        for (entry, account, amount) in chunk {
            q = q.bind(entry.clone()).bind(account.clone()).bind(CURRENCY).bind(*amount);
        }
        q.execute(&mut **tx).await?;
    }
    delta.apply(tx).await?;
    Ok(new.len())
}

pub(crate) fn invoice_from_row(r: &AnyRow) -> Result<StoredInvoice> {
    Ok(StoredInvoice {
        tenant_id: parse("invoices", &r.try_get::<String, _>(0)?)?,
        month: r.try_get(1)?,
        total: Money(r.try_get(2)?),
        closed_at: Timestamp(r.try_get(3)?),
        document: r.try_get(4)?,
    })
}

pub(crate) const TB_COLUMNS: &str = "tenant_id, prepaid, budget_micros, thresholds, action, webhook_url, idle_percent, idle_minutes, idle_stop, \
     webhook_secret, credit_limit_micros";

pub(crate) fn tenant_billing_from_row(r: &AnyRow) -> Result<TenantBilling> {
    let t = "tenant_billing";
    let budget: Option<i64> = r.try_get(2)?;
    let thresholds: String = r.try_get(3)?;
    Ok(TenantBilling {
        tenant_id: parse(t, &r.try_get::<String, _>(0)?)?,
        prepaid: r.try_get::<i64, _>(1)? != 0,
        monthly_budget: budget.map(Money),
        thresholds: thresholds
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| parse::<u32>(t, s))
            .collect::<Result<_>>()?,
        action: parse::<BudgetAction>(t, &r.try_get::<String, _>(4)?)?,
        webhook_url: r.try_get(5)?,
        idle: crate::IdlePolicy {
            below_percent: r.try_get::<i64, _>(6)?.clamp(0, 100) as u32,
            minutes: r.try_get::<i64, _>(7)?.clamp(1, i64::from(u32::MAX)) as u32,
            auto_stop: r.try_get::<i64, _>(8)? != 0,
        },
        webhook_secret: r.try_get(9)?,
        credit_limit: r.try_get::<Option<i64>, _>(10)?.map(Money),
    })
}

/// Moves every item's interval from what its caller read to its charge, in multi-row
/// compare-and-sets; returns the ids of those that moved (another writer moved the rest first).
pub(crate) async fn charge_bulk(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    items: &[ChargeItem],
) -> Result<std::collections::HashSet<String>> {
    // Seven values a row: well under both backends' limit on bound values a statement.
    const ROWS: usize = 1_000;
    let mut moved = std::collections::HashSet::with_capacity(items.len());
    for chunk in items.chunks(ROWS) {
        let sql = format!(
            "WITH v (id, amount, seconds, settled, old_amount, old_seconds, posted) AS (VALUES {}) \
             UPDATE usage_intervals SET charged_micros = v.amount, charged_seconds = v.seconds, settled = v.settled, \
             posted_through = CASE WHEN v.posted > usage_intervals.posted_through THEN v.posted \
             ELSE usage_intervals.posted_through END \
             FROM v WHERE usage_intervals.id = v.id AND usage_intervals.charged_micros = v.old_amount \
             AND usage_intervals.charged_seconds = v.old_seconds AND usage_intervals.settled = 0 \
             RETURNING usage_intervals.id",
            placeholders(chunk.len(), 7, 1)
        );
        let mut q = sqlx::query(&sql);
        for item in chunk {
            q = q
                .bind(item.interval.id.clone())
                .bind(item.charge.amount.micros())
                .bind(item.charge.seconds)
                .bind(item.settled as i64)
                .bind(item.interval.charged.micros())
                .bind(item.interval.charged_seconds)
                .bind(item.posted_through.map_or(0, |t| t.0));
        }
        for row in q.fetch_all(&mut **tx).await? {
            moved.insert(row.try_get(0)?);
        }
    }
    Ok(moved)
}

/// Moves one interval's charge (compare-and-set) and inserts its entry; `None` when another
/// writer moved it first or the entry's key was used. The kept totals are the caller's to apply.
pub(crate) async fn charge_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    item: &ChargeItem,
) -> Result<Option<TotalsDelta>> {
    let (u, charge) = (&item.interval, item.charge);
    let moved = sqlx::query(
        "UPDATE usage_intervals SET charged_micros = $1, charged_seconds = $2, settled = $3, \
         posted_through = CASE WHEN $7 > posted_through THEN $7 ELSE posted_through END \
         WHERE id = $4 AND charged_micros = $5 AND charged_seconds = $6 AND settled = 0",
    )
    .bind(charge.amount.micros())
    .bind(charge.seconds)
    .bind(item.settled as i64)
    .bind(&u.id)
    .bind(u.charged.micros())
    .bind(u.charged_seconds)
    .bind(item.posted_through.map_or(0, |t| t.0))
    .execute(&mut **tx)
    .await?;
    if moved.rows_affected() != 1 {
        return Ok(None);
    }
    match &item.record {
        Some(record) => insert_entry(tx, record).await,
        None => Ok(Some(TotalsDelta::default())),
    }
}

/// The UTC calendar month of `t` as YYYYMM (days from the epoch to a civil date, after Howard
/// Hinnant's algorithm).
pub fn year_month(t: Timestamp) -> i64 {
    let days = t.millis().div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    year * 100 + month
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn year_month_of_known_instants() {
        for (ms, ym) in [
            (0, 197_001),
            (951_782_400_000, 200_002),   // 2000-02-29T00:00Z
            (951_868_799_999, 200_002),   // 2000-02-29T23:59:59.999Z
            (951_868_800_000, 200_003),   // 2000-03-01
            (1_798_761_599_999, 202_612), // 2026-12-31T23:59:59.999Z
            (1_798_761_600_000, 202_701), // 2027-01-01
            (-1, 196_912),
        ] {
            assert_eq!(year_month(Timestamp(ms)), ym, "{ms}");
        }
    }
}
