//! Reservations: capacity sold ahead to one tenant. The owner pays for it whether used or not
//! (billed per period as it elapses); its instances (tier `reserved`) always find room, because
//! on-demand work of others never takes the reserved-but-idle GPUs, and spot work that borrowed
//! them is preempted with notice when the owner asks; the owner is credited a share of what
//! that lending earned. See docs/decisions/0007-spot-market-and-reservations.md.

use super::{App, AppError, Principal, random_bits};
use gpucloud_billing::{Entry, PricePoint, Rules, charge};
use gpucloud_model::{GpuModel, InstanceState, Money, Region, ReservationId, TenantId, Tier, Timestamp};
use gpucloud_store::{Instance, LedgerRecord, Node, Reservation};
use std::collections::HashMap;

/// What an operator sells (already parsed from the wire).
#[derive(Debug, Clone)]
pub struct NewReservation {
    /// Tenant id or name.
    pub tenant: String,
    pub model: GpuModel,
    pub region: Region,
    pub gpus: u32,
    pub starts_at: Option<Timestamp>,
    pub ends_at: Timestamp,
    pub price: Option<Money>,
    pub lend_share_pct: Option<u32>,
}

const MAX_SPAN_MS: i64 = 3 * 366 * 24 * 3600 * 1000;

/// Healthy GPUs of a model in a region.
fn pool_size(nodes: &[Node], model: GpuModel, region: &Region) -> u32 {
    nodes
        .iter()
        .filter(|n| n.region == *region && n.health != gpucloud_model::NodeHealth::Lost)
        .flat_map(|n| &n.gpus)
        .filter(|g| g.model == model && g.healthy)
        .count() as u32
}

/// GPUs the owner's reserved instances hold, and with `asked` those waiting for room too (a
/// request counts against the reservation from the moment it is made).
fn reserved_use(instances: &[Instance], tenant: &TenantId, model: GpuModel, region: &Region, asked: bool) -> u32 {
    instances
        .iter()
        .filter(|i| i.tenant_id == *tenant && i.sale.tier == Tier::Reserved && i.model == model)
        .filter(|i| i.region.as_ref() == Some(region))
        .filter(|i| i.state.holds_gpus() || (asked && i.state == InstanceState::Pending))
        .map(|i| i.count)
        .sum()
}

impl App {
    pub async fn create_reservation(&self, by: &Principal, req: NewReservation) -> Result<Reservation, AppError> {
        by.require_operator()?;
        let tenant = match TenantId::parse(&req.tenant) {
            Ok(id) => self.store.get_tenant(&id).await?,
            Err(_) => self.store.list_tenants().await?.into_iter().find(|t| t.name == req.tenant),
        }
        .ok_or_else(|| AppError::invalid("tenant", format!("no tenant '{}'", req.tenant)))?;
        if req.gpus == 0 || req.gpus > 4096 {
            return Err(AppError::invalid("gpus", "a reservation holds 1 to 4096 GPUs"));
        }
        let now = self.now();
        let starts = req.starts_at.unwrap_or(now);
        if starts.millis_since(now) < -60_000 {
            return Err(AppError::invalid("starts_at", "a reservation cannot start in the past"));
        }
        if req.ends_at <= starts || req.ends_at.millis_since(starts) > MAX_SPAN_MS {
            return Err(AppError::invalid("ends_at", "ends_at must be after starts_at, and at most three years later"));
        }
        let lend_share = req.lend_share_pct.unwrap_or(50);
        if lend_share > 100 {
            return Err(AppError::invalid("lend_share_percent", "lend_share_percent is 0 to 100"));
        }
        let price = match req.price {
            Some(p) if p < Money::ZERO => {
                return Err(AppError::invalid("price_per_gpu_hour", "a price cannot be negative"));
            }
            Some(p) => p,
            None => self
                .store
                .price_at(req.model, &req.region, Tier::Reserved, starts)
                .await?
                .map(|p| p.per_gpu_hour)
                .ok_or_else(|| {
                    AppError::invalid(
                        "price_per_gpu_hour",
                        format!("no reserved price for {} in {}: give price_per_gpu_hour", req.model, req.region),
                    )
                })?,
        };
        // Never sell what is not there: every instant of the period keeps its reservations within
        // the pool (checked against the peak of the overlapping ones).
        let nodes = self.store.list_nodes().await?;
        let pool = pool_size(&nodes, req.model, &req.region);
        let overlapping = self.store.reservations_overlapping(req.model, &req.region, starts, req.ends_at).await?;
        let mut peak = 0;
        for t in std::iter::once(starts).chain(overlapping.iter().map(|r| r.starts_at).filter(|t| *t > starts)) {
            let at: u32 = overlapping.iter().filter(|r| r.active_at(t)).map(|r| r.gpus).sum();
            peak = peak.max(at);
        }
        if peak + req.gpus > pool {
            return Err(AppError::Conflict(format!(
                "only {} of the {pool} healthy {} GPUs in {} are unreserved over that period",
                pool.saturating_sub(peak),
                req.model,
                req.region
            )));
        }
        let r = Reservation {
            id: ReservationId::from_random(random_bits()),
            tenant_id: tenant.id.clone(),
            model: req.model,
            region: req.region,
            gpus: req.gpus,
            starts_at: starts,
            ends_at: req.ends_at,
            price,
            lend_share_pct: lend_share,
            lent_gpu_ms: 0,
            lent_revenue: Money::ZERO,
            billed_periods: 0,
            credited: Money::ZERO,
            created_at: now,
        };
        self.store.insert_reservation(&r).await?;
        tracing::info!(reservation = %r.id, tenant = %tenant.name, gpus = r.gpus, gpu = %r.model, region = %r.region, "reservation sold");
        self.wake_scheduler();
        Ok(r)
    }

    /// A tenant sees its own; an operator sees all.
    pub async fn list_reservations(&self, by: &Principal) -> Result<Vec<Reservation>, AppError> {
        let scope = (by.tenant.role != gpucloud_model::Role::Operator).then_some(&by.tenant.id);
        Ok(self.store.list_reservations(scope).await?)
    }

    /// Checks a request for reserved capacity and returns its region: the tenant needs an active
    /// reservation of the model (in the region, if given) with room left for `count` GPUs.
    pub(crate) async fn reserved_region(
        &self,
        tenant: &TenantId,
        model: GpuModel,
        region: Option<&Region>,
        count: u32,
    ) -> Result<Region, AppError> {
        let now = self.now();
        let mine: Vec<Reservation> = self
            .store
            .list_reservations(Some(tenant))
            .await?
            .into_iter()
            .filter(|r| r.active_at(now) && r.model == model && region.is_none_or(|g| *g == r.region))
            .collect();
        if mine.is_empty() {
            return Err(AppError::invalid(
                "tier",
                format!(
                    "no active reservation of {model}{} for this tenant",
                    region.map(|r| format!(" in {r}")).unwrap_or_default()
                ),
            ));
        }
        let instances = self.store.market_instances().await?;
        let mut regions: Vec<&Region> = mine.iter().map(|r| &r.region).collect();
        regions.dedup();
        let mut room_seen = Vec::new();
        for r in regions {
            let held: u32 = mine.iter().filter(|x| x.region == *r).map(|x| x.gpus).sum();
            let used = reserved_use(&instances, tenant, model, r, true);
            if used + count <= held {
                return Ok(r.clone());
            }
            room_seen.push(format!("{} of {held} free in {r}", held.saturating_sub(used)));
        }
        Err(AppError::Conflict(format!(
            "the reservation has no room for {count} more {model}: {}",
            room_seen.join(", ")
        )))
    }

    /// Per pool with an active reservation: reserved GPUs their owners' instances do not hold now
    /// (kept from on-demand work of others, for the owners' running and waiting requests).
    pub(crate) async fn reserved_idle(&self) -> Result<HashMap<(GpuModel, Region), u32>, AppError> {
        self.reserved_idle_except(None).await
    }

    /// [`App::reserved_idle`], leaving out what `except`'s own reservations keep idle (theirs
    /// to use).
    pub(crate) async fn reserved_idle_except(
        &self,
        except: Option<&TenantId>,
    ) -> Result<HashMap<(GpuModel, Region), u32>, AppError> {
        let now = self.now();
        let mut out: HashMap<(GpuModel, Region), u32> = HashMap::new();
        let active: Vec<Reservation> =
            self.store.list_reservations(None).await?.into_iter().filter(|r| r.active_at(now)).collect();
        if active.is_empty() {
            return Ok(out);
        }
        let instances = self.store.market_instances().await?;
        let mut owners: Vec<(&TenantId, GpuModel, &Region)> =
            active.iter().map(|r| (&r.tenant_id, r.model, &r.region)).collect();
        owners.sort();
        owners.dedup();
        for (tenant, model, region) in owners {
            if except == Some(tenant) {
                continue;
            }
            let held: u32 = active
                .iter()
                .filter(|r| r.tenant_id == *tenant && r.model == model && r.region == *region)
                .map(|r| r.gpus)
                .sum();
            let used = reserved_use(&instances, tenant, model, region, false);
            *out.entry((model, region.clone())).or_default() += held.saturating_sub(used);
        }
        Ok(out)
    }

    /// The market tick's share: GPU-time of each reservation's idle capacity that spot work
    /// used over the last `dt_ms`, valued at the spot price. Several reservations idle in one pool
    /// split the spot use in proportion to what each leaves idle.
    pub(crate) async fn accrue_lending(
        &self,
        dt_ms: i64,
        nodes: &[Node],
        spot_prices: &HashMap<(GpuModel, Region), Money>,
    ) -> Result<(), AppError> {
        let now = self.now();
        let active: Vec<Reservation> =
            self.store.list_reservations(None).await?.into_iter().filter(|r| r.active_at(now)).collect();
        if active.is_empty() || dt_ms <= 0 {
            return Ok(());
        }
        let instances = self.store.market_instances().await?;
        let region_of: HashMap<_, _> = nodes.iter().map(|n| (&n.id, &n.region)).collect();
        let mut spot_milli: HashMap<(GpuModel, Region), u64> = HashMap::new();
        for i in instances.iter().filter(|i| i.sale.tier == Tier::Spot && i.state.holds_gpus()) {
            if let Some(r) = i.node_id.as_ref().and_then(|n| region_of.get(n)) {
                let milli = i.share.as_ref().map_or(u64::from(i.count) * 1000, |s| u64::from(s.milli));
                *spot_milli.entry((i.model, (*r).clone())).or_default() += milli;
            }
        }
        let idle_of = |r: &Reservation| {
            let used = reserved_use(&instances, &r.tenant_id, r.model, &r.region, false);
            u64::from(r.gpus.saturating_sub(used)) * 1000
        };
        for r in &active {
            let key = (r.model, r.region.clone());
            let spot = spot_milli.get(&key).copied().unwrap_or(0);
            let idle = idle_of(r);
            if spot == 0 || idle == 0 {
                continue;
            }
            let pool_idle: u64 =
                active.iter().filter(|x| x.model == r.model && x.region == r.region).map(&idle_of).sum();
            let lent_milli = (spot.min(pool_idle) * idle) / pool_idle.max(1);
            let gpu_ms = (lent_milli as i64 * dt_ms) / 1000;
            let price = spot_prices.get(&key).copied().unwrap_or(Money::ZERO);
            let revenue = Money((i128::from(price.0) * i128::from(gpu_ms) / 3_600_000) as i64);
            self.store.accrue_lending(&r.id, gpu_ms, revenue).await?;
        }
        Ok(())
    }

    /// Bills each reservation's elapsed periods: the commitment (GPUs x rate for the period,
    /// used or not) and the owner's share of the lending revenue so far, one transaction per
    /// period under idempotency keys, so a crash or a second replica never bills twice.
    /// A tenant's reservation charges for the periods in progress, not yet posted (each period
    /// is posted when it ends), and the lending credit earned since the last posting.
    pub(crate) async fn reservations_in_progress(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<(Money, Money), AppError> {
        Ok(self.reservation_accrual(&self.store.list_reservations(Some(tenant)).await?, now))
    }

    /// What `reservations` have accrued in their periods in progress by `now`: usage, and the
    /// lending credit not yet posted.
    pub(crate) fn reservation_accrual(&self, reservations: &[Reservation], now: Timestamp) -> (Money, Money) {
        let period_ms = self.config.market.reservation_period.as_millis().max(1000) as i64;
        let (mut usage, mut credit) = (0i64, 0i64);
        for r in reservations {
            let from = r.starts_at.plus_millis(r.billed_periods * period_ms);
            if from >= r.ends_at || from >= now {
                continue;
            }
            let to = now.min(r.ends_at);
            let points = [PricePoint { effective_from: r.starts_at, per_gpu_hour: r.price }];
            let exact = Rules { granularity_s: 1, minimum_s: 0 };
            usage += charge(from, to.millis_since(from), r.gpus * 1000, &points, exact).amount.micros();
            let share = (i128::from(r.lent_revenue.0) * i128::from(r.lend_share_pct) / 100) as i64;
            credit += (share - r.credited.0).max(0);
        }
        (Money(usage), Money(credit))
    }

    /// Reservation usage accrued in periods in progress, as a positive amount.
    pub(crate) async fn accrued_reservation_usage(&self, tenant: &TenantId, now: Timestamp) -> Result<Money, AppError> {
        Ok(self.reservations_in_progress(tenant, now).await?.0)
    }

    pub async fn bill_reservations(&self) -> Result<usize, AppError> {
        let now = self.now();
        let period_ms = self.config.market.reservation_period.as_millis().max(1000) as i64;
        let mut billed = 0;
        for r in self.store.list_reservations(None).await? {
            let mut r = r;
            loop {
                let from = r.starts_at.plus_millis(r.billed_periods * period_ms);
                if from >= r.ends_at {
                    break;
                }
                let to = from.plus_millis(period_ms).min(r.ends_at);
                if to > now {
                    break;
                }
                let points = [PricePoint { effective_from: r.starts_at, per_gpu_hour: r.price }];
                let exact = Rules { granularity_s: 1, minimum_s: 0 };
                let due = charge(from, to.millis_since(from), r.gpus * 1000, &points, exact);
                let share = Money((i128::from(r.lent_revenue.0) * i128::from(r.lend_share_pct) / 100) as i64);
                let credit = Money(share.0 - r.credited.0);
                let mut records = Vec::new();
                let key = format!("resv:{}:{}", r.id, r.billed_periods);
                if due.amount > Money::ZERO {
                    records.push(LedgerRecord {
                        id: format!("e-{}", &super::hash_key(&key)[..32]),
                        entry: Entry::usage(&r.tenant_id, due.amount),
                        memo: format!(
                            "reservation {}: {} x {} in {} at {}/GPU-hour",
                            r.id, r.gpus, r.model, r.region, r.price
                        ),
                        instance_id: None,
                        interval_id: None,
                        model: Some(r.model),
                        seconds: due.seconds,
                        idempotency_key: key.clone(),
                        created_at: now,
                    });
                }
                if credit > Money::ZERO {
                    let ckey = format!("resv-credit:{}:{}", r.id, r.billed_periods);
                    records.push(LedgerRecord {
                        id: format!("e-{}", &super::hash_key(&ckey)[..32]),
                        entry: Entry::lending_credit(&r.tenant_id, credit),
                        memo: format!(
                            "reservation {}: {}% of {} earned lending {:.2} idle GPU-hours as spot",
                            r.id,
                            r.lend_share_pct,
                            r.lent_revenue,
                            r.lent_gpu_ms as f64 / 3_600_000.0
                        ),
                        instance_id: None,
                        interval_id: None,
                        model: Some(r.model),
                        seconds: 0,
                        idempotency_key: ckey,
                        created_at: now,
                    });
                }
                let credited = if credit > Money::ZERO { share } else { r.credited };
                if !self.store.bill_reservation_period(&r.id, r.billed_periods, credited, &records).await? {
                    break;
                }
                billed += 1;
                r.billed_periods += 1;
                r.credited = credited;
            }
        }
        Ok(billed)
    }
}
