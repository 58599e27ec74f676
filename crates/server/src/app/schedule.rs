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

/// The fleet as the scheduling passes see it, and the leadership term it was read in.
#[derive(Default)]
pub(crate) struct FleetCache {
    term: Option<i64>,
    nodes: HashMap<gpucloud_model::NodeId, Node>,
}

impl App {
    /// Every node, as `Store::list_nodes` returns it but for `last_heartbeat` (which may be
    /// older), ordered by name: read from the store only for the nodes whose generation moved
    /// since the last call. Every other change to a node bumps its generation, so the rest is
    /// exactly the store's; a node that changes between this read and a write planned on it
    /// fails that write's generation check and is planned again (decision 0026). A new
    /// leadership term starts from an empty cache.
    pub(crate) async fn fleet(&self) -> Result<Vec<Node>, StoreError> {
        let term = self.leader_term();
        let generations = self.store.node_generations().await?;
        let mut cache = self.fleet_cache.lock().await;
        if cache.term != term {
            *cache = FleetCache { term, nodes: HashMap::new() };
        }
        let live: HashSet<&gpucloud_model::NodeId> = generations.iter().map(|(id, _)| id).collect();
        cache.nodes.retain(|id, _| live.contains(id));
        let moved: Vec<gpucloud_model::NodeId> = generations
            .iter()
            .filter(|(id, generation)| cache.nodes.get(id).is_none_or(|n| n.generation != *generation))
            .map(|(id, _)| id.clone())
            .collect();
        if moved.len() * 2 > generations.len() {
            // Most of the fleet (a first pass, a new term): one scan reads it faster than lists
            // of ids do.
            cache.nodes = self.store.list_nodes().await?.into_iter().map(|n| (n.id.clone(), n)).collect();
        } else if !moved.is_empty() {
            for n in self.store.nodes_by_id(&moved).await? {
                cache.nodes.insert(n.id.clone(), n);
            }
        }
        let mut nodes: Vec<Node> = cache.nodes.values().cloned().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    /// Empties the fleet cache, as a new leadership term does: the next pass reads every node.
    /// `bench apply` uses it for the whole-read baseline.
    pub async fn forget_fleet(&self) {
        self.fleet_cache.lock().await.nodes.clear();
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
            let nodes = self.fleet().await?;
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
                    ApplyOutcome::Conflict => {
                        // Whatever this replica believed of the node, the store said no: the next
                        // round reads it again, changed generation or not.
                        self.fleet_cache.lock().await.nodes.remove(&batch.node);
                        conflicts += 1
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use gpucloud_model::{GpuModel, NodeId, Region, Role, TenantId, Timestamp};
    use gpucloud_store::{NewGpu, NewInstance, NewNode, Sale, Tenant};

    /// The worst a cache can be: a node shown with a free GPU at the store's own generation
    /// while the store has it taken. The store's guard refuses the placement, the node is read
    /// again, and the request waits: a re-plan, never a GPU held twice.
    #[tokio::test]
    async fn a_stale_cached_node_costs_a_replan_never_a_double_booking() {
        let dir = std::env::temp_dir().join(format!("gpucloud-fleet-cache-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = gpucloud_store::open(&format!("sqlite://{}/t.db", dir.display())).await.unwrap();
        let app = App::new(store.clone(), super::super::Config::default());
        let now = app.now();
        let tenant =
            Tenant { id: TenantId::from_random(rand::random()), name: "t".into(), role: Role::Tenant, created_at: now };
        store.create_tenant(&tenant).await.unwrap();
        let node = NodeId::from_random(rand::random());
        let gpus = vec![NewGpu { index: 0, model: GpuModel::A100_40GB, uuid: "GPU-0".into() }];
        let region = Region::parse("eu-1").unwrap();
        store
            .insert_node(&NewNode { id: node.clone(), name: "n".into(), region, gpus, created_at: now })
            .await
            .unwrap();
        store.record_heartbeat(&node, now).await.unwrap();
        let instance = |name: &str| NewInstance {
            id: InstanceId::from_random(rand::random()),
            tenant_id: tenant.id.clone(),
            name: name.into(),
            region: None,
            model: GpuModel::A100_40GB,
            count: 1,
            share: None,
            command: "sleep 1".into(),
            idempotency_key: None,
            created_at: Timestamp(now.0 + 1),
            sale: Sale::default(),
        };
        let first = instance("first");
        store.insert_instance(&first).await.unwrap();
        let free = app.fleet().await.unwrap().pop().unwrap();
        assert!(free.gpus[0].instance.is_none());
        let r = app.schedule_pass().await.unwrap();
        assert_eq!((r.placed, r.conflicts), (1, 0), "{r:?}");

        // The cache is made to show the GPU free at the node's current generation.
        let taken = store.get_node(&node).await.unwrap().unwrap();
        app.fleet_cache.lock().await.nodes.insert(node.clone(), Node { generation: taken.generation, ..free });
        let second = instance("second");
        store.insert_instance(&second).await.unwrap();
        let r = app.schedule_pass().await.unwrap();
        assert_eq!((r.placed, r.conflicts, r.unplaced), (0, 1, 1), "{r:?}");
        let after = store.get_node(&node).await.unwrap().unwrap();
        assert_eq!(after.gpus[0].instance.as_ref(), Some(&first.id), "the GPU stays its first holder's");
        let waiting = store.get_instance(None, &second.id).await.unwrap().unwrap();
        assert_eq!(waiting.state, InstanceState::Pending);
        assert_eq!(app.fleet().await.unwrap(), vec![after], "the node was read again");
        let _ = std::fs::remove_dir_all(dir);
    }
}
