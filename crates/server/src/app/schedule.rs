use super::App;
use super::AppError;
use gpucloud_model::{InstanceId, Money, Region, Tier};
use gpucloud_sched::{ClusterSnapshot, GpuView, NodeView, Pending, plan};
use gpucloud_store::{ApplyOutcome, NewPlacement, Node, NodeBatch, StoreError};
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};

/// At most this many pending instances are considered per pass; the rest wait for the next.
const PENDING_BATCH: u32 = 10_000;

/// What one scheduling pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub placed: usize,
    pub unplaced: usize,
    pub conflicts: usize,
}

/// A node label by which an operator lets tenants share its GPUs by time slicing (no memory or
/// fault isolation between them): `gpucloud agent --label time-slicing=shared`.
pub const TIME_SLICING_LABEL: &str = "time-slicing";

pub fn snapshot_of(nodes: &[Node]) -> ClusterSnapshot {
    ClusterSnapshot {
        nodes: nodes
            .iter()
            .map(|n| NodeView {
                id: n.id.clone(),
                region: n.region.clone(),
                generation: n.generation,
                state: n.state,
                health: n.health,
                gpus: n
                    .gpus
                    .iter()
                    .map(|g| GpuView {
                        index: g.index,
                        model: g.model,
                        allocated: g.instance.is_some(),
                        healthy: g.healthy,
                        slice_milli: g.slices.iter().map(|s| s.milli).sum(),
                        slice_mem_mib: g.slices.iter().map(|s| s.memory_mib).sum(),
                        mig: g.slices.iter().any(|s| s.mig),
                        slice_tenant: g.slices.iter().find(|s| !s.mig).map(|s| s.tenant.clone()),
                        reserved: false,
                    })
                    .collect(),
                open_time_slicing: n.labels.get(TIME_SLICING_LABEL).is_some_and(|v| v == "shared"),
            })
            .collect(),
    }
}

/// Marks what `placements` take on `snap`.
pub(crate) fn occupy(snap: &mut ClusterSnapshot, placements: &[gpucloud_sched::Placement], queue: &[Pending]) {
    for p in placements {
        let share = queue.iter().find(|q| q.instance == p.instance).and_then(|q| q.share.clone());
        let Some(n) = snap.nodes.iter_mut().find(|n| n.id == p.node) else { continue };
        for g in n.gpus.iter_mut().filter(|g| p.gpus.contains(&g.index)) {
            match &share {
                Some(s) => {
                    g.slice_milli += s.milli;
                    g.slice_mem_mib += s.memory_mib;
                    g.mig |= s.mig.is_some();
                    if s.mig.is_none() && g.slice_tenant.is_none() {
                        g.slice_tenant = queue.iter().find(|q| q.instance == p.instance).and_then(|q| q.tenant.clone());
                    }
                }
                None => g.allocated = true,
            }
        }
    }
}

/// The fleet as on-demand work of others sees it: in each pool, the reserved GPUs their owners
/// leave idle are hidden, except as many as spot work holds there (spot can be preempted to give
/// them back). Whole free nodes are hidden first, keeping reserved room together for gangs.
fn mask_reserved(
    snap: &ClusterSnapshot,
    idle: &HashMap<(gpucloud_model::GpuModel, Region), u32>,
    spot_gpus: &HashMap<(gpucloud_model::GpuModel, Region), u32>,
) -> ClusterSnapshot {
    let mut out = snap.clone();
    for ((model, region), reserved) in idle {
        let mut hide = reserved.saturating_sub(spot_gpus.get(&(*model, region.clone())).copied().unwrap_or(0));
        let free = |n: &gpucloud_sched::NodeView| {
            n.gpus.iter().filter(|g| g.model == *model && g.healthy && !g.allocated && g.slice_milli == 0).count()
        };
        let mut order: Vec<usize> = (0..out.nodes.len()).filter(|&i| out.nodes[i].region == *region).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(free(&out.nodes[i])));
        for i in order {
            for g in out.nodes[i].gpus.iter_mut() {
                if hide > 0 && g.model == *model && g.healthy && !g.allocated && g.slice_milli == 0 {
                    g.allocated = true;
                    g.reserved = true;
                    hide -= 1;
                }
            }
        }
    }
    out
}

/// Plans the queue tier by tier: reserved work on the whole fleet, on-demand work on what the
/// reservations leave it, then spot on everything still free (idle reserved GPUs included: that
/// is the lending). Returns the plan and the fleet as on-demand work sees it after it.
#[allow(clippy::too_many_arguments)]
fn plan_tiers(
    snapshot: &ClusterSnapshot,
    queue: &[Pending],
    tiers: &HashMap<InstanceId, Tier>,
    idle: &HashMap<(gpucloud_model::GpuModel, Region), u32>,
    spot_gpus: &HashMap<(gpucloud_model::GpuModel, Region), u32>,
    policy: gpucloud_sched::Policy,
    now: gpucloud_model::Timestamp,
    rng: &mut rand::rngs::StdRng,
) -> (gpucloud_sched::Plan, ClusterSnapshot) {
    if idle.is_empty() {
        return (plan(snapshot, queue, policy, now, rng), snapshot.clone());
    }
    let of = |t: Tier| -> Vec<Pending> {
        queue.iter().filter(|p| tiers.get(&p.instance).copied().unwrap_or_default() == t).cloned().collect()
    };
    let mut out = gpucloud_sched::Plan::default();
    let mut fleet = snapshot.clone();
    let reserved = of(Tier::Reserved);
    let first = plan(&fleet, &reserved, policy, now, rng);
    occupy(&mut fleet, &first.placements, &reserved);
    let mut on_demand_view = mask_reserved(&fleet, idle, spot_gpus);
    let mut od = of(Tier::OnDemand);
    od.extend(of(Tier::Warm));
    let second = plan(&on_demand_view, &od, policy, now, rng);
    occupy(&mut fleet, &second.placements, &od);
    occupy(&mut on_demand_view, &second.placements, &od);
    let spot = of(Tier::Spot);
    let third = plan(&fleet, &spot, policy, now, rng);
    for p in [first, second, third] {
        out.placements.extend(p.placements);
        out.unplaced.extend(p.unplaced);
    }
    (out, on_demand_view)
}

/// The market's errors inside a pass are the store's (its only fallible part).
fn store_error(e: AppError) -> StoreError {
    match e {
        AppError::Store(s) => s,
        other => StoreError::Corrupt { table: "market", detail: other.to_string() },
    }
}

impl App {
    /// Whole GPUs spot instances hold, per pool.
    async fn spot_gpus(&self, nodes: &[Node]) -> Result<HashMap<(gpucloud_model::GpuModel, Region), u32>, StoreError> {
        let region_of: HashMap<_, _> = nodes.iter().map(|n| (&n.id, &n.region)).collect();
        let mut out: HashMap<(gpucloud_model::GpuModel, Region), u32> = HashMap::new();
        for i in self.store.spot_holders().await? {
            if let (None, Some(r)) = (&i.share, i.node_id.as_ref().and_then(|n| region_of.get(n))) {
                *out.entry((i.model, (*r).clone())).or_default() += i.count;
            }
        }
        Ok(out)
    }

    /// The queue as the market orders it: on-demand work first (it may preempt spot, so spot must
    /// not take its GPUs back), each class oldest first. A spot request whose bid is under the
    /// spot price waits (the second list, with why); one for any region is steered to the
    /// cheapest region its bid covers.
    async fn market_queue(
        &self,
        pending: &[gpucloud_store::Instance],
        nodes: &[Node],
    ) -> Result<(Vec<Pending>, Vec<(InstanceId, String)>), AppError> {
        let mut prices: HashMap<(gpucloud_model::GpuModel, Region), Option<Money>> = HashMap::new();
        let mut queue = Vec::with_capacity(pending.len());
        let mut spot = Vec::new();
        let mut priced_out = Vec::new();
        for i in pending {
            let mut p = Pending {
                instance: i.id.clone(),
                model: i.model,
                count: i.count,
                region: i.region.clone(),
                share: i.share.clone(),
                tenant: Some(i.tenant_id.clone()),
                node: None,
            };
            if i.sale.tier != Tier::Spot {
                queue.push(p);
                continue;
            }
            let Some(bid) = i.sale.max_price else {
                spot.push(p);
                continue;
            };
            let mut regions: Vec<Region> = match &i.region {
                Some(r) => vec![r.clone()],
                None => nodes
                    .iter()
                    .filter(|n| n.gpus.iter().any(|g| g.model == i.model))
                    .map(|n| n.region.clone())
                    .collect(),
            };
            regions.sort();
            regions.dedup();
            let mut best: Option<(Money, Region)> = None;
            let mut lowest: Option<Money> = None;
            for r in regions {
                let key = (i.model, r.clone());
                if !prices.contains_key(&key) {
                    prices.insert(key.clone(), self.spot_price(i.model, &r).await?);
                }
                let Some(price) = prices[&key] else { continue };
                lowest = Some(lowest.map_or(price, |l: Money| l.min(price)));
                if price <= bid && best.as_ref().is_none_or(|(b, _)| price < *b) {
                    best = Some((price, r));
                }
            }
            match (best, lowest) {
                (Some((_, r)), _) => {
                    if i.region.is_none() {
                        p.region = Some(r);
                    }
                    spot.push(p);
                }
                (None, Some(low)) => priced_out.push((
                    i.id.clone(),
                    format!("the spot price of {} is {low}/GPU-hour or more, above your max price {bid}", i.model),
                )),
                // No spot market for it (no on-demand price): place it like any request.
                (None, None) => spot.push(p),
            }
        }
        queue.extend(spot);
        Ok((queue, priced_out))
    }

    /// One reconcile pass: read the queue and the fleet, plan, apply per node with a generation
    /// check, and record why the rest waits. Nodes that changed meanwhile are re-planned on the
    /// next pass (run again at once when there were conflicts).
    pub async fn schedule_pass(&self) -> Result<PassReport, StoreError> {
        let mut report = PassReport::default();
        for _round in 0..4 {
            let pending = self.store.list_pending(PENDING_BATCH).await?;
            if pending.is_empty() {
                return Ok(report);
            }
            let nodes = self.store.list_nodes().await?;
            let snapshot = snapshot_of(&nodes);
            let by_id: HashMap<&InstanceId, _> = pending.iter().map(|i| (&i.id, i)).collect();
            let (mut queue, priced_out) = self.market_queue(&pending, &nodes).await.map_err(store_error)?;
            // An instance with a volume that lives somewhere goes there and nowhere else.
            let mut pins: HashMap<InstanceId, (String, gpucloud_model::NodeId)> = HashMap::new();
            for i in pending.iter() {
                let Some((volume, mount)) = &i.sale.volume else { continue };
                if let Some(node) = self.store.get_volume(volume).await?.and_then(|v| v.node_id) {
                    pins.insert(i.id.clone(), (mount.volume.clone(), node));
                }
            }
            for p in queue.iter_mut() {
                p.node = pins.get(&p.instance).map(|(_, n)| n.clone());
            }
            for (id, reason) in &priced_out {
                if by_id.get(id).is_some_and(|i| i.pending_reason.as_deref() != Some(reason.as_str())) {
                    self.store.set_pending_reason(id, Some(reason)).await?;
                }
            }
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let tiers: HashMap<InstanceId, Tier> = pending.iter().map(|i| (i.id.clone(), i.sale.tier)).collect();
            let idle = self.reserved_idle().await.map_err(store_error)?;
            let spot_gpus = if idle.is_empty() { HashMap::new() } else { self.spot_gpus(&nodes).await? };
            let backing: HashMap<(gpucloud_model::GpuModel, Region), u32> =
                idle.iter().map(|(k, r)| (k.clone(), (*r).min(spot_gpus.get(k).copied().unwrap_or(0)))).collect();
            let (mut plan, masked) =
                plan_tiers(&snapshot, &queue, &tiers, &idle, &spot_gpus, self.config.policy, self.now(), &mut rng);

            // A cluster's waiting members are a gang: all of them start in this pass, or none.
            // A replica set's members are placed each on its own (one region may be full while the
            // other serves).
            let mut independent = std::collections::HashSet::new();
            let mut seen = std::collections::HashSet::new();
            for (c, _) in pending.iter().filter_map(|i| i.sale.cluster.as_ref()) {
                if seen.insert(c.clone())
                    && self.store.find_cluster(None, c.as_str()).await?.is_some_and(|c| !c.replicas_in.is_empty())
                {
                    independent.insert(c.clone());
                }
            }
            let gang_of = |id: &InstanceId| {
                by_id
                    .get(id)
                    .and_then(|i| i.sale.cluster.as_ref().map(|(c, _)| c.clone()))
                    .filter(|c| !independent.contains(c))
            };
            let mut gangs: HashMap<gpucloud_model::ClusterId, (usize, usize)> = HashMap::new();
            for i in &pending {
                if let Some(c) = gang_of(&i.id) {
                    gangs.entry(c).or_default().0 += 1;
                }
            }
            for p in &plan.placements {
                if let Some(c) = gang_of(&p.instance) {
                    gangs.entry(c).or_default().1 += 1;
                }
            }
            let short: HashMap<_, _> = gangs.into_iter().filter(|(_, (all, placed))| placed < all).collect();
            if !short.is_empty() {
                plan.placements.retain(|p| gang_of(&p.instance).is_none_or(|c| !short.contains_key(&c)));
                for i in &pending {
                    let Some((all, placed)) = gang_of(&i.id).and_then(|c| short.get(&c).copied()) else {
                        continue;
                    };
                    let reason = format!(
                        "waiting as a gang: {all} members of {} x {} start together, {placed} fit now",
                        i.count, i.model
                    );
                    if i.pending_reason.as_deref() != Some(reason.as_str()) {
                        self.store.set_pending_reason(&i.id, Some(&reason)).await?;
                    }
                }
            }
            // Members of a waiting gang say so (above); every other request says what it lacks.
            for u in plan.unplaced.iter().filter(|u| gang_of(&u.instance).is_none_or(|c| !short.contains_key(&c))) {
                let reason = match pins.get(&u.instance) {
                    Some((volume, node)) => format!("waiting for node {node}, where volume {volume} is: {}", u.reason),
                    None => u.reason.to_string(),
                };
                if by_id.get(&u.instance).is_some_and(|i| i.pending_reason.as_deref() != Some(&reason)) {
                    self.store.set_pending_reason(&u.instance, Some(&reason)).await?;
                }
            }
            report.unplaced = plan.unplaced.len() + priced_out.len();
            if !plan.unplaced.is_empty() {
                let waiting = |tier: Tier| -> Vec<Pending> {
                    plan.unplaced
                        .iter()
                        .filter(|u| tiers.get(&u.instance) == Some(&tier))
                        .filter_map(|u| queue.iter().find(|p| p.instance == u.instance).cloned())
                        .collect()
                };
                // The owner of a reservation takes back what spot borrowed; on-demand work only
                // what the reservations do not need.
                self.capacity_preemptions(&snapshot, &waiting(Tier::Reserved), "reserved", &HashMap::new())
                    .await
                    .map_err(store_error)?;
                let mut on_demand = waiting(Tier::OnDemand);
                on_demand.extend(waiting(Tier::Warm));
                self.capacity_preemptions(&masked, &on_demand, "on-demand", &backing).await.map_err(store_error)?;
            }

            let mut per_node: BTreeMap<_, (i64, Vec<NewPlacement>)> = BTreeMap::new();
            for p in &plan.placements {
                let inst = by_id[&p.instance];
                let generation = inst.generation;
                per_node.entry(p.node.clone()).or_insert_with(|| (p.node_generation, Vec::new())).1.push(
                    NewPlacement {
                        instance: p.instance.clone(),
                        instance_generation: generation,
                        gpus: p.gpus.clone(),
                        share: inst.share.clone(),
                        gpu_memory_mib: inst.model.memory_mib(),
                        volume: inst.sale.volume.as_ref().map(|(v, _)| v.clone()),
                    },
                );
            }
            let batches: Vec<NodeBatch> = per_node
                .into_iter()
                .map(|(node, (node_generation, placements))| NodeBatch { node, node_generation, placements })
                .collect();
            let mut conflicts = 0;
            let outcomes = self.store.apply_plan(&batches, self.now()).await?;
            for (batch, outcome) in batches.iter().zip(outcomes) {
                match outcome {
                    ApplyOutcome::Applied { placed } => {
                        let now = self.now();
                        for id in &placed {
                            tracing::info!(instance = %id, node = %batch.node, "placed");
                            if let Some(i) = by_id.get(id) {
                                self.obs.observe_scheduling(now.millis_since(i.updated_at) as f64 / 1000.0);
                            }
                        }
                        report.placed += placed.len();
                    }
                    ApplyOutcome::Conflict => conflicts += 1,
                }
            }
            report.conflicts += conflicts;
            if conflicts == 0 {
                break;
            }
        }
        Ok(report)
    }
}
