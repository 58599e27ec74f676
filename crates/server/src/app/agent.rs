//! The contract between the control plane and a node agent: the agent reports what it sees and
//! gets back what should run. The in-process fake agent calls it directly; a real agent will reach
//! the same methods over HTTP.

use super::{App, AppError};
use async_trait::async_trait;
use gpucloud_model::{AgentObservation, InstanceId, InstanceState, NodeId};

/// One GPU's readings from an agent: the wire's own type, kept as it came.
pub type GpuReading = gpucloud_api::GpuTelemetry;

/// A desired workload with its typed id: in-process agents (the fake fleet, the simulation)
/// keep their workloads by instance id. The server wrote these ids, so none is dropped.
pub fn typed(desired: &[gpucloud_api::AgentWorkload]) -> Vec<(InstanceId, &gpucloud_api::AgentWorkload)> {
    desired.iter().filter_map(|d| Some((InstanceId::parse(&d.id).ok()?, d))).collect()
}

/// What a beat's workload reports say, checked and typed: the one reading of them, whether an
/// agent sent them over HTTP or the in-process fleet handed them over.
#[derive(Debug, Default)]
pub struct Observed {
    pub instances: Vec<(InstanceId, AgentObservation, Option<String>)>,
    pub checkpoints: Vec<(InstanceId, String)>,
    pub ports: Vec<(InstanceId, u16)>,
    pub preparing: Vec<(InstanceId, String)>,
    pub published: Vec<(InstanceId, Vec<(u16, u16)>)>,
}

pub fn observed(reports: Vec<gpucloud_api::AgentInstanceReport>) -> Result<Observed, AppError> {
    use gpucloud_api::WorkloadState;
    let invalid = |detail: &str| AppError::invalid("instances", detail.to_string());
    let mut instances = Vec::new();
    let mut checkpoints = Vec::new();
    let mut ports = Vec::new();
    let mut preparing = Vec::new();
    let mut published = Vec::new();
    for r in reports {
        let id = InstanceId::parse(&r.id).map_err(|e| invalid(&e.to_string()))?;
        let seen = match (r.state, r.exit_code) {
            (WorkloadState::Running, _) => AgentObservation::Running,
            (WorkloadState::Stopped, code) => AgentObservation::Stopped { exit_code: code },
            (WorkloadState::Failed, code) => AgentObservation::Failed { exit_code: code.unwrap_or(-1) },
            (WorkloadState::Preparing, _) => {
                let progress: String =
                    r.progress.unwrap_or_default().chars().filter(|c| !c.is_control()).take(200).collect();
                preparing.push((id, if progress.is_empty() { "preparing".to_string() } else { progress }));
                continue;
            }
        };
        if r.published.len() > gpucloud_model::workload::MAX_PORTS
            || r.published.iter().any(|p| p.port == 0 || p.host_port == 0)
        {
            return Err(invalid("at most 8 published ports, each 1 to 65535"));
        }
        if r.state == WorkloadState::Running {
            published.push((id.clone(), r.published.iter().map(|p| (p.port, p.host_port)).collect()));
        }
        if let Some(path) = r.checkpoint.filter(|p| !p.is_empty()) {
            if path.len() > 4096 || path.chars().any(char::is_control) {
                return Err(invalid("a checkpoint path is 1 to 4096 printable characters"));
            }
            checkpoints.push((id.clone(), path));
        }
        match r.port {
            Some(0) => return Err(invalid("a workload's port is 1 to 65535")),
            Some(p) if r.state == WorkloadState::Running => ports.push((id.clone(), p)),
            _ => {}
        }
        instances.push((id, seen, r.reason.filter(|r| !r.is_empty()).map(|r| r.chars().take(500).collect())));
    }
    Ok(Observed { instances, checkpoints, ports, preparing, published })
}

#[derive(Debug, Clone)]
pub struct AgentReport {
    pub node: NodeId,
    /// The epoch the agent registered with; `None` for in-process fake agents, which are not
    /// fenced (they live and die with the server).
    pub epoch: Option<i64>,
    /// The beat's number within its agent's registration, if the agent numbers its beats: one
    /// arriving after a higher-numbered one is refused.
    pub seq: Option<i64>,
    /// The workloads the agent knows of and what it saw of each.
    /// What the agent saw, and why it ended a workload itself (if it did).
    pub instances: Vec<(InstanceId, AgentObservation, Option<String>)>,
    pub gpus: Vec<GpuReading>,
    /// The latest checkpoint each workload reported to its metadata endpoint.
    pub checkpoints: Vec<(InstanceId, String)>,
    /// The port each running workload was given (its GPUCLOUD_PORT).
    pub ports: Vec<(InstanceId, u16)>,
    /// Business metrics the workloads pushed.
    pub metrics: Vec<gpucloud_store::MetricPoint>,
    /// Workloads the agent is preparing (pulling their image), and how far it got.
    pub preparing: Vec<(InstanceId, String)>,
    /// Where each running workload's exposed ports are published: (container port, host port).
    pub published: Vec<(InstanceId, Vec<(u16, u16)>)>,
}

/// Run or stop: the wire's own type, so what the server decides is what the agent reads.
pub use gpucloud_api::Desired;

impl App {
    /// Keeps the public images a node's agent says it holds (after a beat it was allowed).
    pub async fn record_node_images(
        &self,
        node: &gpucloud_model::NodeId,
        mut images: Vec<String>,
    ) -> Result<(), AppError> {
        images.sort();
        images.dedup();
        self.store.set_node_images(node, &images).await?;
        Ok(())
    }
}

#[async_trait]
pub trait AgentApi: Send + Sync {
    /// Records the heartbeat, applies the report, and returns the node's desired workloads.
    /// A workload the agent runs that is not in the answer must be stopped.
    async fn heartbeat(&self, report: AgentReport) -> Result<Vec<gpucloud_api::AgentWorkload>, AppError>;
}

#[async_trait]
impl AgentApi for App {
    async fn heartbeat(&self, report: AgentReport) -> Result<Vec<gpucloud_api::AgentWorkload>, AppError> {
        self.heartbeat_of(report, None).await
    }
}

impl App {
    /// A heartbeat, with the node as the caller just read it (`None`: read it here).
    pub async fn heartbeat_of(
        &self,
        report: AgentReport,
        current: Option<gpucloud_store::Node>,
    ) -> Result<Vec<gpucloud_api::AgentWorkload>, AppError> {
        let node = &report.node;
        // One reading of the clock for the whole beat: its records agree with each other.
        let now = self.now();
        // One read of the node serves the fencing check, GPU health and the GPU UUIDs below.
        let current = match current.filter(|c| c.id == *node) {
            Some(c) => c,
            None => self
                .store
                .get_node(node)
                .await?
                .ok_or_else(|| AppError::NotFound { kind: "node", id: node.to_string() })?,
        };
        let recorded = match report.epoch {
            // Only an in-process fake agent beats without an epoch, and only for a fake node: an
            // agent's node has one voice, or its workloads would run twice.
            None if current.driver == gpucloud_store::NodeDriver::Agent => {
                return Err(AppError::Fenced(format!(
                    "fenced: node {node} is driven by its registered agent, not by an in-process one"
                )));
            }
            None => self.store.record_heartbeat(node, now).await?,
            // The current epoch stays out of the answer: it would let a caller forge a current beat.
            Some(epoch) if current.epoch != epoch => {
                return Err(AppError::Fenced(format!(
                    "fenced: node {node} was registered again; this agent must stop and re-register"
                )));
            }
            Some(epoch) => self.store.record_agent_heartbeat(node, epoch, report.seq, now).await?,
        };
        if !recorded && report.seq.is_some() && report.epoch == Some(current.epoch) {
            // Held up on the way: what it says (a workload not yet started when it was sent)
            // is older than what the node has said since.
            return Err(AppError::Conflict(format!(
                "stale beat: node {node} already sent beat {} or a later one; this one arrived late and was not applied",
                report.seq.unwrap_or_default()
            )));
        }
        if !recorded {
            return Err(AppError::NotFound { kind: "node", id: node.to_string() });
        }
        // Whether this beat wrote to an instance on the node: its answer then reads them again.
        let mut wrote = false;
        // Who holds each slice is read only for what needs it: a failed GPU's notices, and a
        // GPU sample (one every sample interval, not every beat).
        let fatal = report.gpus.iter().any(|g| g.is_fatal());
        let sample = !report.gpus.is_empty() && self.sample_due(node, now);
        let full;
        let with_slices = if fatal || sample {
            full = self
                .store
                .get_node(node)
                .await?
                .ok_or_else(|| AppError::NotFound { kind: "node", id: node.to_string() })?;
            &full
        } else {
            &current
        };
        for g in report.gpus.iter().filter(|g| g.is_fatal()) {
            self.gpu_failed(with_slices, g).await?;
            wrote = true;
        }
        if !report.gpus.is_empty() {
            self.telemetry.lock().unwrap_or_else(|e| e.into_inner()).insert(node.clone(), (now, report.gpus.clone()));
        }
        if sample {
            self.record_gpu_samples(with_slices, &report.gpus, now).await?;
        }
        // One read of the instances on this node serves every report below (none of the writes
        // before a state change moves an instance's generation, and each state change is
        // checked against it). A report about an instance not here (it has since left this
        // node) is stale: ignored.
        let on_node = self.store.instances_on_node(node).await?;
        let here = |id: &InstanceId| on_node.iter().find(|i| i.id == *id);
        // Checkpoints before states: a workload's last checkpoint arrives with its exit, and must
        // be on record before a managed job relaunches from it.
        for (id, path) in &report.checkpoints {
            let Some(inst) = here(id) else { continue };
            if inst.checkpoint.as_ref().is_none_or(|c| c.path != *path) {
                self.store.record_checkpoint(id, path, now).await?;
                wrote = true;
            }
        }
        if !report.metrics.is_empty() {
            // Only points of instances on this node: an agent speaks for its own workloads.
            let points: Vec<_> = report.metrics.iter().filter(|p| here(&p.instance).is_some()).cloned().collect();
            self.store.insert_metrics(&points).await?;
        }
        for (id, seen, reason) in &report.instances {
            let Some(inst) = here(id).cloned() else { continue };
            if let Some(reason) = reason
                && inst.status_reason.as_deref() != Some(reason)
            {
                tracing::warn!(instance = %id, %reason, "agent ended the workload");
                self.store.set_status_reason(id, Some(reason)).await?;
                wrote = true;
            }
            // Before the state, like checkpoints: an instance is never shown running at an old
            // run's endpoint.
            if let Some((_, published)) = report.published.iter().find(|(p, _)| p == id)
                && inst.published != *published
            {
                self.store.set_instance_published(id, published).await?;
                wrote = true;
            }
            if inst.progress.is_some() && *seen == AgentObservation::Running {
                self.store.set_instance_progress(id, None).await?;
                wrote = true;
            }
            if let Some((_, port)) = report.ports.iter().find(|(p, _)| p == id) {
                let host = current.reached_at();
                let endpoint = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
                if inst.endpoint.as_deref() != Some(endpoint.as_str()) {
                    self.store.set_instance_endpoint(id, &endpoint).await?;
                    wrote = true;
                }
            }
            let generation = inst.generation;
            wrote |= self.observe(inst, *seen).await?.generation != generation;
        }
        // A workload held running here that the agent no longer mentions at all vanished with
        // its host (a reboot inside the grace): billing ends at the last beat that reported it,
        // and it counts again once the agent, told to run it, reports it started.
        if let Some(prev) = current.last_heartbeat {
            let mentioned: std::collections::HashSet<&InstanceId> =
                report.instances.iter().map(|(id, _, _)| id).chain(report.preparing.iter().map(|(id, _)| id)).collect();
            // Those it does not mention kept their state since the read above.
            for inst in &on_node {
                if mentioned.contains(&inst.id) {
                    continue;
                }
                // One being stopped is stopped: whatever the agent had of it is gone, and its
                // billing ends at the last beat that could have reported it, as above. Waiting
                // for a "stopped" report that will never come billed a dead workload until the
                // agent next heard from the server (`sim chaos` seed 92 of 10 minutes: a host
                // that went down while its agent got no answers).
                if inst.state == InstanceState::Stopping {
                    let to = inst.state.on_agent(inst.stop_target, AgentObservation::Stopped { exit_code: None });
                    let change = gpucloud_store::InstanceChange {
                        state: to.state,
                        stop_target: to.stop_target,
                        exit_code: None,
                        at: prev,
                    };
                    wrote = true;
                    if self.store.update_instance(&inst.id, inst.generation, &change).await?.is_some() {
                        tracing::info!(instance = %inst.id, %node, "workload gone from its node while stopping");
                        self.wake_scheduler();
                    }
                    continue;
                }
                if inst.state != InstanceState::Running {
                    continue;
                }
                let change = gpucloud_store::InstanceChange {
                    state: InstanceState::Provisioning,
                    stop_target: None,
                    exit_code: None,
                    at: prev,
                };
                wrote = true;
                if self.store.update_instance(&inst.id, inst.generation, &change).await?.is_some() {
                    tracing::warn!(instance = %inst.id, %node, "workload vanished from its node: starting it again");
                    let reason =
                        format!("its workload vanished from node {node} (did the host restart?): started again");
                    self.store.set_status_reason(&inst.id, Some(&reason)).await?;
                }
            }
        }
        for (id, progress) in &report.preparing {
            let Some(inst) = here(id) else { continue };
            if inst.state == InstanceState::Provisioning && inst.progress.as_deref() != Some(progress.as_str()) {
                self.store.set_instance_progress(id, Some(progress)).await?;
                wrote = true;
            }
        }
        let uuids: std::collections::HashMap<u32, String> =
            current.gpus.into_iter().map(|g| (g.index, g.uuid)).collect();
        // Instances placed here since the read above wait for the next beat, as they would have
        // had they been placed a moment later.
        let on_node = if wrote { self.store.instances_on_node(node).await? } else { on_node };
        let mut held: Vec<gpucloud_store::Instance> = on_node.into_iter().filter(|i| i.state.holds_gpus()).collect();
        // This answer carries the notices to the node: their deadlines start now.
        let undelivered: Vec<InstanceId> = held
            .iter()
            .filter(|i| i.state != InstanceState::Stopping && i.notice.as_ref().is_some_and(|n| n.deadline.is_none()))
            .map(|i| i.id.clone())
            .collect();
        if !undelivered.is_empty() {
            self.store.deliver_notices(&undelivered, now).await?;
            for i in held.iter_mut().filter(|i| undelivered.contains(&i.id)) {
                if let Some(n) = &mut i.notice {
                    n.deadline = Some(now.plus_millis(n.notice_ms));
                }
            }
        }
        let mut desired = Vec::with_capacity(held.len());
        let mut secrets = std::collections::HashMap::new();
        let mut auths = std::collections::HashMap::new();
        let mut ssh_keys = std::collections::HashMap::new();
        for i in held {
            let stop = i.state == InstanceState::Stopping;
            // Secrets go to the node only for a workload it is to run.
            let mut env = if stop {
                i.sale
                    .env
                    .iter()
                    .filter(|(_, v)| !v.starts_with(gpucloud_model::workload::SECRET_REF))
                    .cloned()
                    .collect()
            } else {
                self.open_env(&i, i.sale.env.clone(), &mut secrets).await?
            };
            let registry_auth = match (&i.sale.image, stop) {
                (Some(image), false) => self.registry_auth_for(&i, image, &mut auths).await?,
                _ => None,
            };
            let keys = if stop { Vec::new() } else { self.ssh_keys_for(&i.tenant_id, &mut ssh_keys).await? };
            let volume = match &i.sale.volume {
                Some((id, mount)) => self.store.get_volume(id).await?.map(|v| (v.id, v.size_gib, mount.path.clone())),
                None => None,
            };
            let mut cluster = None;
            if i.sale.cluster.is_some()
                && let Some((extra, view)) = self.member_context(&i).await?
            {
                env.extend(extra);
                cluster = Some(view);
            }
            // The wire's own type: what the server decides is what the agent reads.
            desired.push(gpucloud_api::AgentWorkload {
                desired: if stop { Desired::Stop } else { Desired::Run },
                gpu_uuids: i.gpus.iter().filter_map(|g| uuids.get(g).cloned()).collect(),
                id: i.id.to_string(),
                gpus: i.gpus,
                command: i.command,
                slice: i.share.map(|s| gpucloud_api::AgentSlice {
                    milli: s.milli,
                    memory_mib: s.memory_mib,
                    mig: s.mig,
                }),
                env: env.into_iter().collect(),
                notice: i.notice.and_then(|n| {
                    let deadline = n.deadline?;
                    Some(gpucloud_api::AgentNotice {
                        deadline: gpucloud_api::rfc3339(deadline),
                        deadline_ms: deadline.0,
                        reason: n.reason,
                    })
                }),
                cluster,
                image: i.sale.image,
                ports: i.sale.ports.iter().map(|p| p.to_string()).collect(),
                registry_auth: registry_auth
                    .map(|(username, password)| gpucloud_api::AgentRegistryAuth { username, password }),
                volume: volume.map(|(id, size_gib, path)| gpucloud_api::AgentVolume {
                    id: id.to_string(),
                    size_gib,
                    path,
                }),
                ssh_keys: keys,
            });
        }
        Ok(desired)
    }
}

impl App {
    /// Records the volumes `node` says it removed, and returns the deleted ones whose data it
    /// still holds.
    pub async fn volume_purges(
        &self,
        node: &gpucloud_model::NodeId,
        purged: &[gpucloud_model::VolumeId],
    ) -> Result<Vec<gpucloud_model::VolumeId>, AppError> {
        if !purged.is_empty() {
            self.store.mark_volumes_purged(node, purged, self.now()).await?;
        }
        Ok(self.store.volumes_to_purge(node).await?)
    }
}

/// Up to 32 labels; a key is 1 to 63 letters, digits and `._/-` starting with a letter or digit;
/// a value is up to 128 printable characters.
pub fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), AppError> {
    if labels.len() > 32 {
        return Err(AppError::invalid("labels", "a node has at most 32 labels"));
    }
    for (k, v) in labels {
        let key_ok = (1..=63).contains(&k.len())
            && k.starts_with(|c: char| c.is_ascii_alphanumeric())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
        if !key_ok {
            return Err(AppError::invalid(
                "labels",
                format!("label key '{k}' is 1 to 63 letters, digits and ._/- starting with a letter or digit"),
            ));
        }
        if v.chars().count() > 128 || v.chars().any(char::is_control) {
            return Err(AppError::invalid("labels", format!("label {k}'s value is up to 128 printable characters")));
        }
    }
    Ok(())
}

impl App {
    /// The node `node` (its GPUs without their slices) if `by` may speak for it: an operator's
    /// own key for any node, an agent key for the node it is bound to only. Another node, or one
    /// that does not exist, is a 403 for an agent key, so that a stolen key learns nothing about
    /// the fleet.
    pub async fn agent_node(&self, by: &super::Principal, node: &NodeId) -> Result<gpucloud_store::Node, AppError> {
        by.require_operator()?;
        // Without slices: every beat comes through here, and a beat reads them only when it
        // attributes a GPU sample or failure (`heartbeat_of`).
        let found = self.store.get_node_bare(node).await?;
        if by.scope == gpucloud_store::KeyScope::Agent {
            let ours = found.as_ref().is_some_and(|n| by.node.as_deref() == Some(n.name.as_str()));
            if !ours {
                return Err(AppError::Forbidden(match &by.node {
                    Some(name) => format!("agent key {} speaks for node '{name}' only", by.key_prefix),
                    None => format!("agent key {} has registered no node yet", by.key_prefix),
                }));
            }
        }
        found.ok_or_else(|| AppError::NotFound { kind: "node", id: node.to_string() })
    }

    /// Who may (re-)register the node called `name`: an operator's own key, any node; an agent
    /// key bound to `name`; an unbound agent key a node that is not registered yet, which binds
    /// the key to it. Re-registering fences the node's running agent, so taking over a
    /// registered node needs that node's own key.
    async fn may_register(&self, by: &super::Principal, name: &str) -> Result<(), AppError> {
        if by.scope != gpucloud_store::KeyScope::Agent {
            return Ok(());
        }
        let refused = |why: String| Err(AppError::Forbidden(why));
        match &by.node {
            Some(bound) if bound == name => Ok(()),
            Some(bound) => refused(format!("agent key {} speaks for node '{bound}' only, not '{name}'", by.key_prefix)),
            None if self.store.node_named(name).await?.is_some() => refused(format!(
                "node '{name}' is registered: only its own agent key (key create --scope agent --node {name}) \
                 or an operator's key may register it again"
            )),
            None if self.store.bind_agent_key(&by.key_id, name).await? => {
                tracing::info!(key = %by.key_prefix, node = name, "agent key bound to its first node");
                Ok(())
            }
            None => refused(format!("node '{name}' belongs to another agent key")),
        }
    }

    /// Whether an agent running workloads this way may join: with `require_containers`, only
    /// agents that confine each workload in a container of its own.
    pub fn check_agent_runtime(&self, runtime: Option<gpucloud_api::AgentRuntime>) -> Result<(), AppError> {
        if self.config.require_containers && runtime != Some(gpucloud_api::AgentRuntime::Docker) {
            return Err(AppError::invalid(
                "runtime",
                "this cloud runs tenants' workloads in containers only: start the agent with --runtime docker \
                 (the process runtime does not isolate tenants from one another, and the fake one runs nothing)",
            ));
        }
        Ok(())
    }

    /// Registers (or re-registers) the node an agent runs on: see [`App::may_register`] for who may.
    pub async fn register_agent(
        &self,
        by: &super::Principal,
        name: &str,
        region: gpucloud_model::Region,
        gpus: Vec<gpucloud_store::NewGpu>,
        address: Option<String>,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<gpucloud_store::Node, AppError> {
        by.require_operator()?;
        check_labels(&labels)?;
        super::nodes::check_node_name(name)?;
        self.may_register(by, name).await?;
        if gpus.is_empty() || gpus.len() > 16 {
            return Err(AppError::invalid("gpus", "a node has 1 to 16 GPUs"));
        }
        let mut seen = std::collections::HashSet::new();
        for g in &gpus {
            if g.uuid.is_empty() || g.uuid.len() > 128 || !seen.insert(g.index) {
                return Err(AppError::invalid("gpus", "each GPU needs a distinct index and a UUID"));
            }
        }
        let node = gpucloud_store::NewNode {
            id: NodeId::from_random(super::random_bits()),
            name: name.to_string(),
            region,
            gpus,
            created_at: self.now(),
        };
        if let Some(a) = &address
            && (a.is_empty() || a.len() > 253 || a.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(AppError::invalid("address", "address is a host name or IP address"));
        }
        let mut node = self.store.register_agent_node(&node).await.map_err(AppError::store_conflict)?;
        if node.address != address {
            self.store.set_node_address(&node.id, address.as_deref()).await?;
            node.address = address;
        }
        if node.labels != labels {
            self.store.set_node_labels(&node.id, &labels).await?;
            node.labels = labels;
        }
        let mut models: Vec<gpucloud_model::GpuModel> = node.gpus.iter().map(|g| g.model).collect();
        models.dedup();
        self.price_new_capacity(&node.region, &models).await?;
        tracing::info!(node = %node.id, name, epoch = node.epoch, "agent registered");
        self.nodes_changed.notify_one();
        Ok(node)
    }

    /// Output shipped by the agent running `instance` on `node`.
    pub async fn agent_logs(
        &self,
        by: &super::Principal,
        node: &NodeId,
        epoch: i64,
        instance: &InstanceId,
        chunks: Vec<(i64, String)>,
    ) -> Result<(), AppError> {
        let current = self.agent_node(by, node).await?;
        if current.epoch != epoch {
            return Err(AppError::Fenced(format!("fenced: node {node} was registered again")));
        }
        // Only output of a workload that runs (or last ran) on this node: another node's
        // instance is refused like a missing one.
        if self.store.instance_ran_on(instance).await?.as_ref() != Some(node) {
            return Err(AppError::Forbidden(format!("instance {instance} does not run on node {node}")));
        }
        let now = self.now();
        let chunks: Vec<gpucloud_store::LogChunk> =
            chunks.into_iter().map(|(seq, data)| gpucloud_store::LogChunk { seq, at: now, data }).collect();
        Ok(self.store.append_logs(instance, &chunks).await?)
    }

    pub async fn instance_metrics(
        &self,
        by: &super::Principal,
        id: &str,
        name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<gpucloud_store::MetricPoint>, AppError> {
        let inst = self.get_instance(by, id).await?;
        Ok(self.store.instance_metrics(&inst.id, name, limit.clamp(1, 10_000)).await?)
    }

    pub async fn instance_logs(
        &self,
        by: &super::Principal,
        id: &str,
        after: i64,
    ) -> Result<Vec<gpucloud_store::LogChunk>, AppError> {
        let inst = self.get_instance(by, id).await?;
        Ok(self.store.read_logs(&inst.id, after, 1000).await?)
    }
}

impl App {
    /// The latest GPU readings per node that this replica's agents sent.
    pub fn telemetry_snapshot(
        &self,
    ) -> std::collections::HashMap<NodeId, (gpucloud_model::Timestamp, Vec<GpuReading>)> {
        self.telemetry.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The latest readings of the whole fleet. Alone, a replica hears every agent; among several,
    /// an agent talks to one of them, so the others' nodes come from the stored samples (at most
    /// a sample interval old).
    /// A GPU reported a fatal fault: it leaves service (no new work), the operator is alerted,
    /// and each instance on it is told with a notice (its metadata endpoint and an alert to its
    /// tenant) and stopped at the deadline; a managed job's attempt moves on to healthy GPUs.
    pub(crate) async fn gpu_failed(&self, node: &gpucloud_store::Node, g: &GpuReading) -> Result<bool, AppError> {
        let Some(gpu) = node.gpus.iter().find(|x| x.index == g.index) else { return Ok(false) };
        if !gpu.healthy {
            return Ok(false);
        }
        tracing::error!(node = %node.id, gpu = g.index, xid = ?g.xid, ecc = g.ecc_uncorrectable, "GPU failed: no new work on it");
        self.store.set_gpu_health(&node.id, g.index, false).await?;
        self.gpu_failed_alert(&node.id, g).await?;
        let cause = match g.xid {
            Some(x) => format!("XID {x}"),
            None => format!("{} uncorrectable ECC errors", g.ecc_uncorrectable),
        };
        let on_it = gpu.instance.iter().chain(gpu.slices.iter().map(|s| &s.instance));
        for id in on_it {
            let Some(inst) = self.store.get_instance(None, id).await? else { continue };
            let reason = format!(
                "one of its GPUs failed ({cause}): it is stopped at the deadline; start it again to run on healthy GPUs"
            );
            self.notify_preemption(&inst, self.notice_ms(), reason).await?;
        }
        self.wake_scheduler();
        Ok(true)
    }

    pub async fn fleet_readings(
        &self,
    ) -> Result<std::collections::HashMap<NodeId, (gpucloud_model::Timestamp, Vec<GpuReading>)>, AppError> {
        let mut readings = self.telemetry_snapshot();
        if self.config.replica.is_none() {
            return Ok(readings);
        }
        self.flush_gpu_samples().await?;
        let window = 3 * self.config.monitor.sample_interval.as_millis() as i64;
        for s in self.store.latest_gpu_samples(self.now().plus_millis(-window)).await? {
            let (at, gpus) = readings.entry(s.node_id.clone()).or_insert((s.at, Vec::new()));
            if gpus.iter().any(|g| g.index == s.gpu_index) && *at >= s.at {
                continue;
            }
            gpus.retain(|g| g.index != s.gpu_index);
            *at = (*at).max(s.at);
            gpus.push(GpuReading {
                index: s.gpu_index,
                temperature_c: s.temperature_c,
                power_w: s.power_w,
                energy_mj: s.energy_mj.max(0) as u64,
                memory_used_mib: s.memory_used_mib.max(0) as u64,
                utilization_pct: s.utilization_pct,
                xid: s.xid,
                ecc_uncorrectable: s.ecc_uncorrectable.max(0) as u64,
            });
            gpus.sort_by_key(|g| g.index);
        }
        Ok(readings)
    }
}
