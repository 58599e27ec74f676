use super::{App, AppError, Principal, random_bits};
use gpucloud_model::{GpuModel, InstanceState, NodeHealth, NodeId, NodeState, Region, UserAction};
use gpucloud_store::{NewGpu, NewNode, Node};
use std::collections::BTreeMap;

/// How an instance waiting on its node's drain says so (its `reason`).
pub(crate) const DRAIN_WAIT: &str = "its node is draining";

/// Free and total GPUs per region and model, for tenants choosing where to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolCapacity {
    pub region: Region,
    pub model: GpuModel,
    pub nodes: u32,
    pub total: u32,
    pub free: u32,
}

/// Node names are host names: 1 to 64 letters, digits, '-', '.' or '_'.
pub(crate) fn check_node_name(name: &str) -> Result<(), AppError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok { Ok(()) } else { Err(AppError::invalid("name", "a node name has 1 to 64 letters, digits, '-', '.' or '_'")) }
}

impl App {
    pub async fn list_nodes(&self, by: &Principal) -> Result<Vec<Node>, AppError> {
        by.require_operator()?;
        Ok(self.store.list_nodes().await?)
    }

    pub async fn get_node(&self, by: &Principal, id: &str) -> Result<Node, AppError> {
        by.require_operator()?;
        let not_found = || AppError::NotFound { kind: "node", id: id.to_string() };
        let nid = NodeId::parse(id).map_err(|_| not_found())?;
        self.store.get_node(&nid).await?.ok_or_else(not_found)
    }

    /// Registers a node. Its GPUs are usable once its agent heartbeats.
    pub async fn add_node(
        &self,
        by: Option<&Principal>,
        name: &str,
        region: Region,
        gpus: &[(GpuModel, u32)],
    ) -> Result<Node, AppError> {
        if let Some(p) = by {
            p.require_operator()?;
        }
        check_node_name(name)?;
        let total: u32 = gpus.iter().map(|(_, c)| *c).sum();
        if gpus.is_empty() || gpus.iter().any(|(_, c)| *c == 0) || total > 16 {
            return Err(AppError::invalid("gpus", "a node has 1 to 16 GPUs, each group at least 1"));
        }
        let id = NodeId::from_random(random_bits());
        let mut new_gpus = Vec::new();
        for (model, count) in gpus {
            for _ in 0..*count {
                let index = new_gpus.len() as u32;
                // Fake UUIDs look like NVML's, and are unique per node id.
                let uuid = format!("GPU-{}-{:04}", &id.as_str()[2..], index);
                new_gpus.push(NewGpu { index, model: *model, uuid });
            }
        }
        let node = NewNode { id: id.clone(), name: name.to_string(), region, gpus: new_gpus, created_at: self.now() };
        self.store.insert_node(&node).await.map_err(AppError::store_conflict)?;
        let models: Vec<GpuModel> = gpus.iter().map(|(m, _)| *m).collect();
        self.price_new_capacity(&node.region, &models).await?;
        tracing::info!(node = %id, name, "node added");
        self.nodes_changed.notify_one();
        self.store.get_node(&id).await?.ok_or_else(|| AppError::NotFound { kind: "node", id: id.to_string() })
    }

    pub async fn set_node_state(&self, by: &Principal, id: &str, state: NodeState) -> Result<Node, AppError> {
        self.set_node_state_with(by, id, state, false, None).await
    }

    /// Drain (`state` draining) moves each instance off once another node has room for it
    /// ([`App::drain_pass`]); with `force`, every instance is stopped now and waits pending
    /// for room, as a node that must go down at once needs; with a `deadline`, what is still
    /// there when it passes is stopped so.
    pub async fn set_node_state_with(
        &self,
        by: &Principal,
        id: &str,
        state: NodeState,
        force: bool,
        deadline: Option<std::time::Duration>,
    ) -> Result<Node, AppError> {
        let node = self.get_node(by, id).await?;
        let deadline = deadline.map(|d| self.now().plus_millis(d.as_millis() as i64));
        self.store.set_node_state(&node.id, state, deadline).await?;
        if state == NodeState::Draining && force {
            self.evict_all(&node.id).await?;
        } else if state == NodeState::Draining {
            self.drain_pass().await?;
        }
        if state != NodeState::Draining {
            // What waited on this node's drain does not any more.
            for inst in self.store.instances_on_node(&node.id).await? {
                if inst.status_reason.as_deref().is_some_and(|r| r.starts_with(DRAIN_WAIT)) {
                    self.store.set_status_reason(&inst.id, None).await?;
                }
            }
        }
        if state == NodeState::Ready {
            self.wake_scheduler();
        }
        tracing::info!(node = %node.id, state = %state, "node state");
        self.get_node(by, id).await
    }

    /// An operator puts a failed GPU back in service once the node's latest reading of it, from
    /// an agent heartbeating now, shows no fault (an XID is reported once per event, ECC errors
    /// until the GPU is reset: reset it on the host first).
    pub async fn return_gpu(&self, by: &Principal, id: &str, index: u32) -> Result<Node, AppError> {
        let node = self.get_node(by, id).await?;
        let gpu = node
            .gpus
            .iter()
            .find(|g| g.index == index)
            .ok_or_else(|| AppError::NotFound { kind: "gpu", id: format!("{index} on node {}", node.id) })?;
        if gpu.healthy {
            return Err(AppError::Conflict(format!("GPU {index} of node {} is in service", node.id)));
        }
        let now = self.now();
        let fresh = now.plus_millis(-(self.config.heartbeat_grace.as_millis() as i64));
        let readings = self.fleet_readings().await?;
        let reading = readings
            .get(&node.id)
            .filter(|(at, _)| *at >= fresh)
            .and_then(|(_, gs)| gs.iter().find(|g| g.index == index));
        match reading {
            None => {
                return Err(AppError::Conflict(format!(
                    "no recent reading of GPU {index} from node {}'s agent: it must be heartbeating for the GPU to be checked",
                    node.id
                )));
            }
            Some(r) if r.is_fatal() => {
                let cause = r.xid.map_or_else(
                    || format!("{} uncorrectable ECC errors", r.ecc_uncorrectable),
                    |x| format!("XID {x}"),
                );
                return Err(AppError::Conflict(format!(
                    "GPU {index} of node {} still reports {cause}: reset it on the host (nvidia-smi -r -i {index}) and try again",
                    node.id
                )));
            }
            Some(_) => {}
        }
        self.store.set_gpu_health(&node.id, index, true).await?;
        tracing::warn!(node = %node.id, gpu = index, "GPU returned to service");
        self.wake_scheduler();
        self.get_node(by, id).await
    }

    /// For testing a fleet: GPU `index` of the node fails as if its agent had reported the fatal
    /// `xid`, with everything that follows (out of service, alerts, notices to what runs on it).
    pub async fn simulate_gpu_fault(&self, by: &Principal, id: &str, index: u32, xid: u32) -> Result<Node, AppError> {
        let node = self.get_node(by, id).await?;
        if !gpucloud_model::xid_is_fatal(xid) {
            return Err(AppError::invalid(
                "xid",
                format!("XID {xid} is not one that takes a GPU out of service (e.g. 48, 79, 94, 95)"),
            ));
        }
        let gpu = node
            .gpus
            .iter()
            .find(|g| g.index == index)
            .ok_or_else(|| AppError::NotFound { kind: "gpu", id: format!("{index} on node {}", node.id) })?;
        if !gpu.healthy {
            return Err(AppError::Conflict(format!("GPU {index} of node {} is already out of service", node.id)));
        }
        let reading = super::GpuReading {
            index,
            temperature_c: 0.0,
            power_w: 0.0,
            energy_mj: 0,
            memory_used_mib: 0,
            utilization_pct: 0.0,
            xid: Some(xid),
            ecc_uncorrectable: 0,
        };
        self.gpu_failed(&node, &reading).await?;
        self.get_node(by, id).await
    }

    /// Moves instances off draining nodes, each only when another node has room for it now:
    /// stopping it with nowhere to go would end its workload for nothing. One that must wait
    /// says so in its `reason` until room frees, the drain is forced, or the node is uncordoned.
    pub async fn drain_pass(&self) -> Result<usize, AppError> {
        use rand::SeedableRng;
        // Every second: the cached fleet, not a read of every GPU row.
        let nodes = self.fleet().await?;
        if !nodes.iter().any(|n| n.state == NodeState::Draining) {
            return Ok(0);
        }
        let mut fleet = super::schedule::snapshot_of(&nodes);
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut moved = 0;
        let now = self.now();
        for node in nodes.iter().filter(|n| n.state == NodeState::Draining) {
            if node.drain_deadline.is_some_and(|d| d <= now) {
                let stopped = self.evict_all(&node.id).await?;
                if stopped > 0 {
                    tracing::warn!(node = %node.id, stopped, "drain deadline passed: stopped what still ran");
                }
                moved += stopped;
                continue;
            }
            for inst in self.store.instances_on_node(&node.id).await? {
                if !matches!(inst.state, InstanceState::Provisioning | InstanceState::Running) {
                    continue;
                }
                let want = gpucloud_sched::Pending {
                    instance: inst.id.clone(),
                    model: inst.model,
                    count: inst.count,
                    region: inst.region.clone(),
                    share: inst.share.clone(),
                    tenant: Some(inst.tenant_id.clone()),
                    node: None,
                    image: inst.sale.image.clone(),
                };
                let why = if inst.sale.volume.is_some() {
                    Some(format!("{DRAIN_WAIT}: its volume lives on this node, so it stays until the drain is forced"))
                } else {
                    let plan = gpucloud_sched::plan(
                        &fleet,
                        std::slice::from_ref(&want),
                        self.config.policy,
                        self.now(),
                        &mut rng,
                    );
                    if plan.placements.is_empty() {
                        let lacks = plan.unplaced.first().map(|u| u.reason.to_string()).unwrap_or_default();
                        Some(format!("{DRAIN_WAIT}: it moves once another node has room ({lacks})"))
                    } else {
                        super::schedule::occupy(&mut fleet, &plan.placements, std::slice::from_ref(&want));
                        None
                    }
                };
                match why {
                    Some(why) => {
                        if inst.status_reason.as_deref() != Some(why.as_str()) {
                            self.store.set_status_reason(&inst.id, Some(&why)).await?;
                        }
                    }
                    None => {
                        tracing::info!(instance = %inst.id, node = %node.id, "drain: moving to a node with room");
                        self.transition(inst, |i| {
                            i.state.on_user(i.stop_target, UserAction::Evict).map_err(AppError::from)
                        })
                        .await?;
                        moved += 1;
                    }
                }
            }
        }
        Ok(moved)
    }

    /// Stops everything holding GPUs on the node; each waits pending for room elsewhere.
    async fn evict_all(&self, node: &gpucloud_model::NodeId) -> Result<usize, AppError> {
        let mut n = 0;
        for inst in self.store.instances_on_node(node).await? {
            if inst.state.holds_gpus() {
                self.transition(inst, |i| i.state.on_user(i.stop_target, UserAction::Evict).map_err(AppError::from))
                    .await?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub async fn capacity(&self) -> Result<Vec<PoolCapacity>, AppError> {
        let mut pools: BTreeMap<(Region, GpuModel), PoolCapacity> = BTreeMap::new();
        for node in self.store.list_nodes().await? {
            let usable = node.state == NodeState::Ready && node.health == NodeHealth::Healthy;
            let mut seen_models = Vec::new();
            for g in &node.gpus {
                let p = pools.entry((node.region.clone(), g.model)).or_insert_with(|| PoolCapacity {
                    region: node.region.clone(),
                    model: g.model,
                    nodes: 0,
                    total: 0,
                    free: 0,
                });
                p.total += 1;
                // Whole GPUs free: a GPU carrying slices cannot be rented whole.
                if usable && g.instance.is_none() && g.slices.is_empty() && g.healthy {
                    p.free += 1;
                }
                if !seen_models.contains(&g.model) {
                    seen_models.push(g.model);
                    p.nodes += 1;
                }
            }
        }
        Ok(pools.into_values().collect())
    }
}

impl App {
    /// The GPU model, count and tier to rent for a workload, from the price book and what is
    /// free now (`billing::recommend`).
    pub async fn recommend(
        &self,
        by: &Principal,
        workload: gpucloud_billing::recommend::Workload,
        params_billion: f64,
        hours: f64,
    ) -> Result<gpucloud_billing::recommend::Recommendation, AppError> {
        let now = self.now();
        let mut offers = Vec::new();
        let nodes = self.store.list_nodes().await?;
        // GPUs others' reservations keep idle are not free for the asker.
        let kept = self.reserved_idle_except(Some(&by.tenant.id)).await?;
        for pool in self.capacity().await? {
            let per_node = nodes
                .iter()
                .filter(|n| n.region == pool.region && n.health != NodeHealth::Lost)
                .map(|n| n.gpus.iter().filter(|g| g.model == pool.model).count() as u32);
            let (total, largest_node) = per_node.fold((0, 0), |(t, l), c| (t + c, l.max(c)));
            let free = pool.free.saturating_sub(kept.get(&(pool.model, pool.region.clone())).copied().unwrap_or(0));
            let Some(od) = self.store.price_at(pool.model, &pool.region, gpucloud_model::Tier::OnDemand, now).await?
            else {
                continue;
            };
            let spot = self.store.price_at(pool.model, &pool.region, gpucloud_model::Tier::Spot, now).await?;
            offers.push(gpucloud_billing::recommend::Offer {
                model: pool.model,
                region: pool.region.to_string(),
                on_demand: od.per_gpu_hour,
                spot: spot.map(|p| p.per_gpu_hour),
                free,
                total,
                largest_node,
            });
        }
        gpucloud_billing::recommend::recommend(workload, params_billion, hours, &offers)
            .map_err(|e| AppError::invalid(e.field, e.message))
    }
}
