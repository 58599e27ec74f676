use super::{App, AppError, Principal, random_bits};
use gpucloud_model::{
    AgentObservation, Change, GpuModel, GpuShare, InstanceId, MAX_GPUS_PER_INSTANCE, Region, UserAction,
};
use gpucloud_store::{Instance, InstanceChange, NewInstance};

/// What a tenant asks for when creating an instance (already parsed from the wire).
#[derive(Debug, Clone)]
pub struct CreateInstance {
    pub model: GpuModel,
    pub count: u32,
    pub region: Option<Region>,
    pub command: String,
    pub name: Option<String>,
    pub gpu_share: Option<u32>,
    pub gpu_memory_mib: Option<u64>,
    pub mig: Option<String>,
    pub tier: gpucloud_model::Tier,
    pub max_price: Option<gpucloud_model::Money>,
    pub image: Option<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub ports: Vec<String>,
    /// A template to start from: it fills what the request leaves out.
    pub template: Option<String>,
    /// A volume to mount, `NAME:/path`.
    pub volume: Option<String>,
    /// The project to create in (the key's, or `default`, when `None`).
    pub project: Option<String>,
    /// What to do when the project is at its limit.
    pub on_quota: gpucloud_model::OnQuota,
    pub priority: gpucloud_model::Priority,
}

impl CreateInstance {
    /// `count` whole GPUs, unnamed: what benchmarks and tests mostly ask for.
    pub fn whole(model: GpuModel, count: u32, region: Option<Region>, command: &str) -> CreateInstance {
        CreateInstance {
            model,
            count,
            region,
            command: command.to_string(),
            name: None,
            gpu_share: None,
            gpu_memory_mib: None,
            mig: None,
            tier: gpucloud_model::Tier::OnDemand,
            max_price: None,
            image: None,
            env: Default::default(),
            secrets: Vec::new(),
            ports: Vec::new(),
            template: None,
            volume: None,
            project: None,
            on_quota: gpucloud_model::OnQuota::Fail,
            priority: gpucloud_model::Priority::Default,
        }
    }
}

const MAX_COMMAND_BYTES: usize = 16 * 1024;

/// What part of one GPU a request asks for, if any, with the field to blame when it is wrong.
pub fn resolve_share(
    model: GpuModel,
    count: u32,
    percent: Option<u32>,
    memory_mib: Option<u64>,
    mig: Option<&str>,
) -> Result<Option<GpuShare>, AppError> {
    let share =
        GpuShare::resolve(model, percent, memory_mib, mig).map_err(|e| AppError::invalid(e.field, e.message))?;
    if share.is_some() && count != 1 {
        return Err(AppError::invalid("count", format!("a slice is part of one GPU: count must be 1, got {count}")));
    }
    Ok(share)
}

/// What can be bought: on-demand, or spot with an optional positive bid.
pub(crate) fn check_sale(tier: gpucloud_model::Tier, max_price: Option<gpucloud_model::Money>) -> Result<(), AppError> {
    use gpucloud_model::Tier;
    match (tier, max_price) {
        (Tier::Warm, _) => Err(AppError::invalid("tier", "warm instances come from a warm pool: claim one from it")),
        (Tier::OnDemand | Tier::Reserved, Some(_)) => {
            Err(AppError::invalid("max_price_per_gpu_hour", "a max price is a spot bid: it needs tier spot"))
        }
        (_, Some(p)) if p <= gpucloud_model::Money::ZERO => {
            Err(AppError::invalid("max_price_per_gpu_hour", format!("a max price must be positive, got {p}")))
        }
        _ => Ok(()),
    }
}

impl App {
    pub async fn create_instance(
        &self,
        by: &Principal,
        req: CreateInstance,
        idempotency_key: Option<&str>,
    ) -> Result<(Instance, bool), AppError> {
        // The gate is never closed, so the permit always comes.
        let _turn = self.create_gate.acquire().await.ok();
        let req = self.with_template(by, req).await?;
        let project = self.admit_to_project(by, req.project.as_deref(), req.priority).await?;
        if req.count == 0 || req.count > MAX_GPUS_PER_INSTANCE {
            return Err(AppError::invalid(
                "count",
                format!("count must be between 1 and {MAX_GPUS_PER_INSTANCE} GPUs, got {}", req.count),
            ));
        }
        let share = resolve_share(req.model, req.count, req.gpu_share, req.gpu_memory_mib, req.mig.as_deref())?;
        if req.command.trim().is_empty() {
            return Err(AppError::invalid("command", "command must not be empty"));
        }
        if req.command.len() > MAX_COMMAND_BYTES {
            return Err(AppError::invalid("command", format!("command is longer than {MAX_COMMAND_BYTES} bytes")));
        }
        // A shell cannot take a NUL: refused here rather than failing at start with exit 127.
        if req.command.contains('\0') {
            return Err(AppError::invalid("command", "command cannot contain a NUL byte"));
        }
        if let Some(name) = &req.name
            && (name.is_empty() || name.len() > 128 || name.chars().any(char::is_control))
        {
            return Err(AppError::invalid("name", "name must be 1 to 128 printable characters"));
        }
        if let Some(region) = &req.region {
            let known = self.store.list_regions().await?;
            if !known.contains(region) {
                let known: Vec<String> = known.iter().map(|r| r.to_string()).collect();
                return Err(AppError::invalid(
                    "region",
                    format!("unknown region '{region}'; regions: {}", known.join(", ")),
                ));
            }
        }
        check_sale(req.tier, req.max_price)?;
        if let Some(image) = &req.image {
            gpucloud_model::workload::check_image(image).map_err(|e| AppError::invalid("image", e))?;
        }
        let ports = gpucloud_model::workload::parse_ports(&req.ports).map_err(|e| AppError::invalid("ports", e))?;
        let env = self.check_env(&by.tenant.id, &req.env, &req.secrets).await?;
        let mut region = req.region;
        if req.tier == gpucloud_model::Tier::Reserved {
            if share.is_some() {
                return Err(AppError::invalid("tier", "reserved capacity is rented in whole GPUs"));
            }
            region = Some(self.reserved_region(&by.tenant.id, req.model, region.as_ref(), req.count).await?);
        }
        // A volume decides the region: its instance runs on its node.
        let volume = match &req.volume {
            Some(m) => {
                let (v, mount) = self.resolve_volume(&by.tenant.id, &project, m, region.as_ref()).await?;
                region = Some(v.region.clone());
                Some((v.id, mount))
            }
            None => None,
        };
        let milli = share.as_ref().map_or(req.count * 1000, |s| s.milli);
        let (minimum, per_hour) = self.start_cost(req.model, milli, req.tier, req.max_price, region.as_ref()).await?;
        self.check_can_afford(&by.tenant.id, minimum, per_hour).await?;
        let id = InstanceId::from_random(random_bits());
        let new = NewInstance {
            name: req.name.unwrap_or_else(|| id.to_string()),
            id,
            tenant_id: by.tenant.id.clone(),
            region,
            model: req.model,
            count: req.count,
            share,
            command: req.command,
            idempotency_key: idempotency_key.map(str::to_string),
            created_at: self.now(),
            sale: gpucloud_store::Sale {
                tier: req.tier,
                max_price: req.max_price,
                env,
                job: None,
                cluster: None,
                pool: None,
                image: req.image,
                ports,
                volume,
                project,
                on_quota: req.on_quota,
                priority: req.priority,
            },
        };
        let (inst, created) = match self.store.insert_instance(&new).await {
            Err(gpucloud_store::StoreError::VolumeInUse(v)) => return Err(self.volume_in_use(&v).await),
            other => other?,
        };
        if created {
            tracing::info!(instance = %inst.id, tenant = %by.tenant.name, gpu = %inst.model, count = inst.count, "instance created");
            self.wake_scheduler();
        }
        Ok((inst, created))
    }

    /// The caller's instances (a project key: its project's only).
    pub async fn list_instances(&self, by: &Principal) -> Result<Vec<Instance>, AppError> {
        let mut all = self.store.list_instances(Some(&by.tenant.id)).await?;
        all.retain(|i| by.sees(&i.sale.project));
        Ok(all)
    }

    /// One page of what the caller sees, oldest first (see `Store::instances_page`).
    pub async fn instances_page(
        &self,
        by: &Principal,
        after: Option<(gpucloud_model::Timestamp, &str)>,
        limit: u32,
    ) -> Result<Vec<Instance>, AppError> {
        Ok(self.store.instances_page(&by.tenant.id, by.project.as_ref(), after, limit).await?)
    }

    /// By id, or by name where the name is unique among the tenant's instances (terminated ones
    /// count only when no live one has it). Another tenant's instance is "not found", never
    /// "forbidden": ids and names leak nothing.
    pub async fn get_instance(&self, by: &Principal, id: &str) -> Result<Instance, AppError> {
        let not_found = || AppError::NotFound { kind: "instance", id: id.to_string() };
        if let Ok(parsed) = InstanceId::parse(id)
            && let Some(i) = self.store.get_instance(Some(&by.tenant.id), &parsed).await?
            && by.sees(&i.sale.project)
        {
            return Ok(i);
        }
        let mut named = self.store.instances_named(&by.tenant.id, id).await?;
        named.retain(|i| by.sees(&i.sale.project));
        let live: Vec<&Instance> =
            named.iter().filter(|i| i.state != gpucloud_model::InstanceState::Terminated).collect();
        let pick: Vec<&Instance> = if live.is_empty() { named.iter().collect() } else { live };
        match pick.as_slice() {
            [] => Err(not_found()),
            [one] => Ok((*one).clone()),
            many => Err(AppError::Conflict(format!(
                "{} instances are named {id}: use an id ({})",
                many.len(),
                many.iter().map(|i| i.id.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    pub async fn instance_events(
        &self,
        by: &Principal,
        id: &str,
    ) -> Result<Vec<gpucloud_store::InstanceEvent>, AppError> {
        let inst = self.get_instance(by, id).await?;
        Ok(self.store.instance_events(&inst.id).await?)
    }

    pub async fn instance_action(&self, by: &Principal, id: &str, action: UserAction) -> Result<Instance, AppError> {
        let inst = self.get_instance(by, id).await?;
        if action == UserAction::Start
            && !inst.state.holds_gpus()
            && inst.state != gpucloud_model::InstanceState::Pending
        {
            let milli = inst.share.as_ref().map_or(inst.count * 1000, |s| s.milli);
            let (minimum, per_hour) =
                self.start_cost(inst.model, milli, inst.sale.tier, inst.sale.max_price, inst.region.as_ref()).await?;
            self.check_can_afford(&by.tenant.id, minimum, per_hour).await?;
            self.check_project_budget(&by.tenant.id, &inst.sale.project).await?;
            self.refuse_if_rank_taken(&inst).await?;
            if let Some(fenced) = self.fenced_at(&inst).await?
                && self.now() < fenced
            {
                return Err(AppError::Conflict(format!(
                    "instance {} ended with its node, whose agent, if only cut off, still runs it until {} \
                     (it stops its workloads {} s after it last heard from the server): start it after that, in {} s",
                    inst.id,
                    gpucloud_api::rfc3339(fenced),
                    self.config.agent_stop_after().as_secs(),
                    (fenced.millis_since(self.now()) + 999) / 1000
                )));
            }
        }
        self.transition(inst, |i| i.state.on_user(i.stop_target, action).map_err(AppError::from)).await
    }

    /// When the old run of an instance that ended with its node has surely stopped: its node's
    /// agent, if only cut off, stops its workloads `agent_stop_after` after its last answer (at
    /// most its last heartbeat, which is when the instance ended). Such an instance is a lost
    /// one (or one stopped since it was lost), or one being stopped when its node was declared
    /// lost: that stop completed with no word from the agent (`sim chaos` seed 102 of 10
    /// minutes: stopped that way and started again, it ran on a new node while its cut-off
    /// agent still ran it). `None` for any other.
    pub(crate) async fn fenced_at(&self, inst: &Instance) -> Result<Option<gpucloud_model::Timestamp>, AppError> {
        use gpucloud_model::InstanceState::{Lost, Stopped, Stopping};
        if !matches!(inst.state, Lost | Stopped) {
            return Ok(None);
        }
        let stop_after = self.config.agent_stop_after().as_millis() as i64;
        let events = self.store.instance_events(&inst.id).await?;
        let lost_at = || events.iter().rev().find(|e| e.to == Lost).map(|e| e.at.plus_millis(stop_after));
        let Some(last) = events.last() else { return Ok(None) };
        match (inst.state, last.from) {
            (Lost, _) | (Stopped, Some(Lost)) => Ok(lost_at()),
            (Stopped, Some(Stopping)) => {
                let Some(node) = &inst.ran_node else { return Ok(None) };
                let Some(node) = self.store.get_node(node).await? else { return Ok(None) };
                // Lost, and not heard from since the stop: nothing says the agent stopped it.
                let unheard =
                    node.health == gpucloud_model::NodeHealth::Lost && node.last_heartbeat.is_none_or(|h| h <= last.at);
                Ok(unheard.then(|| last.at.plus_millis(stop_after)))
            }
            _ => Ok(None),
        }
    }

    /// A cluster member that ended may start again only while no other member holds its rank (a
    /// replica set launches a replacement of its own).
    async fn refuse_if_rank_taken(&self, inst: &Instance) -> Result<(), AppError> {
        let Some((cluster, rank)) = &inst.sale.cluster else { return Ok(()) };
        let members = self.store.cluster_members(cluster).await?;
        let taken = members.iter().find(|m| {
            m.id != inst.id && m.sale.cluster.as_ref().is_some_and(|(_, r)| r == rank) && super::clusters::live(m)
        });
        match taken {
            Some(m) => Err(AppError::Conflict(format!(
                "rank {rank} of its cluster already runs as {}: this ended member cannot start beside it",
                m.id
            ))),
            None => Ok(()),
        }
    }

    /// Applies what an agent saw, if it still matters.
    pub(crate) async fn observe(&self, inst: Instance, seen: AgentObservation) -> Result<Instance, AppError> {
        let exit_code = match seen {
            AgentObservation::Failed { exit_code } => Some(exit_code),
            AgentObservation::Stopped { exit_code } => exit_code,
            AgentObservation::Running => None,
        };
        self.transition_with(inst, exit_code, |i| Ok(i.state.on_agent(i.stop_target, seen))).await
    }

    pub(crate) async fn transition(
        &self,
        inst: Instance,
        decide: impl Fn(&Instance) -> Result<Change, AppError>,
    ) -> Result<Instance, AppError> {
        self.transition_with(inst, None, decide).await
    }

    /// Decide on the latest row, write with a generation check, and decide again if someone
    /// else wrote first.
    async fn transition_with(
        &self,
        mut inst: Instance,
        exit_code: Option<i32>,
        decide: impl Fn(&Instance) -> Result<Change, AppError>,
    ) -> Result<Instance, AppError> {
        for _ in 0..8 {
            let change = decide(&inst)?;
            if change.state == inst.state && change.stop_target == inst.stop_target {
                return Ok(inst);
            }
            let releases = change.releases_gpus(inst.state);
            let update = InstanceChange {
                state: change.state,
                stop_target: change.stop_target,
                exit_code: if releases { exit_code } else { None },
                at: self.now(),
            };
            match self.store.update_instance(&inst.id, inst.generation, &update).await? {
                Some(updated) => {
                    tracing::info!(instance = %inst.id, from = %inst.state, to = %updated.state, "instance state");
                    if releases || updated.state == gpucloud_model::InstanceState::Pending {
                        self.wake_scheduler();
                    }
                    return Ok(updated);
                }
                None => {
                    inst = self
                        .store
                        .get_instance(None, &inst.id)
                        .await?
                        .ok_or_else(|| AppError::NotFound { kind: "instance", id: inst.id.to_string() })?;
                }
            }
        }
        Err(AppError::Contended(format!("instance {}", inst.id)))
    }
}
