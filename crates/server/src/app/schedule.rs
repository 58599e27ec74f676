use super::App;
use super::AppError;
use gpucloud_model::{InstanceId, InstanceState};
use gpucloud_sched::pass::{Borrowed, Guarantee, Market, Request, SpotHolder};
use gpucloud_sched::{ClusterSnapshot, GpuView, NodeView, Pending};
use gpucloud_store::{ApplyOutcome, NewPlacement, Node, NodeBatch, StoreError};
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

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
                images: n.images.clone(),
            })
            .collect(),
    }
}

/// Marks what `placements` take on `snap`.
pub(crate) fn occupy(snap: &mut ClusterSnapshot, placements: &[gpucloud_sched::Placement], queue: &[Pending]) {
    gpucloud_sched::pass::occupy(snap, placements, queue)
}

/// An instance holding GPUs, as preemption sees it.
fn holder_of(i: &gpucloud_store::Instance) -> Option<SpotHolder> {
    Some(SpotHolder {
        instance: i.id.clone(),
        node: i.node_id.clone()?,
        model: i.model,
        gpus: i.count,
        slice: i.share.is_some(),
        running: i.state == InstanceState::Running,
        running_since: i.running_since,
        last_checkpoint: i.checkpoint.as_ref().map(|c| c.at),
        leaving: i.notice.is_some() || i.state == InstanceState::Stopping,
    })
}

/// The market's errors inside a pass are the store's (its only fallible part).
fn store_error(e: AppError) -> StoreError {
    match e {
        AppError::Store(s) => s,
        other => StoreError::Corrupt { table: "market", detail: other.to_string() },
    }
}

impl App {
    /// The market as this pass sees it: spot prices where requests bid, reserved GPUs left idle,
    /// and the spot instances that hold GPUs.
    async fn market_of(
        &self,
        snapshot: &ClusterSnapshot,
        requests: &[Request],
    ) -> Result<(Market, Vec<gpucloud_store::Instance>), AppError> {
        let mut spot_prices = BTreeMap::new();
        for (model, region) in gpucloud_sched::pass::priced_pools(snapshot, requests) {
            if let Some(price) = self.spot_price(model, &region).await? {
                spot_prices.insert((model, region), price);
            }
        }
        let reserved_idle = self.reserved_idle().await?.into_iter().collect();
        let mut holders = self.store.spot_holders().await?;
        let spot_holders = holders.iter().filter_map(holder_of).collect();
        let min_runtime_ms = self.config.market.min_runtime.as_millis() as i64;
        // Shares order requests of different projects, and say which projects have a guarantee
        // to reclaim: one project's on-demand-less queue needs none.
        let waiting: HashSet<(&Option<gpucloud_model::TenantId>, &Option<gpucloud_model::ProjectName>)> =
            requests.iter().map(|r| (&r.pending.tenant, &r.project)).collect();
        let on_demand = requests.iter().any(|r| r.tier == gpucloud_model::Tier::OnDemand);
        let project_shares =
            if waiting.len() > 1 || on_demand { self.store.project_shares().await? } else { Vec::new() };
        let (guarantees, borrowed, lent) = self.reclaimable(requests, &project_shares).await?;
        holders.extend(lent);
        let shares = if waiting.len() > 1 {
            project_shares
                .into_iter()
                .map(|(t, p, used_milli, weight_milli)| {
                    ((t, p), gpucloud_sched::order::Share { used_milli, weight_milli })
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let aging_ms = self.config.market.priority_aging.as_millis() as i64;
        let power = self.config.power_weight;
        let market = Market {
            spot_prices,
            reserved_idle,
            spot_holders,
            min_runtime_ms,
            shares,
            aging_ms,
            guarantees,
            borrowed,
            power,
        };
        Ok((market, holders))
    }

    /// What reclaim needs, for the organizations whose waiting on-demand requests belong to a
    /// project with a guarantee: each of their projects' whole GPUs held (not counting
    /// instances already under notice) against its guarantee, per model, and their instances
    /// that hold whole GPUs (reserved work excepted: its owner paid for it).
    #[allow(clippy::type_complexity)]
    async fn reclaimable(
        &self,
        requests: &[Request],
        shares: &[(gpucloud_model::TenantId, gpucloud_model::ProjectName, u64, u64)],
    ) -> Result<
        (
            BTreeMap<(gpucloud_model::TenantId, gpucloud_model::ProjectName, gpucloud_model::GpuModel), Guarantee>,
            Vec<Borrowed>,
            Vec<gpucloud_store::Instance>,
        ),
        AppError,
    > {
        let guaranteed: HashSet<(&gpucloud_model::TenantId, &gpucloud_model::ProjectName)> =
            shares.iter().filter(|s| s.3 >= 1000).map(|s| (&s.0, &s.1)).collect();
        let tenants: BTreeSet<&gpucloud_model::TenantId> = requests
            .iter()
            .filter(|r| r.tier == gpucloud_model::Tier::OnDemand)
            .filter_map(|r| match (&r.pending.tenant, &r.project) {
                (Some(t), Some(p)) if guaranteed.contains(&(t, p)) => Some(t),
                _ => None,
            })
            .collect();
        let (mut guarantees, mut borrowed, mut lent) = (BTreeMap::new(), Vec::new(), Vec::new());
        for tenant in tenants {
            for u in self.store.quota_use(tenant, None).await? {
                let g = u.quota.as_ref().map_or(0, |q| (q.guaranteed_milli / 1000) as u32);
                guarantees.insert((tenant.clone(), u.project.clone(), u.model), Guarantee { held: 0, guaranteed: g });
            }
            for i in self.store.list_instances(Some(tenant)).await? {
                if !i.state.holds_gpus() || i.share.is_some() || i.sale.tier == gpucloud_model::Tier::Reserved {
                    continue;
                }
                let key = (tenant.clone(), i.sale.project.clone(), i.model);
                let g = guarantees.entry(key).or_insert(Guarantee::default());
                if i.notice.is_none() && i.state != InstanceState::Stopping {
                    g.held += i.count;
                }
                if let Some(holder) = holder_of(&i) {
                    borrowed.push(Borrowed { holder, tenant: tenant.clone(), project: i.sale.project.clone() });
                    lent.push(i);
                }
            }
        }
        Ok((guarantees, borrowed, lent))
    }

    /// One reconcile pass: read the queue, the fleet and the market; let the pure pass
    /// (`gpucloud_sched::pass`) decide; apply its placements per node with a generation check,
    /// record why the rest waits and give its notices. Nodes that changed meanwhile are
    /// re-planned on the next pass (run again at once when there were conflicts).
    pub async fn schedule_pass(&self) -> Result<PassReport, StoreError> {
        let mut report = PassReport::default();
        // Requests held for quota join the queue once their project has room.
        self.store.admit_held(self.now()).await?;
        for _round in 0..4 {
            let pending = self.store.list_pending(PENDING_BATCH).await?;
            if pending.is_empty() {
                return Ok(report);
            }
            let nodes = self.store.list_nodes().await?;
            let snapshot = snapshot_of(&nodes);
            let by_id: HashMap<&InstanceId, _> = pending.iter().map(|i| (&i.id, i)).collect();
            // Clusters whose members start together: not replica sets, whose members are each
            // placed on their own (one region may be full while the other serves).
            let mut gangs = HashSet::new();
            let mut seen = HashSet::new();
            for (c, _) in pending.iter().filter_map(|i| i.sale.cluster.as_ref()) {
                if seen.insert(c.clone())
                    && self.store.find_cluster(None, c.as_str()).await?.is_some_and(|c| c.replicas_in.is_empty())
                {
                    gangs.insert(c.clone());
                }
            }
            let mut requests = Vec::with_capacity(pending.len());
            for i in &pending {
                // An instance with a volume that lives somewhere goes there and nowhere else.
                let mut pin = None;
                if let Some((volume, mount)) = &i.sale.volume
                    && let Some(node) = self.store.get_volume(volume).await?.and_then(|v| v.node_id)
                {
                    pin = Some((mount.volume.clone(), node));
                }
                requests.push(Request {
                    pending: Pending {
                        instance: i.id.clone(),
                        model: i.model,
                        count: i.count,
                        region: i.region.clone(),
                        share: i.share.clone(),
                        tenant: Some(i.tenant_id.clone()),
                        node: pin.as_ref().map(|(_, n)| n.clone()),
                        image: i.sale.image.clone(),
                    },
                    tier: i.sale.tier,
                    bid: i.sale.max_price,
                    gang: i.sale.cluster.as_ref().map(|(c, _)| c.clone()).filter(|c| gangs.contains(c)),
                    volume: pin.map(|(v, _)| v),
                    priority: i.sale.priority,
                    // A requeued or restarted instance waits from when it went back to pending.
                    since: i.updated_at.max(i.created_at),
                    project: Some(i.sale.project.clone()),
                });
            }
            let (market, holders) = self.market_of(&snapshot, &requests).await.map_err(store_error)?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(super::random_bits() as u64);
            let now = self.now();
            let plan = gpucloud_sched::pass::pass(&snapshot, &requests, &market, self.config.policy, now, &mut rng);

            for (id, why) in &plan.waiting {
                let reason = why.to_string();
                if by_id.get(id).is_some_and(|i| i.pending_reason.as_deref() != Some(reason.as_str())) {
                    self.store.set_pending_reason(id, Some(&reason)).await?;
                }
            }
            report.unplaced = plan.waiting.len();
            for p in &plan.preemptions {
                let Some(inst) = holders.iter().find(|i| i.id == p.eviction.victim) else { continue };
                self.notify_preemption(inst, self.notice_ms(), p.to_string()).await.map_err(store_error)?;
            }

            let mut per_node: BTreeMap<_, (i64, Vec<NewPlacement>)> = BTreeMap::new();
            for p in &plan.placements {
                let inst = by_id[&p.instance];
                let generation = inst.generation;
                per_node.entry(p.node.clone()).or_insert_with(|| (p.node_generation, Vec::new())).1.push(
                    NewPlacement {
                        note: inst
                            .sale
                            .image
                            .as_ref()
                            .filter(|_| p.image_cached)
                            .map(|i| format!("image {i} was already on the node (no pull)")),
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
            let outcomes = self.store.apply_plan(&batches, now).await?;
            for (batch, outcome) in batches.iter().zip(outcomes) {
                match outcome {
                    ApplyOutcome::Applied { placed } => {
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
