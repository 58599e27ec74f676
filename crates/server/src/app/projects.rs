//! Projects and GPU quotas: which project a create lands in, who may make projects and set
//! quotas, and the admission pass that lets held requests in. The count itself is the store's,
//! in the transaction that writes the instance (`gpucloud_store::ProjectStore`).

use super::{App, AppError, Principal};
use gpucloud_model::{GpuModel, Priority, ProjectName, Role, TenantId};
use gpucloud_store::{Project, Quota, QuotaUse, Tenant};

/// The most GPUs of one model a quota may name: far above any fleet, below overflow.
const MAX_QUOTA_GPUS: u32 = 1_000_000;

impl App {
    /// The project a create of `by` lands in: the one asked for (which must exist, and be the
    /// key's own for a project key), else the key's project, else `default`.
    pub async fn project_for(&self, by: &Principal, asked: Option<&str>) -> Result<ProjectName, AppError> {
        match asked {
            None => Ok(by.project.clone().unwrap_or_default()),
            Some(_) => Ok(self.project_of_create(by, asked).await?.0),
        }
    }

    /// The project a create lands in and its row (none for a `default` never given one), read
    /// once; an unknown project is refused naming the ones the tenant has.
    async fn project_of_create(
        &self,
        by: &Principal,
        asked: Option<&str>,
    ) -> Result<(ProjectName, Option<Project>), AppError> {
        let name = match asked {
            None => by.project.clone().unwrap_or_default(),
            Some(asked) => {
                let name = ProjectName::parse(asked).map_err(|e| AppError::invalid("project", e))?;
                if !by.sees(&name) {
                    return Err(AppError::Forbidden(format!(
                        "key {} is scoped to project {}: it cannot create in project {name}",
                        by.key_prefix,
                        by.project.as_ref().map_or("", |p| p.as_str())
                    )));
                }
                name
            }
        };
        let rows = self.store.list_projects(&by.tenant.id).await?;
        let row = rows.iter().find(|p| p.name == name).cloned();
        if row.is_none() && !name.is_default() {
            let mut names = vec![ProjectName::DEFAULT.to_string()];
            names.extend(rows.iter().filter(|p| !p.name.is_default()).map(|p| p.name.to_string()));
            return Err(AppError::invalid("project", format!("no project '{name}'; projects: {}", names.join(", "))));
        }
        Ok((name, row))
    }

    /// The project new work of `by` lands in, admitted: it exists, allows `priority` (`default`
    /// allows every class) and has budget left this month.
    pub(crate) async fn admit_to_project(
        &self,
        by: &Principal,
        asked: Option<&str>,
        priority: Priority,
    ) -> Result<ProjectName, AppError> {
        let (name, row) = self.project_of_create(by, asked).await?;
        let max = row.as_ref().map_or(Priority::Production, |p| p.max_priority);
        if priority > max {
            return Err(AppError::invalid(
                "priority",
                format!("project {name} allows priority up to {max}, not {priority}"),
            ));
        }
        if let Some(budget) = row.and_then(|p| p.monthly_budget) {
            self.refuse_over_budget(&by.tenant.id, &name, budget).await?;
        }
        Ok(name)
    }

    async fn has_project(&self, tenant: &TenantId, name: &ProjectName) -> Result<bool, AppError> {
        Ok(name.is_default() || self.store.list_projects(tenant).await?.iter().any(|p| p.name == *name))
    }

    /// The tenant a project call acts on: the caller's, or (operators only) the one named.
    async fn tenant_for(&self, by: &Principal, tenant: Option<&str>) -> Result<Tenant, AppError> {
        let Some(t) = tenant else { return Ok(by.tenant.clone()) };
        if by.tenant.role != Role::Operator {
            return Err(AppError::Forbidden("only an operator acts on another tenant's projects".into()));
        }
        let found = match TenantId::parse(t) {
            Ok(id) => self.store.get_tenant(&id).await?,
            Err(_) => self.store.list_tenants().await?.into_iter().find(|x| x.name == t),
        };
        found.ok_or_else(|| AppError::NotFound { kind: "tenant", id: t.to_string() })
    }

    /// The tenant and project a change of its settings (quota, budget) is for: an organization
    /// admin's own, or (an operator) any tenant's. An unknown project is "not found".
    async fn project_to_change(
        &self,
        by: &Principal,
        tenant: Option<&str>,
        project: &str,
    ) -> Result<(Tenant, ProjectName), AppError> {
        let t = self.tenant_for(by, tenant).await?;
        if t.id == by.tenant.id {
            by.require_org_admin()?;
        }
        let name = ProjectName::parse(project).map_err(|e| AppError::invalid("project", e))?;
        if !self.has_project(&t.id, &name).await? {
            return Err(AppError::NotFound { kind: "project", id: name.to_string() });
        }
        Ok((t, name))
    }

    /// An organization admin makes a project.
    pub async fn create_project(
        &self,
        by: &Principal,
        name: &str,
        max_priority: Option<Priority>,
    ) -> Result<Project, AppError> {
        by.require_org_admin()?;
        let name = ProjectName::parse(name).map_err(|e| AppError::invalid("name", e))?;
        if name.is_default() {
            return Err(AppError::Conflict("project 'default' already exists (every organization has it)".into()));
        }
        let p = Project {
            tenant_id: by.tenant.id.clone(),
            name,
            max_priority: max_priority.unwrap_or(Priority::Production),
            created_at: self.now(),
            monthly_budget: None,
        };
        self.store.create_project(&p).await.map_err(AppError::store_conflict)?;
        tracing::info!(tenant = %by.tenant.name, project = %p.name, "project created");
        Ok(p)
    }

    /// The organization's projects, `default` first (a project key: its own only).
    pub async fn list_projects(&self, by: &Principal, tenant: Option<&str>) -> Result<Vec<Project>, AppError> {
        let t = self.tenant_for(by, tenant).await?;
        let rows = self.store.list_projects(&t.id).await?;
        // `default` has a row only once given a budget.
        let default = rows.iter().find(|p| p.name.is_default()).cloned().unwrap_or(Project {
            tenant_id: t.id.clone(),
            name: ProjectName::default(),
            max_priority: Priority::Production,
            created_at: t.created_at,
            monthly_budget: None,
        });
        let mut all = vec![default];
        all.extend(rows.into_iter().filter(|p| !p.name.is_default()));
        all.retain(|p| by.sees(&p.name));
        Ok(all)
    }

    /// What each of a tenant's projects has spent this month (posted and accrued), by name.
    pub async fn month_spend(
        &self,
        by: &Principal,
        tenant: Option<&str>,
    ) -> Result<std::collections::HashMap<String, gpucloud_model::Money>, AppError> {
        let t = self.tenant_for(by, tenant).await?;
        let from = super::billing::month_start(self.now());
        let lines = self
            .usage_of(&t.id, None, from, gpucloud_model::Timestamp(i64::MAX), super::billing::UsageGrouping::Project)
            .await?;
        Ok(lines.into_iter().map(|l| (l.key, l.amount)).collect())
    }

    /// Sets or clears a project's monthly budget: an organization admin for its own projects,
    /// an operator for any tenant's.
    pub async fn set_project_budget(
        &self,
        by: &Principal,
        tenant: Option<&str>,
        project: &str,
        budget: Option<gpucloud_model::Money>,
    ) -> Result<Project, AppError> {
        let (t, name) = self.project_to_change(by, tenant, project).await?;
        if budget.is_some_and(|b| b.micros() < 0) {
            return Err(AppError::invalid("monthly_limit", "a budget cannot be negative"));
        }
        self.store.set_project_budget(&t.id, &name, budget, self.now()).await?;
        tracing::info!(tenant = %t.name, project = %name, budget = ?budget, "project budget set");
        let all = self.store.list_projects(&t.id).await?;
        all.into_iter().find(|p| p.name == name).ok_or_else(|| {
            AppError::Store(gpucloud_store::StoreError::Corrupt { table: "projects", detail: "not read back".into() })
        })
    }

    /// Refuses new work in a project whose month's usage has reached its budget (402).
    pub(crate) async fn check_project_budget(&self, tenant: &TenantId, project: &ProjectName) -> Result<(), AppError> {
        let rows = self.store.list_projects(tenant).await?;
        match rows.into_iter().find(|p| p.name == *project).and_then(|p| p.monthly_budget) {
            Some(budget) => self.refuse_over_budget(tenant, project, budget).await,
            None => Ok(()),
        }
    }

    async fn refuse_over_budget(
        &self,
        tenant: &TenantId,
        project: &ProjectName,
        budget: gpucloud_model::Money,
    ) -> Result<(), AppError> {
        let from = super::billing::month_start(self.now());
        let spent: i64 = self
            .usage_of(
                tenant,
                Some(project),
                from,
                gpucloud_model::Timestamp(i64::MAX),
                super::billing::UsageGrouping::Project,
            )
            .await?
            .iter()
            .map(|l| l.amount.micros())
            .sum();
        if spent >= budget.micros() {
            return Err(AppError::PaymentRequired(format!(
                "project {project} has spent {} of its monthly budget of {budget}: raise it (project budget) or wait for next month",
                gpucloud_model::Money(spent)
            )));
        }
        Ok(())
    }

    /// A project's use per GPU model, with its quotas.
    pub async fn show_quota(
        &self,
        by: &Principal,
        tenant: Option<&str>,
        project: &str,
    ) -> Result<Vec<QuotaUse>, AppError> {
        let t = self.tenant_for(by, tenant).await?;
        let name = ProjectName::parse(project).map_err(|e| AppError::invalid("project", e))?;
        if !by.sees(&name) || !self.has_project(&t.id, &name).await? {
            return Err(AppError::NotFound { kind: "project", id: name.to_string() });
        }
        Ok(self.store.quota_use(&t.id, Some(&name)).await?)
    }

    /// Sets a project's quota on one model: an organization admin for its own projects, an
    /// operator for any tenant's.
    pub async fn set_quota(
        &self,
        by: &Principal,
        tenant: Option<&str>,
        project: &str,
        gpu: &str,
        limit: u32,
        guaranteed: Option<u32>,
    ) -> Result<QuotaUse, AppError> {
        let (t, name) = self.project_to_change(by, tenant, project).await?;
        let model = parse_model(gpu)?;
        if limit > MAX_QUOTA_GPUS {
            return Err(AppError::invalid("limit", format!("a limit is at most {MAX_QUOTA_GPUS} GPUs, got {limit}")));
        }
        let guaranteed = guaranteed.unwrap_or(0);
        if guaranteed > limit {
            return Err(AppError::invalid(
                "guaranteed",
                format!("guaranteed ({guaranteed}) cannot exceed the limit ({limit})"),
            ));
        }
        let q = Quota {
            tenant_id: t.id.clone(),
            project: name.clone(),
            model,
            limit_milli: u64::from(limit) * 1000,
            guaranteed_milli: u64::from(guaranteed) * 1000,
            updated_at: self.now(),
        };
        self.store.set_quota(&q).await?;
        tracing::info!(tenant = %t.name, project = %name, gpu = %model, limit, guaranteed, "quota set");
        // A raised limit lets held requests in at once rather than at the next pass.
        self.wake_scheduler();
        let now = self.store.quota_use(&t.id, Some(&name)).await?;
        now.into_iter().find(|u| u.model == model).ok_or_else(|| {
            AppError::Store(gpucloud_store::StoreError::Corrupt {
                table: "project_quotas",
                detail: "quota not read back".into(),
            })
        })
    }

    /// Refuses work of `milli` more thousandths of a GPU the project has no room for. Read
    /// outside the insert's transaction: for what is inserted later (a cluster's members), which
    /// then wait rather than fail if a concurrent create took the room meanwhile.
    pub(crate) async fn check_quota_room(
        &self,
        tenant: &TenantId,
        project: &ProjectName,
        model: GpuModel,
        milli: u64,
    ) -> Result<(), AppError> {
        let uses = self.store.quota_use(tenant, Some(project)).await?;
        let Some(u) = uses.iter().find(|u| u.model == model) else { return Ok(()) };
        let Some(q) = &u.quota else { return Ok(()) };
        if u.used_milli + milli <= q.limit_milli {
            return Ok(());
        }
        Err(AppError::QuotaExceeded(gpucloud_store::QuotaRefusal {
            project: project.clone(),
            model,
            used_milli: u.used_milli,
            asked_milli: milli,
            limit_milli: q.limit_milli,
        }))
    }

    /// Removes a project's quota on one model (its work is no longer limited).
    pub async fn delete_quota(
        &self,
        by: &Principal,
        tenant: Option<&str>,
        project: &str,
        gpu: &str,
    ) -> Result<(), AppError> {
        let (t, name) = self.project_to_change(by, tenant, project).await?;
        let model = parse_model(gpu)?;
        if !self.store.delete_quota(&t.id, &name, model).await? {
            return Err(AppError::NotFound { kind: "quota", id: format!("{name}/{model}") });
        }
        self.wake_scheduler();
        Ok(())
    }
}

fn parse_model(gpu: &str) -> Result<GpuModel, AppError> {
    gpu.parse::<GpuModel>().map_err(|e| AppError::invalid("gpu", e.to_string()))
}
