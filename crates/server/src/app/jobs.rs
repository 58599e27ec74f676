//! Managed jobs: a command that runs until it succeeds. Each attempt is an ordinary instance; when
//! one is preempted or its node is lost, the reconciler launches the next wherever the allowed
//! capacity is cheapest, with `GPUCLOUD_RESUME_FROM` set to the latest checkpoint the workload
//! reported. Crash-safe by construction: the job's attempt counter moves first (compare-and-set),
//! then the attempt's instance is created under the idempotency key `job:<id>:<attempt>`, so a
//! reconciler that dies in between creates it on its next pass, once.

use super::{App, AppError, Principal, random_bits};
use gpucloud_api::CreateJobRequest;
use gpucloud_model::{GpuModel, InstanceId, InstanceState, JobId, Money, Region, Tier};
use gpucloud_store::{Instance, Job, JobChange, JobState, NewInstance, Sale};
use std::collections::HashMap;

const DEFAULT_MAX_RESTARTS: u32 = 10;

/// A job with its attempts, as the API shows it.
#[derive(Debug, Clone)]
pub struct JobView {
    pub job: Job,
    pub spec: CreateJobRequest,
    pub attempts: Vec<(Instance, gpucloud_model::Money, i64)>,
}

impl JobView {
    /// Attempts that ended by preemption or node loss.
    pub fn restarts(&self) -> u32 {
        self.attempts.iter().filter(|(i, _, _)| was_preempted(i)).count() as u32
    }
}

/// Whether an attempt ended because the cloud took it away (not because of its own doing).
fn was_preempted(i: &Instance) -> bool {
    i.state == InstanceState::Lost || (i.notice.is_some() && !i.state.holds_gpus() && i.state != InstanceState::Pending)
}

/// A job's project (jobs made before projects, and unreadable names, are `default`'s).
fn project_of(spec: &CreateJobRequest) -> gpucloud_model::ProjectName {
    spec.project.as_deref().and_then(|p| gpucloud_model::ProjectName::parse(p).ok()).unwrap_or_default()
}

fn spec_of(job: &Job) -> Result<CreateJobRequest, AppError> {
    serde_json::from_str(&job.spec)
        .map_err(|e| AppError::Store(gpucloud_store::StoreError::Corrupt { table: "jobs", detail: e.to_string() }))
}

impl App {
    pub async fn create_job(
        &self,
        by: &Principal,
        req: CreateJobRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Job, AppError> {
        if req.gpus.is_empty() || req.gpus.len() > 8 {
            return Err(AppError::invalid("gpus", "list 1 to 8 acceptable GPU models"));
        }
        if req.count == 0 || req.count > gpucloud_model::MAX_GPUS_PER_INSTANCE {
            return Err(AppError::invalid(
                "count",
                format!("count must be 1 to {}", gpucloud_model::MAX_GPUS_PER_INSTANCE),
            ));
        }
        if req.command.trim().is_empty() || req.command.len() > 16 * 1024 || req.command.contains('\0') {
            return Err(AppError::invalid("command", "command must be 1 to 16384 bytes, not blank, with no NUL byte"));
        }
        if let Some(name) = &req.name
            && (name.is_empty() || name.len() > 128 || name.chars().any(char::is_control))
        {
            return Err(AppError::invalid("name", "name must be 1 to 128 printable characters"));
        }
        if let Some(dir) = &req.checkpoint_dir
            && (dir.is_empty() || dir.len() > 1024 || dir.chars().any(char::is_control))
        {
            return Err(AppError::invalid("checkpoint_dir", "checkpoint_dir must be 1 to 1024 printable characters"));
        }
        if req.max_restarts.is_some_and(|n| n > 1000) {
            return Err(AppError::invalid("max_restarts", "max_restarts is at most 1000"));
        }
        if req.on_demand_after_seconds.is_some_and(|s| s > 30 * 24 * 3600) {
            return Err(AppError::invalid("on_demand_after_seconds", "on_demand_after_seconds is at most 30 days"));
        }
        let spot = req.spot.unwrap_or(true);
        let tier = if spot { Tier::Spot } else { Tier::OnDemand };
        super::instances::check_sale(tier, req.max_price_per_gpu_hour)?;
        if let Some(image) = &req.image {
            gpucloud_model::workload::check_image(image).map_err(|e| AppError::invalid("image", e))?;
        }
        self.check_env(&by.tenant.id, &req.env, &req.secrets).await?;
        if let Some(m) = &req.volume {
            let project = self.project_for(by, req.project.as_deref()).await?;
            let (v, _) = self.resolve_volume(&by.tenant.id, &project, m, None).await?;
            if !req.regions.is_empty() && !req.regions.contains(&v.region) {
                return Err(AppError::invalid(
                    "volume",
                    format!("volume {} is in region {}, which the job's regions leave out", v.name, v.region),
                ));
            }
        }
        if !req.regions.is_empty() {
            let known = self.store.list_regions().await?;
            if let Some(r) = req.regions.iter().find(|r| !known.contains(r)) {
                return Err(AppError::invalid("regions", format!("unknown region '{r}'")));
            }
        }
        self.check_can_spend(&by.tenant.id).await?;
        // The spec keeps the project it resolved to, so a key's default is fixed at creation.
        let mut req = req;
        let priority = req.priority.map(Into::into).unwrap_or_default();
        let project = self.admit_to_project(by, req.project.as_deref(), priority).await?;
        req.project = Some(project.to_string());
        let id = JobId::from_random(random_bits());
        let now = self.now();
        let job = Job {
            name: req.name.clone().unwrap_or_else(|| id.to_string()),
            id,
            tenant_id: by.tenant.id.clone(),
            spec: serde_json::to_string(&req).map_err(|e| AppError::invalid("job", e.to_string()))?,
            state: JobState::Running,
            attempts: 0,
            checkpoint: None,
            reason: None,
            generation: 1,
            idempotency_key: idempotency_key.map(str::to_string),
            created_at: now,
            updated_at: now,
        };
        let (job, created) = self.store.insert_job(&job).await?;
        if created {
            tracing::info!(job = %job.id, tenant = %by.tenant.name, "job created");
            self.reconcile_job(job.clone()).await?;
        }
        Ok(self.store.get_job(None, &job.id).await?.unwrap_or(job))
    }

    pub async fn list_jobs(&self, by: &Principal) -> Result<Vec<JobView>, AppError> {
        let mut out = Vec::new();
        for job in self.store.list_jobs(&by.tenant.id).await? {
            let view = self.job_view(job).await?;
            if by.sees(&project_of(&view.spec)) {
                out.push(view);
            }
        }
        Ok(out)
    }

    pub async fn get_job(&self, by: &Principal, id: &str) -> Result<JobView, AppError> {
        let job = self.find_job(by, id).await?;
        self.job_view(job).await
    }

    async fn find_job(&self, by: &Principal, id: &str) -> Result<Job, AppError> {
        let not_found = || AppError::NotFound { kind: "job", id: id.to_string() };
        let jid = JobId::parse(id).map_err(|_| not_found())?;
        let job = self.store.get_job(Some(&by.tenant.id), &jid).await?.ok_or_else(not_found)?;
        if !by.sees(&project_of(&spec_of(&job)?)) {
            return Err(not_found());
        }
        Ok(job)
    }

    pub(crate) async fn job_view(&self, job: Job) -> Result<JobView, AppError> {
        let spec = spec_of(&job)?;
        let attempts = self.store.job_attempts(&job.id).await?;
        let intervals = self.store.intervals_of_tenant(&job.tenant_id).await?;
        let mut cost: HashMap<InstanceId, (gpucloud_model::Money, i64)> = HashMap::new();
        let now = self.now();
        let mut prices = super::billing::PriceCache::default();
        for u in intervals {
            // A running attempt's cost so far, not only what has been posted of it.
            let (amount, seconds) = if u.settled {
                (u.charged, u.charged_seconds)
            } else {
                let due = super::billing::usage_of(&u).due(self.accrue_end(&u, now), prices.get(self, &u).await?);
                (due.amount.max(u.charged), due.seconds.max(u.charged_seconds))
            };
            let e = cost.entry(u.instance_id).or_insert((gpucloud_model::Money::ZERO, 0));
            e.0 = Money(e.0.0 + amount.0);
            e.1 += seconds;
        }
        let attempts = attempts
            .into_iter()
            .map(|i| {
                let (c, s) = cost.get(&i.id).copied().unwrap_or((gpucloud_model::Money::ZERO, 0));
                (i, c, s)
            })
            .collect();
        Ok(JobView { job, spec, attempts })
    }

    /// Cancels the job and terminates its running attempt.
    pub async fn cancel_job(&self, by: &Principal, id: &str) -> Result<JobView, AppError> {
        let mut job = self.find_job(by, id).await?;
        loop {
            if job.state != JobState::Running {
                break;
            }
            let change = JobChange {
                state: JobState::Cancelled,
                attempts: job.attempts,
                reason: Some("cancelled by the tenant".into()),
                at: self.now(),
            };
            match self.store.update_job(&job.id, job.generation, &change).await? {
                Some(j) => {
                    job = j;
                    break;
                }
                None => job = self.find_job(by, id).await?,
            }
        }
        for inst in self.store.job_attempts(&job.id).await? {
            if inst.state != InstanceState::Terminated {
                self.transition(inst, |i| {
                    i.state.on_user(i.stop_target, gpucloud_model::UserAction::Terminate).map_err(AppError::from)
                })
                .await?;
            }
        }
        self.job_view(job).await
    }

    /// One pass over the running jobs.
    pub async fn reconcile_jobs(&self) -> Result<usize, AppError> {
        let mut launched = 0;
        for job in self.store.active_jobs().await? {
            let id = job.id.clone();
            match self.reconcile_job(job).await {
                Ok(n) => launched += n,
                Err(e) => tracing::error!(job = %id, error = %e, "job reconcile failed"),
            }
        }
        Ok(launched)
    }

    /// Converges one job; returns how many attempts it launched.
    async fn reconcile_job(&self, job: Job) -> Result<usize, AppError> {
        let spec = spec_of(&job)?;
        let attempts = self.store.job_attempts(&job.id).await?;
        let latest = attempts.iter().max_by_key(|i| i.sale.job.as_ref().map_or(0, |(_, a)| *a));
        let latest_no = latest.and_then(|i| i.sale.job.as_ref().map(|(_, a)| *a)).unwrap_or(0);
        // The counter moved but the instance was never created (a crash in between): create it.
        if job.attempts > latest_no {
            let tier = self.next_tier(&spec, latest);
            self.launch_attempt(&job, &spec, job.attempts, tier).await?;
            return Ok(1);
        }
        let Some(latest) = latest else {
            let tier = if spec.spot.unwrap_or(true) { Tier::Spot } else { Tier::OnDemand };
            return self.next_attempt(job, &spec, tier).await;
        };
        let restarts = attempts.iter().filter(|i| was_preempted(i)).count() as u32;
        match latest.state {
            InstanceState::Provisioning | InstanceState::Running | InstanceState::Stopping => Ok(0),
            InstanceState::Pending => {
                let waited = self.now().millis_since(latest.created_at);
                let fallback = spec.on_demand_after_seconds.map(|s| s as i64 * 1000);
                if latest.sale.tier == Tier::Spot && fallback.is_some_and(|f| waited >= f) {
                    // No spot capacity for long enough: give up the wait and run on-demand.
                    self.store
                        .set_status_reason(&latest.id, Some("no spot capacity in time: the job moved to on-demand"))
                        .await?;
                    self.transition(latest.clone(), |i| {
                        i.state.on_user(i.stop_target, gpucloud_model::UserAction::Terminate).map_err(AppError::from)
                    })
                    .await?;
                    return self.next_attempt(job, &spec, Tier::OnDemand).await;
                }
                // Waited long enough: another allowed pool with room now takes the next attempt.
                if waited >= self.config.market.job_repick_after.as_millis() as i64 {
                    let (model, region, room) = self.cheapest_choice(&spec, latest.sale.tier).await?;
                    if room && (model, region.as_ref()) != (latest.model, latest.region.as_ref()) {
                        let to =
                            format!("{model} in {}", region.as_ref().map_or("any region".into(), |r| r.to_string()));
                        let why =
                            format!("waited {} s for GPUs here: the job moved to {to}, which has room", waited / 1000);
                        self.store.set_status_reason(&latest.id, Some(&why)).await?;
                        self.transition(latest.clone(), |i| {
                            i.state
                                .on_user(i.stop_target, gpucloud_model::UserAction::Terminate)
                                .map_err(AppError::from)
                        })
                        .await?;
                        let tier = latest.sale.tier;
                        return self.next_attempt(job, &spec, tier).await;
                    }
                }
                Ok(0)
            }
            _ if was_preempted(latest) => {
                // Its node went silent: its agent may be cut off and the attempt still running.
                // The agent stops it within `agent_stop_after` of its last answer; start the
                // next one only after that, so the two never run at once.
                if let Some(fenced) = self.fenced_at(latest).await?
                    && self.now() < fenced
                {
                    return Ok(0);
                }
                let max = spec.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS);
                if restarts > max {
                    let reason = format!("preempted {restarts} times, more than max_restarts ({max})");
                    self.finish_job(job, JobState::Failed, reason).await?;
                    return Ok(0);
                }
                let tier = self.next_tier(&spec, Some(latest));
                self.next_attempt(job, &spec, tier).await
            }
            InstanceState::Stopped
                if matches!(latest.exit_code, Some(0) | None) && !self.was_stopped_by_request(latest).await? =>
            {
                // No code: the workload ended while its agent could not watch it (adopted after
                // an agent restart); it ended by itself, which a job counts as done.
                let reason = match latest.exit_code {
                    Some(_) => format!("attempt {latest_no} exited 0"),
                    None => format!("attempt {latest_no} ended by itself (its exit status was not seen)"),
                };
                self.finish_job(job, JobState::Succeeded, reason).await?;
                Ok(0)
            }
            InstanceState::Failed => {
                let reason = match (&latest.status_reason, latest.exit_code) {
                    (Some(r), _) => format!("attempt {latest_no} failed: {r}"),
                    (None, Some(c)) => format!("attempt {latest_no} exited with code {c}"),
                    (None, None) => format!("attempt {latest_no} failed"),
                };
                self.finish_job(job, JobState::Failed, reason).await?;
                Ok(0)
            }
            // Stopped or terminated by someone (the tenant, a budget): the job ends with it.
            _ => {
                let reason = format!("attempt {latest_no} was {} by request", latest.state);
                self.finish_job(job, JobState::Cancelled, reason).await?;
                Ok(0)
            }
        }
    }

    /// A stop someone asked for passes through `stopping`; a workload that exits by itself does not.
    async fn was_stopped_by_request(&self, i: &Instance) -> Result<bool, AppError> {
        Ok(self.store.instance_events(&i.id).await?.iter().any(|e| e.to == InstanceState::Stopping))
    }

    /// Spot again after a preemption; an attempt that already fell back to on-demand stays there.
    fn next_tier(&self, spec: &CreateJobRequest, latest: Option<&Instance>) -> Tier {
        match latest {
            Some(i) if i.sale.tier == Tier::OnDemand => Tier::OnDemand,
            _ if spec.spot.unwrap_or(true) => Tier::Spot,
            _ => Tier::OnDemand,
        }
    }

    async fn finish_job(&self, job: Job, state: JobState, reason: String) -> Result<(), AppError> {
        let change = JobChange { state, attempts: job.attempts, reason: Some(reason.clone()), at: self.now() };
        if self.store.update_job(&job.id, job.generation, &change).await?.is_some() {
            tracing::info!(job = %job.id, state = state.as_str(), %reason, "job ended");
        }
        Ok(())
    }

    async fn next_attempt(&self, job: Job, spec: &CreateJobRequest, tier: Tier) -> Result<usize, AppError> {
        if let Err(e) = self.check_can_spend(&job.tenant_id).await {
            self.finish_job(job, JobState::Failed, format!("cannot launch another attempt: {e}")).await?;
            return Ok(0);
        }
        let next = job.attempts + 1;
        let change = JobChange { state: JobState::Running, attempts: next, reason: None, at: self.now() };
        let Some(job) = self.store.update_job(&job.id, job.generation, &change).await? else {
            // Someone else moved the job: the next pass decides again.
            return Ok(0);
        };
        self.launch_attempt(&job, spec, next, tier).await?;
        Ok(1)
    }

    /// Creates attempt `n` (idempotently) on the cheapest allowed GPU model and region.
    async fn launch_attempt(&self, job: &Job, spec: &CreateJobRequest, n: u32, tier: Tier) -> Result<(), AppError> {
        // A job's volume holds its checkpoints: every attempt mounts it, in its region and on its
        // node, and takes it over from an earlier attempt that no longer runs.
        let volume = match &spec.volume {
            Some(m) => {
                let (v, mount) = self.resolve_volume(&job.tenant_id, &project_of(spec), m, None).await?;
                if let Some(holder) = &v.attached_to
                    && let Some(h) = self.store.get_instance(None, holder).await?
                    && h.sale.job.as_ref().is_some_and(|(j, _)| *j == job.id)
                    && !h.state.holds_gpus()
                    && h.state != gpucloud_model::InstanceState::Pending
                {
                    self.store.detach_volume(&v.id, holder).await?;
                }
                Some((v, mount))
            }
            None => None,
        };
        let mut spec = spec.clone();
        if let Some((v, _)) = &volume {
            spec.regions = vec![v.region.clone()];
        }
        let spec = &spec;
        let (model, region, _) = self.cheapest_choice(spec, tier).await?;
        let mut env: Vec<(String, String)> = spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(spec.secrets.iter().map(|s| (s.clone(), format!("{}{s}", gpucloud_model::workload::SECRET_REF))));
        env.extend([("GPUCLOUD_JOB_ID".to_string(), job.id.to_string()), ("GPUCLOUD_ATTEMPT".into(), n.to_string())]);
        if let Some(dir) = &spec.checkpoint_dir {
            env.push(("GPUCLOUD_CHECKPOINT_DIR".into(), dir.clone()));
        }
        // The job row holds the latest checkpoint any attempt reported.
        let fresh = self.store.get_job(None, &job.id).await?.unwrap_or_else(|| job.clone());
        if let Some(c) = &fresh.checkpoint {
            env.push(("GPUCLOUD_RESUME_FROM".into(), c.replace(['\n', '\0'], "")));
        }
        let id = InstanceId::from_random(random_bits());
        let new = NewInstance {
            id,
            tenant_id: job.tenant_id.clone(),
            name: format!("{}-{n}", job.name),
            region,
            model,
            count: spec.count,
            share: None,
            command: spec.command.clone(),
            idempotency_key: Some(format!("job:{}:{n}", job.id)),
            created_at: self.now(),
            sale: Sale {
                tier,
                max_price: if tier == Tier::Spot { spec.max_price_per_gpu_hour } else { None },
                env,
                job: Some((job.id.clone(), n)),
                cluster: None,
                pool: None,
                image: spec.image.clone(),
                ports: Vec::new(),
                volume: volume.map(|(v, mount)| (v.id, mount)),
                project: project_of(spec),
                // A relaunch the project has no room for waits for it rather than failing.
                on_quota: gpucloud_model::OnQuota::Wait,
                priority: spec.priority.map(Into::into).unwrap_or_default(),
            },
        };
        let (inst, created) = match self.store.insert_instance(&new).await {
            Err(gpucloud_store::StoreError::VolumeInUse(v)) => return Err(self.volume_in_use(&v).await),
            other => other?,
        };
        if created {
            tracing::info!(job = %job.id, attempt = n, instance = %inst.id, %tier, gpu = %model, "job attempt launched");
            self.wake_scheduler();
        }
        Ok(())
    }

    /// Among the allowed models and regions that have a node able to hold the job at all: the
    /// cheapest per GPU-hour for the tier (a spot price within the bid) that has room on one node
    /// now (`true`); if none has room, the cheapest of them (the attempt waits there, `false`).
    /// With `prefer: fastest`, the most capable model (the catalogue's order) before the price.
    /// A priced pool with no such node is never chosen: nothing would ever start there.
    async fn cheapest_choice(
        &self,
        spec: &CreateJobRequest,
        tier: Tier,
    ) -> Result<(GpuModel, Option<Region>, bool), AppError> {
        let nodes = self.store.list_nodes().await?;
        let now = self.now();
        let mut regions: Vec<Region> = nodes.iter().map(|n| n.region.clone()).collect();
        regions.sort();
        regions.dedup();
        let allowed = |r: &Region| spec.regions.is_empty() || spec.regions.contains(r);
        // (has room, price, model, region)
        let mut best: Option<(bool, Money, GpuModel, Region)> = None;
        let fastest = spec.prefer == Some(gpucloud_api::ModelPreference::Fastest);
        // The catalogue lists models from the least to the most capable.
        let speed = |m: GpuModel| if fastest { GpuModel::ALL.iter().position(|x| *x == m).unwrap_or(0) } else { 0 };
        for model in &spec.gpus {
            for region in regions.iter().filter(|r| allowed(r)) {
                let Some(p) = self.store.price_at(*model, region, tier, now).await? else { continue };
                let price = p.per_gpu_hour;
                if tier == Tier::Spot && spec.max_price_per_gpu_hour.is_some_and(|bid| price > bid) {
                    continue;
                }
                let could = nodes.iter().any(|n| {
                    n.region == *region
                        && n.health != gpucloud_model::NodeHealth::Lost
                        && n.gpus.iter().filter(|g| g.model == *model).count() as u32 >= spec.count
                });
                if !could {
                    continue;
                }
                let room = nodes.iter().any(|n| {
                    n.region == *region
                        && n.state == gpucloud_model::NodeState::Ready
                        && n.health == gpucloud_model::NodeHealth::Healthy
                        && n.gpus
                            .iter()
                            .filter(|g| g.model == *model && g.healthy && g.instance.is_none() && g.slices.is_empty())
                            .count() as u32
                            >= spec.count
                });
                let better = match &best {
                    None => true,
                    Some((broom, bprice, bmodel, _)) => {
                        (room, speed(*model), std::cmp::Reverse(price))
                            > (*broom, speed(*bmodel), std::cmp::Reverse(*bprice))
                    }
                };
                if better {
                    best = Some((room, price, *model, region.clone()));
                }
            }
        }
        Ok(match best {
            Some((room, _, model, region)) => (model, Some(region), room),
            None => (spec.gpus[0], spec.regions.first().cloned(), false),
        })
    }
}
