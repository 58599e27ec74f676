//! Prices, quotes, metering and the tenant's money. Metering is a reconciler: it recomputes each
//! open interval's charge from scratch and posts only the difference, so it can run any number of
//! times, or stop half-way, without charging a second twice.

use super::volumes::StoragePrices;
use super::{App, AppError, Principal, hash_key, random_bits};
use gpucloud_billing::{Charge, Entry, EntryKind, PricePoint, Rules, Usage, price_at};
use gpucloud_model::{GpuModel, InstanceId, Money, Region, TenantId, Tier, Timestamp};
use gpucloud_store::{ChargeItem, LedgerLine, LedgerRecord, PriceRow, UsageInterval};
use std::collections::{BTreeMap, HashMap};

/// What it would cost to run an instance somewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub region: Region,
    pub tier: Tier,
    /// Spot: (the bid, the market price now).
    pub spot: Option<(Money, Money)>,
    pub per_hour: Money,
    pub duration_s: i64,
    pub charge: Charge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub balance: Money,
    /// Usage charged in the current calendar month (UTC), as a positive amount.
    pub month_usage: Money,
    /// What running instances cost per hour right now.
    pub burn_per_hour: Money,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGrouping {
    Instance,
    Model,
    Day,
    /// The instance's project; volumes' storage as `storage`.
    Project,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    pub key: String,
    pub seconds: i64,
    /// Charged, as a positive amount.
    pub amount: Money,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeterReport {
    pub charged: usize,
    pub settled: usize,
    pub conflicts: usize,
}

/// Running intervals posted per metering pass at most; a posting point's work is spread over as
/// many passes as it takes, run back to back (its entries are dated at the point whichever pass
/// writes them). The store charges a pass in a few multi-row statements.
pub const POSTINGS_PER_PASS: usize = 2_000;

/// Start of the UTC calendar month that contains `t`.
pub fn month_start(t: Timestamp) -> Timestamp {
    let dt = time::OffsetDateTime::from_unix_timestamp(t.millis().div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let first = dt.date().replace_day(1).unwrap_or(dt.date());
    Timestamp(first.midnight().assume_utc().unix_timestamp() * 1000)
}

fn day_of(t: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.millis().div_euclid(1000))
        .map(|d| d.date().to_string())
        .unwrap_or_default()
}

impl App {
    pub async fn billing_rules(&self) -> Result<Rules, AppError> {
        Ok(self.store.billing_rules().await?)
    }

    pub async fn set_billing_rules(
        &self,
        by: &Principal,
        granularity_s: i64,
        minimum_s: i64,
    ) -> Result<Rules, AppError> {
        by.require_operator()?;
        let rules = Rules::new(granularity_s, minimum_s).map_err(|e| {
            let field = if matches!(e, gpucloud_billing::RulesError::Granularity(_)) {
                "granularity_seconds"
            } else {
                "minimum_seconds"
            };
            AppError::invalid(field, e.to_string())
        })?;
        self.store.set_billing_rules(rules).await?;
        Ok(rules)
    }

    pub async fn list_prices(&self) -> Result<Vec<PriceRow>, AppError> {
        Ok(self.store.list_prices().await?)
    }

    /// Adds a price from `effective_from` (now if absent). The past is never rewritten: a point
    /// before now is refused.
    pub async fn set_price(
        &self,
        by: Option<&Principal>,
        model: GpuModel,
        region: Region,
        tier: Tier,
        per_gpu_hour: Money,
        effective_from: Option<Timestamp>,
    ) -> Result<PriceRow, AppError> {
        if let Some(p) = by {
            p.require_operator()?;
        }
        if per_gpu_hour < Money::ZERO {
            return Err(AppError::invalid("price_per_gpu_hour", "a price cannot be negative"));
        }
        let now = self.now();
        let from = effective_from.unwrap_or(now);
        // A second of slack for clocks and round trips; anything older would change a bill.
        if from < now.plus_millis(-1000) && by.is_some() {
            return Err(AppError::invalid("effective_from", "prices cannot change the past; use a time from now on"));
        }
        let row = PriceRow { model, region, tier, point: PricePoint { effective_from: from, per_gpu_hour } };
        if per_gpu_hour == Money::ZERO {
            tracing::warn!(%model, region = %row.region, %tier, "a price of 0: this usage will not be billed");
        }
        if !self.store.add_price(&row, now).await? {
            return Err(AppError::Conflict(format!(
                "a {tier} price for {model} in {} already starts at that time",
                row.region
            )));
        }
        Ok(row)
    }

    /// The prices of 0 in force now ("T4 on-demand in eu-1"): usage nobody is billed for.
    pub async fn zero_prices_in_force(&self) -> Result<Vec<String>, AppError> {
        let now = self.now();
        let mut latest: HashMap<(GpuModel, Region, Tier), PricePoint> = HashMap::new();
        for p in self.store.list_prices().await? {
            if p.point.effective_from > now {
                continue;
            }
            let e = latest.entry((p.model, p.region, p.tier)).or_insert(p.point);
            if p.point.effective_from >= e.effective_from {
                *e = p.point;
            }
        }
        let mut free: Vec<String> = latest
            .into_iter()
            .filter(|(_, p)| p.per_gpu_hour == Money::ZERO)
            .map(|((m, r, t), _)| format!("{m} {t} in {r}"))
            .collect();
        free.sort();
        Ok(free)
    }

    /// With `Config::default_prices`: each of `models` with no on-demand price in `region` gets
    /// the default book's, every tier, from now; the region gets the default storage price if it
    /// has none. Said loudly, so the operator knows to set their own.
    pub(crate) async fn price_new_capacity(&self, region: &Region, models: &[GpuModel]) -> Result<(), AppError> {
        if !self.config.default_prices {
            return Ok(());
        }
        let now = self.now();
        for model in models {
            if !self.store.prices_for(*model, region, Tier::OnDemand).await?.is_empty() {
                continue;
            }
            let Some((_, micros)) = crate::dev::DEFAULT_PRICES.iter().find(|(m, _)| m == model) else {
                tracing::warn!(%model, %region, "no price for this GPU model and none in the default book: \
                    its usage bills at 0 until you set one (gpucloud price set)");
                continue;
            };
            for (tier, percent) in crate::dev::TIER_PERCENT {
                let price = Money(micros * percent / 100);
                let row = PriceRow {
                    model: *model,
                    region: region.clone(),
                    tier: *tier,
                    point: PricePoint { effective_from: now, per_gpu_hour: price },
                };
                self.store.add_price(&row, now).await?;
            }
            tracing::warn!(%model, %region, on_demand = %Money(*micros), "no price set for this GPU model here: \
                using the default book (see the README); set your own with gpucloud price set");
        }
        if self.store.storage_prices(Some(region)).await?.is_empty() {
            self.store.add_storage_price(region, now, crate::dev::DEV_STORAGE_PRICE).await?;
            tracing::warn!(%region, per_gib_hour = %crate::dev::DEV_STORAGE_PRICE, "no storage price set here: \
                using the default book; set yours with gpucloud price storage");
        }
        Ok(())
    }

    /// Quotes per region: the one asked for, or every region that has the model.
    // The arguments mirror the request's fields one for one; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub async fn quote(
        &self,
        model: GpuModel,
        count: u32,
        share: Option<gpucloud_model::GpuShare>,
        region: Option<Region>,
        duration_s: i64,
        tier: Tier,
        max_price: Option<Money>,
    ) -> Result<Vec<Quote>, AppError> {
        match tier {
            Tier::OnDemand | Tier::Spot => {}
            Tier::Reserved => {
                return Err(AppError::invalid(
                    "tier",
                    "a reserved instance is paid by its reservation: quote on-demand or spot, \
                     or see GET /v1/reservations",
                ));
            }
            Tier::Warm => {
                return Err(AppError::invalid("tier", "warm capacity is priced by its pool: quote on-demand or spot"));
            }
        }
        if tier != Tier::Spot && max_price.is_some() {
            return Err(AppError::invalid("max_price_per_gpu_hour", "a bid is for tier spot only"));
        }
        if max_price.is_some_and(|m| m.0 <= 0) {
            return Err(AppError::invalid("max_price_per_gpu_hour", "a bid must be more than 0"));
        }
        if count == 0 || count > gpucloud_model::MAX_GPUS_PER_INSTANCE {
            return Err(AppError::invalid(
                "count",
                format!("count must be between 1 and {}", gpucloud_model::MAX_GPUS_PER_INSTANCE),
            ));
        }
        if !(1..=366 * 86_400).contains(&duration_s) {
            return Err(AppError::invalid("duration_seconds", "duration must be between 1 second and a year"));
        }
        let rules = self.store.billing_rules().await?;
        let now = self.now();
        let regions: Vec<Region> = match region {
            Some(r) => vec![r],
            None => {
                let nodes = self.store.list_nodes().await?;
                let mut rs: Vec<Region> = nodes
                    .iter()
                    .filter(|n| n.gpus.iter().any(|g| g.model == model))
                    .map(|n| n.region.clone())
                    .collect();
                rs.sort();
                rs.dedup();
                rs
            }
        };
        let mut quotes = Vec::new();
        for r in regions {
            let prices = self.store.prices_for(model, &r, Tier::OnDemand).await?;
            let Some(on_demand) = price_at(&prices, now) else { continue };
            // Spot pays the market price, never above the bid (on-demand when none is given).
            let (per_gpu_hour, spot) = match tier {
                Tier::Spot => {
                    let Some(market) = self.spot_price(model, &r).await? else { continue };
                    let bid = max_price.unwrap_or(on_demand);
                    (market.min(bid), Some((bid, market)))
                }
                _ => (on_demand, None),
            };
            let milli = share.as_ref().map_or(count * 1000, |s| s.milli);
            let (per_hour, charge) = gpucloud_billing::quote(per_gpu_hour, milli, duration_s, rules);
            quotes.push(Quote { region: r, tier, spot, per_hour, duration_s, charge });
        }
        if quotes.is_empty() {
            return Err(AppError::invalid(
                "gpu",
                format!("no {tier} price for {model} in any region asked; ask the operator"),
            ));
        }
        Ok(quotes)
    }

    /// One metering pass over every interval that may still owe money. A closed interval is
    /// settled: charged exactly what it owes, a credit if more was posted (a lost node's
    /// instances are billed to their last heartbeat). A running one is posted at each posting
    /// point (every `posting_period` and each month start), charged up to that point and dated
    /// just before it; between points its charge accrues without a ledger entry.
    pub async fn meter(&self) -> Result<MeterReport, AppError> {
        let now = self.now();
        let point = self.posting_point(now);
        let mut report = MeterReport::default();
        let mut prices = PriceCache::default();
        let mut items = Vec::new();
        // Ended intervals are settled on every pass.
        for u in self.store.ended_unsettled_intervals().await? {
            let end = u.ended_at.unwrap_or(u.started_at);
            let due = usage_of(&u).due(end, prices.get(self, &u).await?);
            let record = usage_record(&u, due, now, true);
            items.push(ChargeItem { interval: u, charge: due, settled: true, record, posted_through: None });
        }
        // Running ones are posted once per posting point, a bounded number per pass: a pass
        // stays short, so budgets and prepaid balances are enforced every second or two even
        // at a point. Entries are dated at the point whichever pass writes them.
        let posted = self.posted_point.load(std::sync::atomic::Ordering::Relaxed);
        let mut deferred = false;
        if posted < point.millis() {
            let most = self.config.postings_per_pass.clamp(1, u32::MAX as usize);
            let batch = self.store.intervals_to_post(point, most as u32).await?;
            deferred = batch.len() >= most;
            for u in batch {
                let due = usage_of(&u).due(self.accrue_end(&u, now).min(point), prices.get(self, &u).await?);
                let (charge, record) = if due.amount < u.charged || due.seconds < u.charged_seconds {
                    // Only a price point added behind a running interval lowers it; it settles at
                    // its end. It is marked posted through the point all the same.
                    tracing::debug!(interval = %u.id, ?due, charged = %u.charged, "charge below what is posted");
                    (Charge { seconds: u.charged_seconds, amount: u.charged }, None)
                } else {
                    (due, usage_record(&u, due, point.plus_millis(-1), false))
                };
                items.push(ChargeItem { interval: u, charge, settled: false, record, posted_through: Some(point) });
            }
        }
        for (item, ok) in items.iter().zip(self.store.charge_intervals(&items).await?) {
            if ok {
                report.charged += usize::from(item.record.is_some());
                report.settled += usize::from(item.settled);
            } else {
                report.conflicts += 1;
            }
        }
        if report.conflicts == 0 && !deferred {
            self.posted_point.fetch_max(point.millis(), std::sync::atomic::Ordering::Relaxed);
        }
        if deferred {
            // The rest of the point now, not a metering period later: at 2,000 a pass and a pass
            // a second, 100,000 running instances took a minute to post.
            self.reconcilers.run_again("metering");
        }
        report.charged += self.meter_volumes().await?;
        Ok(report)
    }

    /// The latest posting point at or before `now`: a multiple of the posting period, or the
    /// start of the month if that is later.
    pub(crate) fn posting_point(&self, now: Timestamp) -> Timestamp {
        let period = (self.config.posting_period.as_millis() as i64).max(1000);
        Timestamp(now.millis().div_euclid(period) * period).max(month_start(now))
    }

    /// How far an open interval has run by `now`: never past its node's last heartbeat plus the
    /// grace, so a silent node's instances stop accruing while it is silent.
    pub(crate) fn accrue_end(&self, u: &UsageInterval, now: Timestamp) -> Timestamp {
        let end = match (u.ended_at, u.node_heartbeat) {
            (Some(end), _) => end,
            (None, Some(beat)) => now.min(beat.plus_millis(self.config.heartbeat_grace.as_millis() as i64)),
            (None, None) => now,
        };
        end.max(u.started_at)
    }

    /// What a tenant has accrued beyond its posted ledger, read once for every figure drawn
    /// from it.
    pub(crate) async fn accrual(&self, tenant: &TenantId, now: Timestamp) -> Result<Accrual, AppError> {
        let unposted = Unposted {
            intervals: self.store.unsettled_intervals_of(tenant).await?,
            volumes: self.store.unsettled_volumes_of(tenant).await?,
            reservations: self.store.list_reservations(Some(tenant)).await?,
        };
        self.accrual_of(&unposted, &mut PriceCache::default(), &mut StoragePrices::default(), now).await
    }

    /// What one tenant's unposted intervals, volumes and reservations come to by `now`.
    pub(crate) async fn accrual_of(
        &self,
        unposted: &Unposted,
        prices: &mut PriceCache,
        storage_prices: &mut StoragePrices,
        now: Timestamp,
    ) -> Result<Accrual, AppError> {
        let mut a = Accrual::default();
        for u in &unposted.intervals {
            let p = prices.get(self, u).await?;
            a.intervals += usage_of(u).due(self.accrue_end(u, now), p).amount.micros() - u.charged.micros();
            if u.ended_at.is_none() {
                let price = price_at(p, now).unwrap_or(Money::ZERO);
                let price = u.price_cap.map_or(price, |cap| price.min(cap));
                a.burn += i128::from(price.micros()) * i128::from(u.milli_gpus) / 1000;
            }
        }
        a.storage = self.storage_accrual(&unposted.volumes, storage_prices, now).await?.micros();
        let (usage, credit) = self.reservation_accrual(&unposted.reservations, now);
        (a.reservation_usage, a.reservation_credit) = (usage.micros(), credit.micros());
        Ok(a)
    }

    /// Credit for a tenant: an operator grant, a paid top-up, or an adjustment.
    pub async fn add_credit(
        &self,
        by: Option<&Principal>,
        tenant: &str,
        kind: EntryKind,
        amount: Money,
        memo: &str,
        idempotency_key: Option<&str>,
    ) -> Result<LedgerLine, AppError> {
        if let Some(p) = by {
            p.require_operator()?;
        }
        let not_found = || AppError::NotFound { kind: "tenant", id: tenant.to_string() };
        let tid = TenantId::parse(tenant).map_err(|_| not_found())?;
        self.store.get_tenant(&tid).await?.ok_or_else(not_found)?;
        let entry = match kind {
            EntryKind::Grant if amount > Money::ZERO => Entry::grant(&tid, amount),
            EntryKind::TopUp if amount > Money::ZERO => Entry::top_up(&tid, amount),
            EntryKind::Adjustment if amount != Money::ZERO => Entry::adjustment(&tid, amount),
            EntryKind::Usage => return Err(AppError::invalid("kind", "usage is charged by metering, not by hand")),
            _ => return Err(AppError::invalid("amount", "grants and top-ups are positive; adjustments are not zero")),
        };
        if memo.len() > 500 {
            return Err(AppError::invalid("memo", "memo is at most 500 characters"));
        }
        // With an idempotency key the entry id derives from it, so a retry finds the first entry.
        let (id, key) = match idempotency_key {
            Some(k) => {
                let key = format!("credit:{tid}:{k}");
                (format!("e-{}", &hash_key(&key)[..32]), key)
            }
            None => {
                let id = format!("e-{:032x}", random_bits());
                (id.clone(), format!("credit:{id}"))
            }
        };
        let now = self.now();
        let record = LedgerRecord {
            id: id.clone(),
            entry,
            memo: memo.to_string(),
            instance_id: None,
            interval_id: None,
            model: None,
            seconds: 0,
            idempotency_key: key,
            created_at: now,
        };
        self.store.post_ledger(&record).await?;
        // Whether this call or an earlier one with the same key wrote it, answer with what is on record.
        let lines = self.store.ledger_lines(&tid, Timestamp(0), now.plus_millis(1)).await?;
        lines.into_iter().find(|l| l.id == id).ok_or_else(|| AppError::Conflict("credit not recorded".into()))
    }

    pub async fn balance(&self, by: &Principal) -> Result<Balance, AppError> {
        by.require_org_money("balance")?;
        let books = self.books(&by.tenant.id, self.now()).await?;
        Ok(Balance {
            balance: books.balance(),
            month_usage: books.month_usage(),
            burn_per_hour: books.accrual.burn_per_hour(),
        })
    }

    /// Usage since the start of `now`'s month, posted and accrued, as a positive amount.
    pub(crate) async fn month_usage(&self, tenant: &TenantId, now: Timestamp) -> Result<Money, AppError> {
        Ok(self.books(tenant, now).await?.month_usage())
    }

    /// The ledger and the accrual beside it, with no posting between the two reads. A posting
    /// pass moves a charge from the accrual onto the ledger in one transaction; reading the two
    /// on either side of it would count that charge twice (a prepaid tenant stopped for money
    /// it still has) or not at all. So the ledger is read before and after the accrual, and
    /// the three reads are taken again until the ledger did not move between them.
    pub(crate) async fn books(&self, tenant: &TenantId, now: Timestamp) -> Result<Books, AppError> {
        let month = gpucloud_store::year_month(now);
        let mut before = (self.store.balance(tenant).await?, self.store.usage_in_month(tenant, month).await?);
        let mut tries = 0;
        loop {
            let accrual = self.accrual(tenant, now).await?;
            let after = (self.store.balance(tenant).await?, self.store.usage_in_month(tenant, month).await?);
            tries += 1;
            // A pass posts a tenant's charges once per period: a few tries always find a gap.
            if after == before || tries == 8 {
                return Ok(Books { posted_balance: after.0, posted_month: after.1, accrual });
            }
            before = after;
        }
    }

    /// What the tenant's open intervals cost per hour at today's prices.
    /// What a tenant's running instances are billed per hour now.
    pub async fn spend_rate(&self, tenant: &TenantId) -> Result<Money, AppError> {
        self.burn_per_hour(tenant, self.now()).await
    }

    pub(crate) async fn burn_per_hour(&self, tenant: &TenantId, now: Timestamp) -> Result<Money, AppError> {
        Ok(self.accrual(tenant, now).await?.burn_per_hour())
    }

    pub async fn usage(
        &self,
        by: &Principal,
        from: Timestamp,
        to: Timestamp,
        group: UsageGrouping,
    ) -> Result<Vec<UsageLine>, AppError> {
        if to <= from {
            return Err(AppError::invalid("to", "'to' must be after 'from'"));
        }
        self.usage_of(&by.tenant.id, by.project.as_ref(), from, to, group).await
    }

    /// A tenant's usage (of one project, or all) posted and accrued between two times.
    pub(crate) async fn usage_of(
        &self,
        tenant: &TenantId,
        project: Option<&gpucloud_model::ProjectName>,
        from: Timestamp,
        to: Timestamp,
        group: UsageGrouping,
    ) -> Result<Vec<UsageLine>, AppError> {
        // As in `books`: no posting may fall between reading the ledger and the accrual (the
        // charge would be counted twice or not at all), so read again until none did.
        let mut tries = 0;
        loop {
            let before = self.store.balance(tenant).await?;
            let lines = self.usage_once(tenant, project, from, to, group).await?;
            tries += 1;
            if tries == 8 || self.store.balance(tenant).await? == before {
                return Ok(lines);
            }
        }
    }

    async fn usage_once(
        &self,
        tenant: &TenantId,
        project: Option<&gpucloud_model::ProjectName>,
        from: Timestamp,
        to: Timestamp,
        group: UsageGrouping,
    ) -> Result<Vec<UsageLine>, AppError> {
        let lines = self.store.ledger_lines(tenant, from, to).await?;
        // Spend belongs to the instance's project: a project key sees its project's only
        // (storage, which belongs to no project, included only for the whole organization).
        let project_of: HashMap<InstanceId, gpucloud_model::ProjectName> =
            if group == UsageGrouping::Project || project.is_some() {
                self.store.list_instances(Some(tenant)).await?.into_iter().map(|i| (i.id, i.sale.project)).collect()
            } else {
                HashMap::new()
            };
        let visible = |instance: Option<&InstanceId>| match project {
            None => true,
            Some(p) => instance.and_then(|i| project_of.get(i)) == Some(p),
        };
        let project_key = |instance: Option<&InstanceId>| {
            instance.and_then(|i| project_of.get(i)).map_or_else(|| "storage".to_string(), |p| p.to_string())
        };
        let mut groups: BTreeMap<String, UsageLine> = BTreeMap::new();
        for l in lines.iter().filter(|l| l.kind == EntryKind::Usage && visible(l.instance_id.as_ref())) {
            // Storage has no instance or model: its lines group as "volume NAME" and "storage".
            let storage = || l.memo.split(" (").next().unwrap_or_default().to_string();
            let key = match group {
                UsageGrouping::Instance => l.instance_id.as_ref().map_or_else(storage, InstanceId::to_string),
                UsageGrouping::Model => l.model.map_or_else(|| "storage".to_string(), |m| m.to_string()),
                UsageGrouping::Day => day_of(l.created_at),
                UsageGrouping::Project => project_key(l.instance_id.as_ref()),
            };
            let g = groups.entry(key.clone()).or_insert(UsageLine { key, seconds: 0, amount: Money::ZERO });
            g.seconds += l.seconds;
            g.amount = Money(g.amount.micros() - l.amount.micros());
        }
        // What running instances accrued since their last posting belongs to a window that
        // reaches now.
        let now = self.now();
        if to > now {
            let mut prices = PriceCache::default();
            for u in self.store.unsettled_intervals_of(tenant).await? {
                if !visible(Some(&u.instance_id)) {
                    continue;
                }
                let due = usage_of(&u).due(self.accrue_end(&u, now), prices.get(self, &u).await?);
                if due.amount <= u.charged && due.seconds <= u.charged_seconds {
                    continue;
                }
                let key = match group {
                    UsageGrouping::Instance => u.instance_id.to_string(),
                    UsageGrouping::Model => u.model.to_string(),
                    UsageGrouping::Day => day_of(now),
                    UsageGrouping::Project => project_key(Some(&u.instance_id)),
                };
                let g = groups.entry(key.clone()).or_insert(UsageLine { key, seconds: 0, amount: Money::ZERO });
                g.seconds += (due.seconds - u.charged_seconds).max(0);
                g.amount = Money(g.amount.micros() + (due.amount.micros() - u.charged.micros()).max(0));
            }
        }
        Ok(groups.into_values().collect())
    }

    /// The ledger between two times (a project key: the lines of its project's instances).
    pub async fn ledger(&self, by: &Principal, from: Timestamp, to: Timestamp) -> Result<Vec<LedgerLine>, AppError> {
        let mut lines = self.store.ledger_lines(&by.tenant.id, from, to).await?;
        if let Some(p) = &by.project {
            let mine: std::collections::HashSet<InstanceId> = self
                .store
                .list_instances(Some(&by.tenant.id))
                .await?
                .into_iter()
                .filter(|i| i.sale.project == *p)
                .map(|i| i.id)
                .collect();
            lines.retain(|l| l.instance_id.as_ref().is_some_and(|i| mine.contains(i)));
        }
        Ok(lines)
    }
}

/// A tenant's ledger and its accrual as of one moment (see [`App::books`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Books {
    pub posted_balance: Money,
    /// Usage posted this month, as a positive amount.
    pub posted_month: Money,
    pub accrual: Accrual,
}

impl Books {
    /// The balance with what has accrued since the last posting taken off.
    pub fn balance(&self) -> Money {
        Money(self.posted_balance.micros() - self.accrual.owed().micros())
    }

    /// This month's usage, posted and accrued.
    pub fn month_usage(&self) -> Money {
        Money(self.posted_month.micros() + self.accrual.usage())
    }
}

/// What a tenant has that is not yet on the ledger: the inputs of its [`Accrual`].
#[derive(Debug, Default)]
pub(crate) struct Unposted {
    pub intervals: Vec<UsageInterval>,
    pub volumes: Vec<gpucloud_store::VolumeRow>,
    pub reservations: Vec<gpucloud_store::Reservation>,
}

/// A tenant's charges not yet on the ledger, in micro-units, and what it burns per hour.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Accrual {
    pub intervals: i64,
    pub storage: i64,
    pub reservation_usage: i64,
    pub reservation_credit: i64,
    pub burn: i128,
}

impl Accrual {
    /// Usage accrued, as a positive amount.
    pub fn usage(&self) -> i64 {
        self.intervals + self.storage + self.reservation_usage
    }

    /// What the balance owes beyond its postings: usage less lending credit earned.
    pub fn owed(&self) -> Money {
        Money(self.usage() - self.reservation_credit)
    }

    pub fn burn_per_hour(&self) -> Money {
        Money(self.burn as i64)
    }
}

/// Prices per (model, region, tier), read once per pass. A reservation's commitment pays for
/// its GPUs: running on them costs nothing more.
#[derive(Default)]
pub(crate) struct PriceCache(HashMap<(GpuModel, Region, Tier), Vec<PricePoint>>);

impl PriceCache {
    pub(crate) async fn get(&mut self, app: &App, u: &UsageInterval) -> Result<&[PricePoint], AppError> {
        let key = (u.model, u.region.clone(), u.tier);
        if !self.0.contains_key(&key) {
            let p = if u.tier == Tier::Reserved {
                vec![PricePoint { effective_from: Timestamp(0), per_gpu_hour: Money::ZERO }]
            } else {
                app.store.prices_for(u.model, &u.region, u.tier).await?
            };
            self.0.insert(key.clone(), p);
        }
        Ok(&self.0[&key])
    }
}

pub(crate) fn usage_of(u: &UsageInterval) -> Usage {
    Usage {
        started_at: u.started_at,
        free_until: u.free_until,
        milli_gpus: u.milli_gpus,
        rules: u.rules,
        price_cap: u.price_cap,
    }
}

/// The ledger entry for moving an interval's charge to `due`; none when neither money nor
/// seconds move. A negative difference (an interval settled below what was posted) gives the
/// tenant it back. Free seconds (a zero price) are posted too, so the ledger's seconds are the
/// intervals' seconds.
fn usage_record(u: &UsageInterval, due: Charge, at: Timestamp, settled: bool) -> Option<LedgerRecord> {
    let delta = Money(due.amount.micros() - u.charged.micros());
    if delta == Money::ZERO && due.seconds == u.charged_seconds {
        return None;
    }
    let credit = if delta < Money::ZERO { ", credit: billed to the last heartbeat" } else { "" };
    // Derived from the interval and the new total: a retried pass can never post it twice. A
    // settlement is marked apart: it may return to a total an earlier posting had.
    let tag = if settled { "settle-" } else { "" };
    Some(LedgerRecord {
        id: format!("e-{}-{tag}{}-{}", u.id, due.seconds, due.amount.micros()),
        entry: Entry::usage(&u.tenant_id, delta),
        memo: format!("{} x {} in {} ({}{credit})", f64::from(u.milli_gpus) / 1000.0, u.model, u.region, u.tier),
        instance_id: Some(u.instance_id.clone()),
        interval_id: Some(u.id.clone()),
        model: Some(u.model),
        seconds: due.seconds - u.charged_seconds,
        idempotency_key: format!("usage:{}:{tag}{}:{}", u.id, due.seconds, due.amount.micros()),
        created_at: at,
    })
}
