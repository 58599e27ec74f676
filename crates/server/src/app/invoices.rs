//! Monthly invoices. A month's invoice lists the ledger entries created in that month, so every
//! entry is on exactly one invoice. After the month ends (plus a grace minute for transactions in
//! flight) it is closed: stored once as issued, and never recomputed or changed.

use super::{App, AppError, Principal};
use gpucloud_billing::{CURRENCY, EntryKind, Invoice, InvoiceLine};
use gpucloud_model::{Money, TenantId, Timestamp};
use gpucloud_store::{StoredInvoice, Tenant};
use std::collections::BTreeMap;

const CLOSE_GRACE_MS: i64 = 60_000;

/// `[start, end)` of a `YYYY-MM` month, UTC.
pub fn month_bounds(month: &str) -> Option<(Timestamp, Timestamp)> {
    let (y, m) = month.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let year: i32 = y.parse().ok()?;
    let mon: u8 = m.parse().ok()?;
    let month = time::Month::try_from(mon).ok()?;
    let start = time::Date::from_calendar_date(year, month, 1).ok()?;
    let (ny, nm) = if mon == 12 { (year + 1, time::Month::January) } else { (year, month.next()) };
    let end = time::Date::from_calendar_date(ny, nm, 1).ok()?;
    let ms = |d: time::Date| Timestamp(d.midnight().assume_utc().unix_timestamp() * 1000);
    Some((ms(start), ms(end)))
}

/// The `YYYY-MM` month containing `t`.
pub fn month_of(t: Timestamp) -> String {
    let dt = time::OffsetDateTime::from_unix_timestamp(t.millis().div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}", dt.year(), u8::from(dt.month()))
}

impl App {
    /// The caller's invoice for `month`: the issued one if closed, else a draft.
    pub async fn invoice(&self, by: &Principal, month: &str) -> Result<Invoice, AppError> {
        by.require_org_money("invoices")?;
        let (start, end) =
            month_bounds(month).ok_or_else(|| AppError::invalid("month", "month must be YYYY-MM, e.g. 2026-11"))?;
        let now = self.now();
        if start > now {
            return Err(AppError::invalid("month", format!("{month} has not started yet")));
        }
        if let Some(stored) = self.store.get_invoice(&by.tenant.id, month).await? {
            return parse_stored(&stored);
        }
        if end.plus_millis(CLOSE_GRACE_MS) <= now {
            return self.close_invoice(&by.tenant, month).await;
        }
        self.build_invoice(&by.tenant, month, start, end, "open").await
    }

    pub async fn list_invoices(&self, by: &Principal) -> Result<Vec<StoredInvoice>, AppError> {
        by.require_org_money("invoices")?;
        Ok(self.store.list_invoices(&by.tenant.id).await?)
    }

    /// Closes `month` for every tenant (operator; the invoice task does it on its own).
    pub async fn close_month(&self, by: Option<&Principal>, month: &str) -> Result<usize, AppError> {
        if let Some(p) = by {
            p.require_operator()?;
        }
        let (_, end) =
            month_bounds(month).ok_or_else(|| AppError::invalid("month", "month must be YYYY-MM, e.g. 2026-11"))?;
        if end.plus_millis(CLOSE_GRACE_MS) > self.now() {
            return Err(AppError::invalid(
                "month",
                format!("{month} has not ended yet (invoices close a minute after)"),
            ));
        }
        let mut closed = 0;
        for t in self.store.list_tenants().await? {
            if self.store.get_invoice(&t.id, month).await?.is_none() {
                self.close_invoice(&t, month).await?;
                closed += 1;
            }
        }
        Ok(closed)
    }

    async fn close_invoice(&self, tenant: &Tenant, month: &str) -> Result<Invoice, AppError> {
        let (start, end) = month_bounds(month).ok_or_else(|| AppError::invalid("month", "bad month"))?;
        let invoice = self.build_invoice(tenant, month, start, end, "closed").await?;
        let document = serde_json::to_string(&invoice).map_err(|e| AppError::Conflict(e.to_string()))?;
        let stored = StoredInvoice {
            tenant_id: tenant.id.clone(),
            month: month.to_string(),
            total: invoice.usage_total,
            closed_at: self.now(),
            document,
        };
        if self.store.insert_invoice(&stored).await? {
            tracing::info!(tenant = %tenant.name, month, total = %invoice.usage_total, "invoice closed");
            return Ok(invoice);
        }
        // Someone closed it first: what was issued is the invoice.
        let issued = self
            .store
            .get_invoice(&tenant.id, month)
            .await?
            .ok_or_else(|| AppError::Conflict("invoice vanished".into()))?;
        parse_stored(&issued)
    }

    async fn build_invoice(
        &self,
        tenant: &Tenant,
        month: &str,
        start: Timestamp,
        end: Timestamp,
        status: &str,
    ) -> Result<Invoice, AppError> {
        let tid: &TenantId = &tenant.id;
        let opening_balance = self.store.balance_before(tid, start).await?;
        let mut usage: BTreeMap<(String, String), InvoiceLine> = BTreeMap::new();
        let mut credits = Vec::new();
        for l in self.store.ledger_lines(tid, start, end).await? {
            if l.kind == EntryKind::Usage {
                let instance = l.instance_id.map(|i| i.to_string()).unwrap_or_default();
                let gpu = l.model.map(|m| m.to_string()).unwrap_or_default();
                let line = usage.entry((instance.clone(), gpu.clone())).or_insert_with(|| InvoiceLine {
                    description: l.memo.clone(),
                    instance: Some(instance),
                    gpu: Some(gpu),
                    seconds: 0,
                    amount: Money::ZERO,
                });
                line.seconds += l.seconds;
                line.amount = Money(line.amount.micros() - l.amount.micros());
            } else {
                credits.push(InvoiceLine {
                    description: format!("{}: {}", l.kind.as_str(), l.memo),
                    instance: None,
                    gpu: None,
                    seconds: 0,
                    amount: l.amount,
                });
            }
        }
        if status == "open" {
            // A draft shows what has accrued since the last posting too, so it moves every second.
            let now = self.now();
            let mut prices = super::billing::PriceCache::default();
            for u in self.store.unsettled_intervals_of(tid).await? {
                let due = super::billing::usage_of(&u).due(self.accrue_end(&u, now), prices.get(self, &u).await?);
                let (amount, seconds) = (due.amount.micros() - u.charged.micros(), due.seconds - u.charged_seconds);
                if amount <= 0 && seconds <= 0 {
                    continue;
                }
                let (instance, gpu) = (u.instance_id.to_string(), u.model.to_string());
                let line = usage.entry((instance.clone(), gpu.clone())).or_insert_with(|| InvoiceLine {
                    description: format!(
                        "{} x {} in {} ({})",
                        f64::from(u.milli_gpus) / 1000.0,
                        u.model,
                        u.region,
                        u.tier
                    ),
                    instance: Some(instance),
                    gpu: Some(gpu),
                    seconds: 0,
                    amount: Money::ZERO,
                });
                line.seconds += seconds.max(0);
                line.amount = Money(line.amount.micros() + amount.max(0));
            }
            let storage = self.accrued_storage(tid, now).await?;
            let reserved = self.accrued_reservation_usage(tid, now).await?;
            for (what, amount) in
                [("storage accrued since the last posting", storage), ("reservation periods in progress", reserved)]
            {
                if amount > Money::ZERO {
                    usage.insert(
                        (String::new(), what.to_string()),
                        InvoiceLine { description: what.to_string(), instance: None, gpu: None, seconds: 0, amount },
                    );
                }
            }
        }
        let mut invoice = Invoice {
            tenant: tid.to_string(),
            tenant_name: tenant.name.clone(),
            month: month.to_string(),
            status: status.to_string(),
            currency: CURRENCY.to_string(),
            opening_balance,
            lines: usage.into_values().collect(),
            credits,
            usage_total: Money::ZERO,
            credits_total: Money::ZERO,
            closing_balance: Money::ZERO,
        };
        invoice.finish();
        Ok(invoice)
    }

    /// Closes last month's invoices once it is over; a no-op when they are.
    pub async fn close_past_invoices(&self) -> Result<usize, AppError> {
        let now = self.now();
        let (this_start, _) = month_bounds(&month_of(now)).ok_or_else(|| AppError::invalid("month", "clock"))?;
        let last = month_of(this_start.plus_millis(-1));
        match self.close_month(None, &last).await {
            Ok(n) => Ok(n),
            // Within the grace minute after midnight: next pass.
            Err(AppError::Invalid { .. }) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

fn parse_stored(s: &StoredInvoice) -> Result<Invoice, AppError> {
    serde_json::from_str(&s.document)
        .map_err(|e| AppError::Store(gpucloud_store::StoreError::Corrupt { table: "invoices", detail: e.to_string() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_arithmetic() {
        let (s, e) = month_bounds("2026-12").unwrap();
        assert_eq!((month_of(s), month_of(e)), ("2026-12".to_string(), "2027-01".to_string()));
        assert_eq!(e.millis() - s.millis(), 31 * 86_400_000);
        assert_eq!(month_of(e.plus_millis(-1)), "2026-12");
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", ""] {
            assert!(month_bounds(bad).is_none(), "{bad}");
        }
    }
}
