//! Warm pools: a tenant keeps `size` instances of a template started (a model already loaded),
//! billed at the price book's warm rate. A claim hands one that already runs over at once: it
//! leaves the pool and is billed on-demand from that instant; the pool then refills. With none
//! running, a claim falls back to an ordinary (cold) instance of the template.

use super::{App, AppError, Principal, random_bits};
use gpucloud_model::{GpuModel, InstanceId, InstanceState, PoolId, Region, Tier, UserAction};
use gpucloud_store::{Instance, NewInstance, Sale, WarmPool};

#[derive(Debug, Clone)]
pub struct NewPool {
    pub name: String,
    pub model: GpuModel,
    pub region: Option<Region>,
    pub count: u32,
    pub command: String,
    pub size: u32,
    /// What each instance runs in besides its command (as on an instance).
    pub image: Option<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub ports: Vec<String>,
    /// The project to create in (the key's, or `default`, when `None`).
    pub project: Option<String>,
}

pub const MAX_POOL_SIZE: u32 = 64;

impl App {
    pub async fn create_pool(&self, by: &Principal, req: NewPool) -> Result<(WarmPool, Vec<Instance>), AppError> {
        super::check_slug("pool", &req.name)?;
        if req.count == 0 || req.count > gpucloud_model::MAX_GPUS_PER_INSTANCE {
            return Err(AppError::invalid("count", format!("count is 1 to {}", gpucloud_model::MAX_GPUS_PER_INSTANCE)));
        }
        if req.size > MAX_POOL_SIZE {
            return Err(AppError::invalid("size", format!("a pool keeps at most {MAX_POOL_SIZE} instances warm")));
        }
        if req.command.trim().is_empty() || req.command.len() > 16 * 1024 || req.command.contains('\0') {
            return Err(AppError::invalid("command", "command must be 1 to 16384 bytes, not blank, with no NUL byte"));
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
        let pool = WarmPool {
            id: PoolId::from_random(random_bits()),
            tenant_id: by.tenant.id.clone(),
            name: req.name,
            model: req.model,
            region: req.region,
            count: req.count,
            command: req.command,
            size: req.size,
            created_at: self.now(),
            schedule: None,
            utc_offset_min: 0,
            workload,
            project,
        };
        self.store.insert_pool(&pool).await.map_err(AppError::store_conflict)?;
        tracing::info!(pool = %pool.id, name = %pool.name, size = pool.size, "warm pool created");
        self.converge_pool(&pool).await?;
        let members = self.store.pool_members(&pool.id).await?;
        Ok((pool, members))
    }

    async fn find_pool(&self, by: &Principal, name: &str) -> Result<WarmPool, AppError> {
        self.store
            .list_pools(Some(&by.tenant.id))
            .await?
            .into_iter()
            .find(|p| (p.name == name || p.id.as_str() == name) && by.sees(&p.project))
            .ok_or_else(|| AppError::NotFound { kind: "warm pool", id: name.to_string() })
    }

    pub async fn list_pools(&self, by: &Principal) -> Result<Vec<(WarmPool, Vec<Instance>)>, AppError> {
        let mut out = Vec::new();
        for p in self.store.list_pools(Some(&by.tenant.id)).await?.into_iter().filter(|p| by.sees(&p.project)) {
            let members = self.store.pool_members(&p.id).await?;
            out.push((p, members));
        }
        Ok(out)
    }

    /// Retires the pool and terminates what it holds.
    pub async fn delete_pool(&self, by: &Principal, name: &str) -> Result<(), AppError> {
        let pool = self.find_pool(by, name).await?;
        self.store.delete_pool(&pool.id).await?;
        for m in self.store.pool_members(&pool.id).await? {
            self.transition(m, |i| i.state.on_user(i.stop_target, UserAction::Terminate).map_err(AppError::from))
                .await?;
        }
        Ok(())
    }

    /// Hands out a running warm instance (true), or starts a cold one of the template (false).
    pub async fn claim_from_pool(
        &self,
        by: &Principal,
        pool_name: &str,
        name: Option<String>,
    ) -> Result<(Instance, bool), AppError> {
        let pool = self.find_pool(by, pool_name).await?;
        if let Some(n) = &name
            && (n.is_empty() || n.len() > 128 || n.chars().any(char::is_control))
        {
            return Err(AppError::invalid("name", "name must be 1 to 128 printable characters"));
        }
        self.check_can_spend(&by.tenant.id).await?;
        let now = self.now();
        for m in self.store.pool_members(&pool.id).await?.into_iter().filter(|m| m.state == InstanceState::Running) {
            let label = name.clone().unwrap_or_else(|| m.id.to_string());
            if let Some(claimed) = self.store.claim_warm(&m.id, m.generation, &label, now).await? {
                tracing::info!(pool = %pool.name, instance = %claimed.id, "warm instance handed out");
                self.converge_pool(&pool).await?;
                return Ok((claimed, true));
            }
        }
        let req = super::CreateInstance {
            model: pool.model,
            count: pool.count,
            region: pool.region.clone(),
            command: pool.command.clone(),
            name,
            gpu_share: None,
            gpu_memory_mib: None,
            mig: None,
            tier: Tier::OnDemand,
            max_price: None,
            image: pool.workload.image.clone(),
            // Secrets are kept as `secret:NAME` values, which a create reads the same way.
            env: pool.workload.env.iter().cloned().collect(),
            secrets: Vec::new(),
            ports: pool.workload.ports.iter().map(|p| p.to_string()).collect(),
            template: None,
            volume: None,
            project: Some(pool.project.to_string()),
            on_quota: gpucloud_model::OnQuota::Fail,
            priority: gpucloud_model::Priority::Default,
        };
        let (inst, _) = self.create_instance(by, req, None).await?;
        tracing::info!(pool = %pool.name, instance = %inst.id, "no warm instance running: started a cold one");
        Ok((inst, false))
    }

    /// Keeps `size` members pending or running: launches the missing, terminates the extra.
    pub(crate) async fn converge_pool(&self, pool: &WarmPool) -> Result<(), AppError> {
        let members = self.store.pool_members(&pool.id).await?;
        let have = members.len() as u32;
        for _ in have..pool.size {
            let new = NewInstance {
                id: InstanceId::from_random(random_bits()),
                tenant_id: pool.tenant_id.clone(),
                name: format!("{}-warm", pool.name),
                region: pool.region.clone(),
                model: pool.model,
                count: pool.count,
                share: None,
                command: pool.command.clone(),
                idempotency_key: None,
                created_at: self.now(),
                sale: Sale {
                    tier: Tier::Warm,
                    pool: Some(pool.id.clone()),
                    image: pool.workload.image.clone(),
                    env: pool.workload.env.clone(),
                    ports: pool.workload.ports.clone(),
                    on_quota: gpucloud_model::OnQuota::Wait,
                    project: pool.project.clone(),
                    ..Sale::default()
                },
            };
            self.store.insert_instance(&new).await?;
            self.wake_scheduler();
        }
        // Too many (a smaller size): the ones not yet running go first.
        let mut extra: Vec<Instance> = members;
        extra.sort_by_key(|m| (m.state == InstanceState::Running, std::cmp::Reverse(m.created_at)));
        for m in extra.into_iter().take(have.saturating_sub(pool.size) as usize) {
            self.transition(m, |i| i.state.on_user(i.stop_target, UserAction::Terminate).map_err(AppError::from))
                .await?;
        }
        Ok(())
    }

    /// Sets a pool's size, or its size by time of day ("09:25-16:00 4 x A100-40GB, otherwise
    /// 0 x A100-40GB": warm five minutes before the market opens). `None` for both clears the
    /// schedule and keeps the size.
    pub async fn set_pool_size(
        &self,
        by: &Principal,
        name: &str,
        size: Option<u32>,
        schedule: Option<String>,
        utc_offset: Option<String>,
    ) -> Result<(WarmPool, Vec<Instance>), AppError> {
        let mut pool = self.find_pool(by, name).await?;
        if let Some(n) = size {
            if n > MAX_POOL_SIZE {
                return Err(AppError::invalid("size", format!("a pool keeps at most {MAX_POOL_SIZE} instances warm")));
            }
            pool.size = n;
        }
        pool.utc_offset_min = gpucloud_model::schedule::parse_utc_offset(utc_offset.as_deref().unwrap_or("UTC"))
            .map_err(|e| AppError::invalid("utc_offset", e))?;
        if let Some(text) = &schedule {
            let s = gpucloud_model::schedule::SizeSchedule::parse(text, pool.utc_offset_min)
                .map_err(|e| AppError::invalid("schedule", e))?;
            if s.windows.iter().any(|w| w.model != pool.model) || s.otherwise.1 != pool.model {
                return Err(AppError::invalid("schedule", format!("this pool's instances are {}", pool.model)));
            }
            if s.sizes().any(|n| n > MAX_POOL_SIZE) {
                return Err(AppError::invalid("schedule", format!("a pool keeps at most {MAX_POOL_SIZE} warm")));
            }
        }
        pool.schedule = schedule;
        self.store.update_pool(&pool).await?;
        if self.config.market.schedules_follow_clock {
            self.apply_pool_schedules(self.now()).await?;
        }
        let pool = self.find_pool(by, name).await?;
        self.converge_pool(&pool).await?;
        let members = self.store.pool_members(&pool.id).await?;
        Ok((pool, members))
    }

    /// Sets every scheduled pool to the size its schedule gives for `now`.
    pub async fn apply_pool_schedules(&self, now: gpucloud_model::Timestamp) -> Result<usize, AppError> {
        let mut changed = 0;
        for mut p in self.store.list_pools(None).await? {
            let Some(text) = &p.schedule else { continue };
            let Ok(s) = gpucloud_model::schedule::SizeSchedule::parse(text, p.utc_offset_min) else { continue };
            let (n, _) = s.at(now);
            if n != p.size {
                p.size = n.min(MAX_POOL_SIZE);
                if self.store.update_pool(&p).await? {
                    tracing::info!(pool = %p.id, size = p.size, "warm pool schedule applied");
                    self.converge_pool(&p).await?;
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    pub async fn reconcile_pools(&self) -> Result<(), AppError> {
        for p in self.store.list_pools(None).await? {
            if let Err(e) = self.converge_pool(&p).await {
                tracing::error!(pool = %p.id, error = %e, "warm pool reconcile failed");
            }
        }
        Ok(())
    }
}
