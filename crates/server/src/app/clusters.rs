//! Clusters: a tenant's group of identical members (an instance of `gpus_per_node` GPUs each)
//! resized between `min_nodes` and `max_nodes`. Ranks stay `0..size`: a scale-up adds the next
//! ranks as one gang (the scheduler starts all of them or none), a scale-down gives the highest
//! ranks the stop notice first. Crash-safe like jobs: the cluster's epoch and target move first
//! (compare-and-set), then each member is created under `cluster:<id>:<epoch>:<rank>`, and the
//! reconciler creates whatever the target lacks.

use super::{App, AppError, Principal, random_bits};
use gpucloud_model::{ClusterId, GpuModel, InstanceId, InstanceState, Region, Tier, UserAction};
use gpucloud_store::{Cluster, Instance, NewInstance, Sale};

/// What a tenant asks for (already parsed from the wire).
#[derive(Debug, Clone)]
pub struct NewCluster {
    pub name: String,
    pub model: GpuModel,
    pub region: Option<Region>,
    pub gpus_per_node: u32,
    pub nodes: u32,
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub command: String,
    pub tier: Tier,
    /// An active-active replica set: one member per region, in this order.
    pub replicas_in: Vec<Region>,
    /// The project to create in (the key's, or `default`, when `None`).
    pub project: Option<String>,
    /// What each member runs in besides its command (as on an instance).
    pub image: Option<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub ports: Vec<String>,
}

/// A cluster with its current members.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub cluster: Cluster,
    /// Members that count: those holding or waiting for GPUs, by rank.
    pub members: Vec<Instance>,
    /// ready (every rank below the target runs), resizing, or degraded (a member ended).
    pub state: gpucloud_api::ClusterState,
    pub reason: Option<String>,
}

pub const MAX_CLUSTER_NODES: u32 = 64;

/// How long a replica set waits before replacing a member that ended: 1 s, doubling with each
/// end of that rank in the last ten minutes, at most 5 min, so a workload that dies at once
/// does not relaunch (and bill a first second) in a tight loop.
pub(crate) fn replica_backoff_ms(ends: &[gpucloud_model::Timestamp], now: gpucloud_model::Timestamp) -> i64 {
    let recent = ends.iter().filter(|t| t.0 > now.0 - 600_000).count() as u32;
    (1_000i64 << recent.saturating_sub(1).min(9)).min(300_000)
}

pub(crate) fn live(i: &Instance) -> bool {
    i.state == InstanceState::Pending || i.state.holds_gpus()
}

/// The rendezvous port of a cluster: fixed for its life, spread over 29500-29899.
pub fn master_port(id: &ClusterId) -> u16 {
    let h = id.as_str().bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    29500 + (h % 400) as u16
}

impl App {
    pub async fn create_cluster(&self, by: &Principal, mut req: NewCluster) -> Result<ClusterView, AppError> {
        super::check_slug("cluster", &req.name)?;
        if !req.replicas_in.is_empty() {
            self.check_replicas(&req).await?;
            let n = req.replicas_in.len() as u32;
            (req.nodes, req.min_nodes, req.max_nodes) = (n, n, n);
        }
        if req.gpus_per_node == 0 || req.gpus_per_node > gpucloud_model::MAX_GPUS_PER_INSTANCE {
            return Err(AppError::invalid(
                "gpus_per_node",
                format!("gpus_per_node is 1 to {}", gpucloud_model::MAX_GPUS_PER_INSTANCE),
            ));
        }
        if req.min_nodes == 0 || req.min_nodes > req.max_nodes || req.max_nodes > MAX_CLUSTER_NODES {
            return Err(AppError::invalid(
                "min_nodes",
                format!(
                    "need 1 <= min_nodes <= max_nodes <= {MAX_CLUSTER_NODES}, got {}..{}",
                    req.min_nodes, req.max_nodes
                ),
            ));
        }
        if req.nodes < req.min_nodes || req.nodes > req.max_nodes {
            return Err(AppError::invalid(
                "nodes",
                format!("nodes must be between min_nodes ({}) and max_nodes ({})", req.min_nodes, req.max_nodes),
            ));
        }
        if req.command.trim().is_empty() || req.command.len() > 16 * 1024 || req.command.contains('\0') {
            return Err(AppError::invalid("command", "command must be 1 to 16384 bytes, not blank, with no NUL byte"));
        }
        if req.tier == Tier::Reserved {
            return Err(AppError::invalid("tier", "a cluster runs on-demand or spot"));
        }
        if let Some(region) = &req.region
            && !self.store.list_regions().await?.contains(region)
        {
            return Err(AppError::invalid("region", format!("unknown region '{region}'")));
        }
        let workload = self.member_workload(&by.tenant.id, req.image, &req.env, &req.secrets, &req.ports).await?;
        self.check_can_spend(&by.tenant.id).await?;
        // Members ask for no class of their own: the lowest passes any project's cap.
        let project = self.admit_to_project(by, req.project.as_deref(), gpucloud_model::Priority::Batch).await?;
        let want = u64::from(req.nodes) * u64::from(req.gpus_per_node) * 1000;
        self.check_quota_room(&by.tenant.id, &project, req.model, want).await?;
        let now = self.now();
        let cluster = Cluster {
            id: ClusterId::from_random(random_bits()),
            tenant_id: by.tenant.id.clone(),
            name: req.name,
            model: req.model,
            region: req.region,
            gpus_per_node: req.gpus_per_node,
            min_nodes: req.min_nodes,
            max_nodes: req.max_nodes,
            target_nodes: req.nodes,
            command: req.command,
            tier: req.tier,
            active: true,
            epoch: 1,
            generation: 1,
            created_at: now,
            updated_at: now,
            schedule: None,
            utc_offset_min: 0,
            autoscale: None,
            replicas_in: req.replicas_in,
            workload,
            project,
        };
        self.store.insert_cluster(&cluster).await.map_err(AppError::store_conflict)?;
        tracing::info!(cluster = %cluster.id, name = %cluster.name, nodes = cluster.target_nodes, "cluster created");
        self.converge_cluster(&cluster).await?;
        self.cluster_view(cluster).await
    }

    async fn find_cluster(&self, by: &Principal, name: &str) -> Result<Cluster, AppError> {
        self.store
            .find_cluster(Some(&by.tenant.id), name)
            .await?
            .filter(|c| by.sees(&c.project))
            .ok_or_else(|| AppError::NotFound { kind: "cluster", id: name.to_string() })
    }

    pub async fn get_cluster(&self, by: &Principal, name: &str) -> Result<ClusterView, AppError> {
        let c = self.find_cluster(by, name).await?;
        self.cluster_view(c).await
    }

    pub async fn list_clusters(&self, by: &Principal) -> Result<Vec<ClusterView>, AppError> {
        let mut out = Vec::new();
        for c in self.store.list_clusters(Some(&by.tenant.id)).await?.into_iter().filter(|c| by.sees(&c.project)) {
            out.push(self.cluster_view(c).await?);
        }
        Ok(out)
    }

    /// Sets the size. Growing adds the missing ranks as one gang; shrinking gives the ranks at and
    /// above `n` the stop notice (a waiting member is dropped at once).
    /// A replica set: 2 to 8 distinct known regions, each with the GPU model, and no single
    /// `region` beside them.
    async fn check_replicas(&self, req: &NewCluster) -> Result<(), AppError> {
        let field = "replicas_in";
        if req.region.is_some() {
            return Err(AppError::invalid(field, "give replicas_in or region, not both"));
        }
        if !(2..=8).contains(&req.replicas_in.len()) {
            return Err(AppError::invalid(field, "replicas_in lists 2 to 8 regions"));
        }
        let nodes = self.store.list_nodes().await?;
        for (k, r) in req.replicas_in.iter().enumerate() {
            if req.replicas_in[..k].contains(r) {
                return Err(AppError::invalid(field, format!("region '{r}' is listed twice")));
            }
            if !nodes.iter().any(|n| &n.region == r) {
                return Err(AppError::invalid(field, format!("unknown region '{r}'")));
            }
            if !nodes.iter().any(|n| &n.region == r && n.gpus.iter().any(|g| g.model == req.model)) {
                return Err(AppError::invalid(field, format!("region '{r}' has no {}", req.model)));
            }
        }
        Ok(())
    }

    fn refuse_if_replica_set(c: &Cluster, what: &str) -> Result<(), AppError> {
        if c.replicas_in.is_empty() {
            return Ok(());
        }
        Err(AppError::Conflict(format!(
            "{} is a replica set (one member in each of {}): it cannot {what}",
            c.name,
            c.replicas_in.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
        )))
    }

    pub async fn resize_cluster(&self, by: &Principal, name: &str, n: u32) -> Result<ClusterView, AppError> {
        let mut c = self.find_cluster(by, name).await?;
        Self::refuse_if_replica_set(&c, "be resized")?;
        if n < c.min_nodes || n > c.max_nodes {
            return Err(AppError::invalid(
                "nodes",
                format!("{} resizes between {} and {} nodes, not {n}", c.name, c.min_nodes, c.max_nodes),
            ));
        }
        if n > c.target_nodes {
            self.check_can_spend(&by.tenant.id).await?;
            let more = u64::from(n - c.target_nodes) * u64::from(c.gpus_per_node) * 1000;
            self.check_quota_room(&by.tenant.id, &c.project, c.model, more).await?;
        }
        for _ in 0..8 {
            if c.target_nodes == n {
                break;
            }
            match self.store.update_cluster(&c.id, c.generation, n, c.epoch + 1, true, self.now()).await? {
                Some(updated) => {
                    tracing::info!(cluster = %c.id, from = c.target_nodes, to = n, "cluster resized");
                    c = updated;
                    break;
                }
                None => c = self.find_cluster(by, name).await?,
            }
        }
        self.converge_cluster(&c).await?;
        self.cluster_view(c).await
    }

    /// Terminates every member and retires the name.
    pub async fn delete_cluster(&self, by: &Principal, name: &str) -> Result<(), AppError> {
        let mut c = self.find_cluster(by, name).await?;
        for _ in 0..8 {
            match self.store.update_cluster(&c.id, c.generation, c.target_nodes, c.epoch, false, self.now()).await? {
                Some(_) => break,
                None => c = self.find_cluster(by, name).await?,
            }
        }
        for m in self.store.cluster_members(&c.id).await?.into_iter().filter(live) {
            self.transition(m, |i| i.state.on_user(i.stop_target, UserAction::Terminate).map_err(AppError::from))
                .await?;
        }
        Ok(())
    }

    /// Brings the members in line with the target: each missing rank launched (as one batch, a
    /// gang for the scheduler), each rank at or above the target noticed or dropped.
    pub(crate) async fn converge_cluster(&self, c: &Cluster) -> Result<(), AppError> {
        let members = self.store.cluster_members(&c.id).await?;
        let rank_of = |i: &Instance| i.sale.cluster.as_ref().map_or(0, |(_, r)| *r);
        // After a model change the members of the old model stay until their replacement runs.
        let current = |i: &Instance| i.model == c.model;
        let mut gang = Vec::new();
        for rank in 0..c.target_nodes {
            if members.iter().any(|m| rank_of(m) == rank && live(m) && current(m)) {
                continue;
            }
            let mut key = format!("cluster:{}:{}:{rank}", c.id, c.epoch);
            if !c.replicas_in.is_empty() {
                let ended: Vec<_> =
                    members.iter().filter(|m| rank_of(m) == rank && !live(m)).map(|m| m.updated_at).collect();
                if let Some(last) = ended.iter().max() {
                    if self.now() < last.plus_millis(replica_backoff_ms(&ended, self.now())) {
                        continue;
                    }
                    // A member lost with its node may still run on a cut-off agent until that
                    // agent fences itself: replace it only then, so the rank never runs twice.
                    let lost = members
                        .iter()
                        .filter(|m| rank_of(m) == rank && m.state == InstanceState::Lost)
                        .max_by_key(|m| m.updated_at);
                    if let Some(lost) = lost
                        && let Some(fenced) = self.fenced_at(lost).await?
                        && self.now() < fenced
                    {
                        continue;
                    }
                    // One key per replacement: replicas computing the same pass insert it once.
                    key = format!("{key}:{}", ended.len());
                }
            }
            let id = InstanceId::from_random(random_bits());
            let new = NewInstance {
                id,
                tenant_id: c.tenant_id.clone(),
                name: format!("{}-{rank}", c.name),
                region: c.replicas_in.get(rank as usize).cloned().or_else(|| c.region.clone()),
                model: c.model,
                count: c.gpus_per_node,
                share: None,
                command: c.command.clone(),
                idempotency_key: Some(key),
                created_at: self.now(),
                sale: Sale {
                    tier: c.tier,
                    max_price: None,
                    env: c.workload.env.clone(),
                    job: None,
                    cluster: Some((c.id.clone(), rank)),
                    pool: None,
                    image: c.workload.image.clone(),
                    ports: c.workload.ports.clone(),
                    volume: None,
                    project: c.project.clone(),
                    // Checked when the size was asked for; a member that finds the project
                    // full (a race with another create) waits rather than failing the pass.
                    on_quota: gpucloud_model::OnQuota::Wait,
                    priority: gpucloud_model::Priority::Default,
                },
            };
            gang.push(new);
        }
        // One transaction: the scheduler never sees part of a gang.
        let launched = !gang.is_empty() && self.store.insert_instances(&gang).await?.into_iter().any(|c| c);
        let replaced = |m: &Instance| {
            !current(m)
                && (m.state == InstanceState::Pending
                    || members
                        .iter()
                        .any(|n| current(n) && rank_of(n) == rank_of(m) && n.state == InstanceState::Running))
        };
        let leaving: Vec<Instance> =
            members.iter().filter(|m| live(m) && (rank_of(m) >= c.target_nodes || replaced(m))).cloned().collect();
        for m in leaving {
            if m.state == InstanceState::Pending {
                self.transition(m, |i| i.state.on_user(i.stop_target, UserAction::Terminate).map_err(AppError::from))
                    .await?;
            } else if m.notice.is_none() && m.state != InstanceState::Stopping {
                let reason = if current(&m) {
                    format!("cluster {} resized to {} nodes: rank {} leaves", c.name, c.target_nodes, rank_of(&m))
                } else {
                    format!("cluster {} moved to {}: rank {} was replaced", c.name, c.model, rank_of(&m))
                };
                self.notify_preemption(&m, self.notice_ms(), reason).await?;
            }
        }
        if launched {
            self.wake_scheduler();
        }
        Ok(())
    }

    /// Sets (or with `None` clears) a cluster's size schedule, and applies it at once.
    pub async fn set_cluster_schedule(
        &self,
        by: &Principal,
        name: &str,
        schedule: Option<String>,
        utc_offset: Option<String>,
    ) -> Result<ClusterView, AppError> {
        let mut c = self.find_cluster(by, name).await?;
        Self::refuse_if_replica_set(&c, "follow a size schedule")?;
        let offset = gpucloud_model::schedule::parse_utc_offset(utc_offset.as_deref().unwrap_or("UTC"))
            .map_err(|e| AppError::invalid("utc_offset", e))?;
        if schedule.is_some() && c.autoscale.is_some() {
            return Err(AppError::invalid("schedule", "this cluster autoscales on utilization; clear that first"));
        }
        if let Some(text) = &schedule {
            let s = gpucloud_model::schedule::SizeSchedule::parse(text, offset)
                .map_err(|e| AppError::invalid("schedule", e))?;
            if let Some(n) = s.sizes().find(|n| *n < c.min_nodes || *n > c.max_nodes) {
                return Err(AppError::invalid(
                    "schedule",
                    format!("{n} nodes is outside {}'s {}..{}", c.name, c.min_nodes, c.max_nodes),
                ));
            }
        }
        for _ in 0..8 {
            let mut next = c.clone();
            next.schedule = schedule.clone();
            next.utc_offset_min = offset;
            next.updated_at = self.now();
            match self.store.replan_cluster(&next, c.generation).await? {
                Some(_) => break,
                None => c = self.find_cluster(by, name).await?,
            }
        }
        if self.config.market.schedules_follow_clock {
            self.apply_schedules(self.now()).await?;
        }
        let c = self.find_cluster(by, name).await?;
        self.cluster_view(c).await
    }

    /// Moves every scheduled cluster to the size and model its schedule gives for `now` (the
    /// market task passes the clock; tests pass any time).
    pub async fn apply_schedules(&self, now: gpucloud_model::Timestamp) -> Result<usize, AppError> {
        let mut changed = 0;
        for c in self.store.list_clusters(None).await? {
            let Some(text) = &c.schedule else { continue };
            let Ok(s) = gpucloud_model::schedule::SizeSchedule::parse(text, c.utc_offset_min) else { continue };
            let (n, model) = s.at(now);
            let n = n.clamp(c.min_nodes, c.max_nodes);
            if (n, model) == (c.target_nodes, c.model) {
                continue;
            }
            let mut next = c.clone();
            next.target_nodes = n;
            next.model = model;
            next.epoch += 1;
            next.updated_at = self.now();
            if let Some(updated) = self.store.replan_cluster(&next, c.generation).await? {
                tracing::info!(cluster = %c.id, nodes = n, gpu = %model, "cluster schedule applied");
                self.converge_cluster(&updated).await?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Sets (or with `None` clears) utilization autoscaling. A cluster follows a schedule or
    /// utilization, not both.
    pub async fn set_cluster_autoscale(
        &self,
        by: &Principal,
        name: &str,
        policy: Option<gpucloud_store::Autoscale>,
    ) -> Result<ClusterView, AppError> {
        let mut c = self.find_cluster(by, name).await?;
        Self::refuse_if_replica_set(&c, "autoscale")?;
        if let Some(a) = policy {
            if !(a.down_pct < a.up_pct && a.up_pct <= 100) {
                return Err(AppError::invalid("up_percent", "need 0 <= down_percent < up_percent <= 100"));
            }
            if a.for_s == 0 || a.for_s > 86_400 {
                return Err(AppError::invalid("for_seconds", "for_seconds is 1 to 86400"));
            }
            if c.schedule.is_some() {
                return Err(AppError::invalid("up_percent", "this cluster follows a schedule; clear it first"));
            }
        }
        for _ in 0..8 {
            let mut next = c.clone();
            next.autoscale = policy;
            next.updated_at = self.now();
            match self.store.replan_cluster(&next, c.generation).await? {
                Some(_) => break,
                None => c = self.find_cluster(by, name).await?,
            }
        }
        self.autoscale_since.lock().unwrap_or_else(|e| e.into_inner()).remove(&c.id);
        let c = self.find_cluster(by, name).await?;
        self.cluster_view(c).await
    }

    /// Mean GPU utilization of each running member, from the agents' latest readings.
    pub async fn member_utilization(
        &self,
        members: &[Instance],
    ) -> Result<std::collections::HashMap<InstanceId, f64>, AppError> {
        let readings = self.fleet_readings().await?;
        let mut out = std::collections::HashMap::new();
        for m in members.iter().filter(|m| m.state == InstanceState::Running) {
            let Some((_, gpus)) = m.node_id.as_ref().and_then(|n| readings.get(n)) else { continue };
            let mine: Vec<f64> = gpus.iter().filter(|g| m.gpus.contains(&g.index)).map(|g| g.utilization_pct).collect();
            if !mine.is_empty() {
                out.insert(m.id.clone(), mine.iter().sum::<f64>() / mine.len() as f64);
            }
        }
        Ok(out)
    }

    /// One autoscaling step at `now` with the members' utilization given: a cluster whose
    /// running members averaged above its bound for its whole period grows by one, below it
    /// shrinks by one (never while a resize is under way, always within min..max).
    pub async fn autoscale(
        &self,
        now: gpucloud_model::Timestamp,
        utilization: &std::collections::HashMap<InstanceId, f64>,
    ) -> Result<usize, AppError> {
        let mut resized = 0;
        for c in self.store.list_clusters(None).await? {
            let Some(policy) = c.autoscale else { continue };
            let view = self.cluster_view(c.clone()).await?;
            let utils: Vec<f64> = view.members.iter().filter_map(|m| utilization.get(&m.id).copied()).collect();
            if view.state != gpucloud_api::ClusterState::Ready || utils.is_empty() {
                continue;
            }
            let mean = utils.iter().sum::<f64>() / utils.len() as f64;
            let step = {
                let mut since = self.autoscale_since.lock().unwrap_or_else(|e| e.into_inner());
                let entry = since.entry(c.id.clone()).or_default();
                let held = |t: Option<gpucloud_model::Timestamp>| {
                    t.is_some_and(|t| now.millis_since(t) >= i64::from(policy.for_s) * 1000)
                };
                if mean > f64::from(policy.up_pct) {
                    entry.1 = None;
                    let start = *entry.0.get_or_insert(now);
                    if held(Some(start)) && c.target_nodes < c.max_nodes {
                        entry.0 = Some(now);
                        Some(c.target_nodes + 1)
                    } else {
                        None
                    }
                } else if mean < f64::from(policy.down_pct) {
                    entry.0 = None;
                    let start = *entry.1.get_or_insert(now);
                    if held(Some(start)) && c.target_nodes > c.min_nodes {
                        entry.1 = Some(now);
                        Some(c.target_nodes - 1)
                    } else {
                        None
                    }
                } else {
                    *entry = (None, None);
                    None
                }
            };
            if let Some(n) = step
                && let Some(updated) =
                    self.store.update_cluster(&c.id, c.generation, n, c.epoch + 1, true, self.now()).await?
            {
                tracing::info!(cluster = %c.id, from = c.target_nodes, to = n, utilization = mean, "cluster autoscaled");
                self.converge_cluster(&updated).await?;
                resized += 1;
            }
        }
        Ok(resized)
    }

    /// The market task's autoscaling pass: utilization from the agents' latest readings.
    pub async fn autoscale_from_telemetry(&self) -> Result<usize, AppError> {
        let mut members = Vec::new();
        for c in self.store.list_clusters(None).await?.into_iter().filter(|c| c.autoscale.is_some()) {
            members.extend(self.store.cluster_members(&c.id).await?);
        }
        if members.is_empty() {
            return Ok(0);
        }
        let utilization = self.member_utilization(&members).await?;
        self.autoscale(self.now(), &utilization).await
    }

    /// One pass over the active clusters (crash repair: what a resize left undone).
    pub async fn reconcile_clusters(&self) -> Result<(), AppError> {
        for c in self.store.list_clusters(None).await? {
            if let Err(e) = self.converge_cluster(&c).await {
                tracing::error!(cluster = %c.id, error = %e, "cluster reconcile failed");
            }
        }
        Ok(())
    }

    pub(crate) async fn cluster_view(&self, cluster: Cluster) -> Result<ClusterView, AppError> {
        let mut members: Vec<Instance> =
            self.store.cluster_members(&cluster.id).await?.into_iter().filter(live).collect();
        members.sort_by_key(|m| m.sale.cluster.as_ref().map_or(0, |(_, r)| *r));
        let in_target = |m: &&Instance| m.sale.cluster.as_ref().is_some_and(|(_, r)| *r < cluster.target_nodes);
        let running = members.iter().filter(in_target).filter(|m| m.state == InstanceState::Running).count() as u32;
        let waiting: Vec<&Instance> =
            members.iter().filter(in_target).filter(|m| m.state == InstanceState::Pending).collect();
        let (state, reason) = if running == cluster.target_nodes && members.len() as u32 == cluster.target_nodes {
            (gpucloud_api::ClusterState::Ready, None)
        } else if !waiting.is_empty() {
            (gpucloud_api::ClusterState::Resizing, waiting.iter().find_map(|m| m.pending_reason.clone()))
        } else if (members.iter().filter(in_target).count() as u32) < cluster.target_nodes {
            let why = if cluster.replicas_in.is_empty() {
                "a member ended; resize to launch it again"
            } else {
                "a member ended; it is launched again (after 1 s, doubling with each end in 10 min)"
            };
            (gpucloud_api::ClusterState::Degraded, Some(why.to_string()))
        } else {
            (gpucloud_api::ClusterState::Resizing, None)
        };
        Ok(ClusterView { cluster, members, state, reason })
    }

    /// The environment and membership a member's workload gets (computed when its agent asks).
    pub(crate) async fn member_context(
        &self,
        inst: &Instance,
    ) -> Result<Option<(Vec<(String, String)>, gpucloud_api::AgentCluster)>, AppError> {
        let Some((cid, rank)) = &inst.sale.cluster else { return Ok(None) };
        let Some(c) = self.store.find_cluster(None, cid.as_str()).await? else { return Ok(None) };
        let members: Vec<Instance> = self.store.cluster_members(cid).await?.into_iter().filter(live).collect();
        let nodes = self.store.list_nodes().await?;
        let address_of = |node: &Option<gpucloud_model::NodeId>| {
            node.as_ref().and_then(|n| nodes.iter().find(|x| x.id == *n)).map(|n| n.reached_at().to_string())
        };
        let rank_of = |i: &Instance| i.sale.cluster.as_ref().map_or(0, |(_, r)| *r);
        let master = members
            .iter()
            .filter(|m| rank_of(m) == 0)
            .max_by_key(|m| (m.model == c.model, m.state == InstanceState::Running))
            .and_then(|m| address_of(&m.node_id))
            .unwrap_or_default();
        let port = master_port(&c.id);
        let size = c.target_nodes;
        let env = vec![
            ("GPUCLOUD_CLUSTER_ID".to_string(), c.id.to_string()),
            ("GPUCLOUD_CLUSTER_NAME".into(), c.name.clone()),
            ("GPUCLOUD_CLUSTER_RANK".into(), rank.to_string()),
            ("GPUCLOUD_CLUSTER_SIZE".into(), size.to_string()),
            ("NODE_RANK".into(), rank.to_string()),
            ("MASTER_ADDR".into(), master.clone()),
            ("MASTER_PORT".into(), port.to_string()),
            ("WORLD_SIZE".into(), (size * c.gpus_per_node).to_string()),
            // torchrun reads PET_* as its flags: `torchrun train.py` joins the elastic job.
            ("PET_NNODES".into(), format!("{}:{}", c.min_nodes, c.max_nodes)),
            ("PET_NPROC_PER_NODE".into(), c.gpus_per_node.to_string()),
            ("PET_RDZV_BACKEND".into(), "c10d".into()),
            ("PET_RDZV_ENDPOINT".into(), format!("{master}:{port}")),
            ("PET_RDZV_ID".into(), c.id.to_string()),
        ];
        let view = gpucloud_api::AgentCluster {
            id: c.id.to_string(),
            name: c.name.clone(),
            epoch: c.epoch,
            size,
            rank: *rank,
            master_addr: master,
            master_port: port,
            members: members
                .iter()
                .filter(|m| rank_of(m) < size)
                .map(|m| gpucloud_api::AgentClusterMember {
                    rank: rank_of(m),
                    instance: m.id.to_string(),
                    state: m.state.into(),
                    address: address_of(&m.node_id),
                })
                .collect(),
        };
        Ok(Some((env, view)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpucloud_model::Timestamp;

    #[test]
    fn replica_backoff_doubles_with_recent_ends_and_is_capped() {
        let now = Timestamp(10_000_000);
        let wait = |agos: &[i64]| {
            let ends: Vec<Timestamp> = agos.iter().map(|a| Timestamp(now.0 - a)).collect();
            replica_backoff_ms(&ends, now)
        };
        assert_eq!(wait(&[5_000]), 1_000);
        assert_eq!(wait(&[5_000, 9_000]), 2_000);
        assert_eq!(wait(&[1, 2, 3, 4]), 8_000);
        assert_eq!(wait(&[700_000, 800_000, 5_000]), 1_000, "ends over ten minutes ago are forgiven");
        assert_eq!(wait(&[1; 30]), 300_000, "at most five minutes");
    }
}
