//! The spot market: the price per GPU model and region from supply and demand, preemption with
//! notice (when the price passes a bid, when on-demand work needs the GPUs, or when an operator
//! simulates it), and the deadline that ends a noticed instance.

use super::{App, AppError, Principal};
use gpucloud_billing::spot;
use gpucloud_model::{GpuModel, InstanceState, Money, Region, Tier, Timestamp, UserAction};
use gpucloud_store::{Instance, Node, PriceRow};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Spot prices move in steps of a thousandth of a currency unit per GPU-hour: finer changes are
/// noise, and every change is a row of price history.
const PRICE_STEP: i64 = 1_000;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MarketReport {
    pub prices_changed: usize,
    pub noticed: usize,
}

/// A spot price history as the API shows it.
#[derive(Debug, Clone)]
pub struct SpotHistory {
    pub on_demand: Money,
    pub floor: Money,
    pub current: Option<Money>,
    pub points: Vec<gpucloud_billing::PricePoint>,
}

/// Demand per pool (model x region): held and queued thousandths of a GPU against healthy ones.
fn demand(nodes: &[Node], pending: &[Instance]) -> BTreeMap<(GpuModel, Region), spot::Demand> {
    let mut pools: BTreeMap<(GpuModel, Region), spot::Demand> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.health != gpucloud_model::NodeHealth::Lost) {
        for g in &n.gpus {
            let d =
                pools.entry((g.model, n.region.clone())).or_insert(spot::Demand { used_milli: 0, capacity_milli: 0 });
            if g.healthy && n.state == gpucloud_model::NodeState::Ready {
                d.capacity_milli += 1000;
            }
            d.used_milli +=
                if g.instance.is_some() { 1000 } else { g.slices.iter().map(|s| u64::from(s.milli)).sum::<u64>() };
        }
    }
    for p in pending {
        let milli = p.share.as_ref().map_or(u64::from(p.count) * 1000, |s| u64::from(s.milli));
        for ((model, region), d) in pools.iter_mut() {
            // A request for any region counts in each that could take it: it raises them all.
            if *model == p.model && p.region.as_ref().is_none_or(|r| r == region) {
                d.used_milli += milli;
            }
        }
    }
    pools
}

impl App {
    pub(crate) fn notice_ms(&self) -> i64 {
        self.config.market.notice.as_millis() as i64
    }

    /// One market tick, `dt` after the previous: move each pool's spot price toward its target
    /// (writing a price point when it changed), then give notice to spot instances whose bid the
    /// price passed.
    pub async fn market_pass(&self, dt: Duration) -> Result<MarketReport, AppError> {
        let mut report = MarketReport::default();
        let now = self.now();
        let nodes = self.fleet().await?;
        let pending = self.store.list_pending(10_000).await?;
        let m = &self.config.market;
        let mut prices: HashMap<(GpuModel, Region), Money> = HashMap::new();
        for ((model, region), d) in demand(&nodes, &pending) {
            let Some(od) = self.store.price_at(model, &region, Tier::OnDemand, now).await? else { continue };
            let od = od.per_gpu_hour;
            let floor = spot::floor(od, m.floor_percent);
            let target = spot::target(od, floor, d);
            let current = self.store.price_at(model, &region, Tier::Spot, now).await?.map(|p| p.per_gpu_hour);
            let next = match current {
                Some(c) => spot::step(c, target, floor, od, dt.as_millis() as i64, m.smoothing.as_millis() as i64),
                None => target,
            };
            let next = Money((next.0 / PRICE_STEP * PRICE_STEP).max(floor.0).min(od.0));
            let changed = current.is_none_or(|c| (next.0 - c.0).abs() >= PRICE_STEP);
            if changed {
                let row = PriceRow {
                    model,
                    region: region.clone(),
                    tier: Tier::Spot,
                    point: gpucloud_billing::PricePoint { effective_from: now, per_gpu_hour: next },
                };
                if self.store.add_price(&row, now).await? {
                    report.prices_changed += 1;
                    tracing::debug!(%model, %region, price = %next, "spot price");
                }
            }
            prices.insert((model, region), if changed { next } else { current.unwrap_or(next) });
        }
        self.accrue_lending(dt.as_millis() as i64, &nodes, &prices).await?;
        let regions: HashMap<_, _> = nodes.iter().map(|n| (n.id.clone(), n.region.clone())).collect();
        for inst in self.store.spot_holders().await? {
            if inst.notice.is_some() || inst.state == InstanceState::Stopping {
                continue;
            }
            let Some(region) = inst.node_id.as_ref().and_then(|n| regions.get(n)) else { continue };
            let (Some(price), Some(bid)) = (prices.get(&(inst.model, region.clone())), inst.sale.max_price) else {
                continue;
            };
            if *price > bid {
                let reason = format!(
                    "the spot price of {} in {region} rose to {price}/GPU-hour, above this instance's max price {bid}",
                    inst.model
                );
                if self.notify_preemption(&inst, self.notice_ms(), reason).await? {
                    report.noticed += 1;
                }
            }
        }
        Ok(report)
    }

    /// Gives the notice (once) and tells the tenant; false if the instance already had one.
    pub(crate) async fn notify_preemption(
        &self,
        inst: &Instance,
        notice_ms: i64,
        reason: String,
    ) -> Result<bool, AppError> {
        let now = self.now();
        if !self.store.give_notice(&inst.id, notice_ms, &reason, now).await? {
            return Ok(false);
        }
        tracing::warn!(instance = %inst.id, notice_ms, %reason, "preemption notice");
        let b = self.store.tenant_billing(&inst.tenant_id).await?;
        let key = format!("preempt:{}:{}", inst.id, now.0);
        self.alert(
            &b,
            "preemption_notice",
            &key,
            format!("instance {} will be preempted in {} s: {reason}", inst.id, notice_ms / 1000),
        )
        .await?;
        Ok(true)
    }

    /// Stops the noticed instances whose deadline has come.
    pub async fn enforce_notices(&self) -> Result<usize, AppError> {
        let now = self.now();
        let grace = self.config.heartbeat_grace.as_millis() as i64;
        let mut n = 0;
        for inst in self.store.due_notices(now, grace).await? {
            let reason = inst.notice.as_ref().map(|x| x.reason.clone()).unwrap_or_default();
            self.store.set_status_reason(&inst.id, Some(&format!("preempted: {reason}"))).await?;
            tracing::warn!(instance = %inst.id, "preemption deadline: stopping");
            self.transition(inst, |i| i.state.on_user(i.stop_target, UserAction::Stop).map_err(AppError::from)).await?;
            n += 1;
        }
        Ok(n)
    }

    /// The operator preempts a spot instance now, as the market would (EC2's, GCP's and Azure's
    /// "simulate eviction"): notice, then SIGTERM at the deadline.
    pub async fn simulate_preemption(
        &self,
        by: &Principal,
        id: &str,
        notice_s: Option<u64>,
    ) -> Result<Instance, AppError> {
        by.require_operator()?;
        let not_found = || AppError::NotFound { kind: "instance", id: id.to_string() };
        let iid = gpucloud_model::InstanceId::parse(id).map_err(|_| not_found())?;
        let inst = self.store.get_instance(None, &iid).await?.ok_or_else(not_found)?;
        let min = self.config.market.min_notice;
        let notice = notice_s.map_or(self.config.market.notice, Duration::from_secs);
        if notice < min || notice > Duration::from_secs(3600) {
            return Err(AppError::invalid(
                "notice_seconds",
                format!("notice must be between the operator's minimum ({} s) and 3600 s", min.as_secs()),
            ));
        }
        if inst.sale.tier != Tier::Spot {
            return Err(AppError::Conflict(format!(
                "instance {id} is {}: only spot instances are preempted",
                inst.sale.tier
            )));
        }
        if !matches!(inst.state, InstanceState::Provisioning | InstanceState::Running) {
            return Err(AppError::Conflict(format!(
                "instance {id} is {}: only a running instance can be preempted",
                inst.state
            )));
        }
        if inst.notice.is_some() {
            return Err(AppError::Conflict(format!("instance {id} already has a preemption notice")));
        }
        self.notify_preemption(&inst, notice.as_millis() as i64, "simulated by the operator".into()).await?;
        self.store.get_instance(None, &iid).await?.ok_or_else(not_found)
    }

    /// The spot price in force now.
    pub async fn spot_price(&self, model: GpuModel, region: &Region) -> Result<Option<Money>, AppError> {
        Ok(self.store.price_at(model, region, Tier::Spot, self.now()).await?.map(|p| p.per_gpu_hour))
    }

    pub async fn spot_history(
        &self,
        model: GpuModel,
        region: &Region,
        since: Option<Timestamp>,
    ) -> Result<SpotHistory, AppError> {
        let now = self.now();
        let od = self.store.price_at(model, region, Tier::OnDemand, now).await?.ok_or_else(|| AppError::NotFound {
            kind: "price",
            id: format!("{model} in {region} (no on-demand price, so no spot market)"),
        })?;
        let since = since.unwrap_or(now.plus_millis(-24 * 3600 * 1000));
        let points = self.store.price_history(model, region, Tier::Spot, since, 10_000).await?;
        Ok(SpotHistory {
            on_demand: od.per_gpu_hour,
            floor: spot::floor(od.per_gpu_hour, self.config.market.floor_percent),
            current: self.spot_price(model, region).await?,
            points,
        })
    }
}
