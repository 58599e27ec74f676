//! The billing checker: every interval recomputed from the instance's recorded state history
//! and the price book, against what was charged and what the ledger holds. It reads only, so an
//! operator can run it on a live cloud (`gpucloud admin check-billing`) and tests run it after
//! crashes and at the end of end-to-end runs.

use super::{App, AppError, Principal};
use gpucloud_billing::Usage;
use gpucloud_model::{InstanceState, Money, Tier, Timestamp};
use gpucloud_store::{Store, StoreError, UsageInterval};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BillingCheck {
    pub instances: usize,
    pub intervals: usize,
    pub ledger_entries: u64,
    /// Seconds billed by settled intervals, and what they were charged.
    pub billed_seconds: i64,
    pub charged: Money,
    /// Each thing found wrong, in words that name the interval, instance or entry.
    pub problems: Vec<String>,
}

impl App {
    /// Operator only: the whole cloud's billing, checked.
    pub async fn check_billing(&self, by: &Principal) -> Result<BillingCheck, AppError> {
        by.require_operator()?;
        Ok(check_billing(self.store.as_ref(), self.now()).await?)
    }
}

/// Billable stretches of an instance from its recorded history: (start, end or None if open).
fn spans(events: &[gpucloud_store::InstanceEvent]) -> Vec<(Timestamp, Option<Timestamp>)> {
    let mut spans = Vec::new();
    let mut open: Option<Timestamp> = None;
    for e in events {
        let was = e.from.is_some_and(InstanceState::is_billable);
        if InstanceState::opens_billing(e.from, e.to) {
            open = Some(e.at);
        } else if was
            && !e.to.is_billable()
            && let Some(start) = open.take()
        {
            spans.push((start, Some(e.at)));
        }
    }
    if let Some(start) = open {
        spans.push((start, None));
    }
    spans
}

fn usage_of(u: &UsageInterval) -> Usage {
    super::billing::usage_of(u)
}

pub async fn check_billing(store: &dyn Store, now: Timestamp) -> Result<BillingCheck, StoreError> {
    let mut report = BillingCheck::default();
    let audit = store.ledger_audit().await?;
    report.ledger_entries = audit.entries;
    let problems = &mut report.problems;
    for e in &audit.unbalanced {
        problems.push(format!("ledger entry {e} does not balance"));
    }
    for (account, kept, summed) in &audit.drift {
        problems.push(format!("account {account} shows {kept} but its postings sum to {summed}"));
    }
    for (currency, total) in store.ledger_totals().await? {
        if total != Money::ZERO {
            problems.push(format!("the {currency} ledger sums to {total}, not zero"));
        }
    }
    let posted: HashMap<&str, (Money, i64)> =
        audit.posted.iter().map(|(id, amount, seconds)| (id.as_str(), (*amount, *seconds))).collect();
    let mut prices = HashMap::new();
    for tenant in store.list_tenants().await? {
        let mut by_instance: BTreeMap<String, Vec<UsageInterval>> = BTreeMap::new();
        for u in store.intervals_of_tenant(&tenant.id).await? {
            by_instance.entry(u.instance_id.to_string()).or_default().push(u);
        }
        for inst in store.list_instances(Some(&tenant.id)).await? {
            report.instances += 1;
            let mine = by_instance.remove(inst.id.as_str()).unwrap_or_default();
            let history = spans(&store.instance_events(&inst.id).await?);
            let recorded: Vec<(Timestamp, Option<Timestamp>)> =
                mine.iter().map(|u| (u.started_at, u.ended_at)).collect();
            if recorded != history {
                problems.push(format!(
                    "instance {}: billed stretches {recorded:?} differ from its state history {history:?}",
                    inst.id
                ));
            }
            let mut previous: Option<&UsageInterval> = None;
            for u in &mine {
                report.intervals += 1;
                if let Some(p) = previous {
                    match p.ended_at {
                        Some(end) if end <= u.started_at => {}
                        _ => problems.push(format!("interval {} overlaps {}: seconds charged twice", u.id, p.id)),
                    }
                }
                if let Some(free) = u.free_until {
                    let paid = previous.and_then(|p| p.ended_at.map(|end| usage_of(p).paid_until(end)));
                    if paid.is_none_or(|paid| paid < free) || u.rules.minimum_s != 0 {
                        problems.push(format!("interval {} runs free until {free} that no earlier run paid for", u.id));
                    }
                }
                if u.tier == Tier::Spot && inst.sale.max_price.is_some() && u.price_cap != inst.sale.max_price {
                    problems.push(format!("spot interval {} is not capped at its bid", u.id));
                }
                let key = (u.model, u.region.clone(), u.tier);
                if !prices.contains_key(&key) {
                    let p = if u.tier == Tier::Reserved {
                        vec![gpucloud_billing::PricePoint { effective_from: Timestamp(0), per_gpu_hour: Money::ZERO }]
                    } else {
                        store.prices_for(u.model, &u.region, u.tier).await?
                    };
                    prices.insert(key.clone(), p);
                }
                let usage = usage_of(u);
                if let Some(bid) = u.price_cap {
                    let ceiling = Usage { price_cap: None, ..usage }.due(
                        u.ended_at.unwrap_or(now),
                        &[gpucloud_billing::PricePoint { effective_from: Timestamp(0), per_gpu_hour: bid }],
                    );
                    if u.charged > ceiling.amount {
                        problems.push(format!(
                            "spot interval {} charged {} above its bid's {}",
                            u.id, u.charged, ceiling.amount
                        ));
                    }
                }
                match u.ended_at {
                    Some(end) if u.settled => {
                        let due = usage.due(end, &prices[&key]);
                        if (u.charged, u.charged_seconds) != (due.amount, due.seconds) {
                            problems.push(format!(
                                "interval {} charged {} for {} s; its history says {} for {} s",
                                u.id, u.charged, u.charged_seconds, due.amount, due.seconds
                            ));
                        }
                        report.billed_seconds += due.seconds;
                        report.charged = Money(report.charged.micros() + due.amount.micros());
                    }
                    end => {
                        let due = usage.due(end.unwrap_or(now), &prices[&key]);
                        if u.charged > due.amount {
                            problems.push(format!(
                                "open interval {} charged {} ahead of the {} it owes",
                                u.id, u.charged, due.amount
                            ));
                        }
                    }
                }
                let (amount, seconds) = posted.get(u.id.as_str()).copied().unwrap_or((Money::ZERO, 0));
                if (Money(-amount.micros()), seconds) != (u.charged, u.charged_seconds) {
                    problems.push(format!(
                        "interval {}: the ledger holds {} for {seconds} s, the interval says {} for {} s",
                        u.id,
                        Money(-amount.micros()),
                        u.charged,
                        u.charged_seconds
                    ));
                }
                previous = Some(u);
            }
        }
        for (id, _) in by_instance {
            problems.push(format!("intervals of unknown instance {id}"));
        }
    }
    Ok(report)
}
