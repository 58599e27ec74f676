//! Projects and their GPU quotas: the rows, the admission check every instance insert makes in
//! its own transaction, and the pass that lets held ("wait for quota") instances in.

use crate::sql::{SqlStore, parse, unique_violation};
use crate::{Result, StoreError};
use async_trait::async_trait;
use gpucloud_model::{GpuModel, InstanceId, OnQuota, Priority, ProjectName, TenantId, Timestamp};
use sqlx::Row;

/// A project a tenant made (`default` has no row: every tenant has it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub tenant_id: TenantId,
    pub name: ProjectName,
    /// The highest priority class its work may ask for.
    pub max_priority: Priority,
    pub created_at: Timestamp,
    /// Its monthly spending limit: creates are refused once the month's usage reaches it.
    pub monthly_budget: Option<gpucloud_model::Money>,
}

/// A project's limit on one GPU model, in thousandths of a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub tenant_id: TenantId,
    pub project: ProjectName,
    pub model: GpuModel,
    pub limit_milli: u64,
    pub guaranteed_milli: u64,
    pub updated_at: Timestamp,
}

/// What a project holds or has queued of one model, with its quota where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUse {
    pub project: ProjectName,
    pub model: GpuModel,
    pub quota: Option<Quota>,
    /// Counted against the limit: pending (not held), provisioning, running, stopping.
    pub used_milli: u64,
    /// Held back until there is room.
    pub waiting_milli: u64,
    pub waiting: u32,
}

/// Why an instance was not admitted (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRefusal {
    pub project: ProjectName,
    pub model: GpuModel,
    pub used_milli: u64,
    pub asked_milli: u64,
    pub limit_milli: u64,
}

impl std::fmt::Display for QuotaRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "project {} is at its {} limit: {}/{} GPUs in use or queued, this asks for {}",
            self.project,
            self.model,
            gpus(self.used_milli),
            gpus(self.limit_milli),
            gpus(self.asked_milli)
        )
    }
}

/// Thousandths of a GPU as people read them: `8`, `2.5`.
pub fn gpus(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        let s = format!("{}.{:03}", milli / 1000, milli % 1000);
        s.trim_end_matches('0').to_string()
    }
}

#[async_trait]
pub trait ProjectStore: Send + Sync {
    /// A new project; `Conflict` if the tenant has one of that name.
    async fn create_project(&self, p: &Project) -> Result<()>;
    /// The projects a tenant made, by name.
    async fn list_projects(&self, tenant: &TenantId) -> Result<Vec<Project>>;
    /// Sets or clears a project's monthly budget (`default` gets a row by it, if it had none).
    async fn set_project_budget(
        &self,
        tenant: &TenantId,
        project: &ProjectName,
        budget: Option<gpucloud_model::Money>,
        at: Timestamp,
    ) -> Result<()>;
    /// Sets (or replaces) a project's quota on one model.
    async fn set_quota(&self, q: &Quota) -> Result<()>;
    /// Removes a project's quota on one model; false if it had none.
    async fn delete_quota(&self, tenant: &TenantId, project: &ProjectName, model: GpuModel) -> Result<bool>;
    /// Per model a project (or, `None`, every project of the tenant) holds, queues or has a
    /// quota on: its use and quota, by project then model.
    async fn quota_use(&self, tenant: &TenantId, project: Option<&ProjectName>) -> Result<Vec<QuotaUse>>;
    /// Every project that holds GPUs or has a guarantee: (tenant, project) with the thousandths
    /// of a GPU it holds (provisioning, running, stopping; any model) and its guarantees summed.
    async fn project_shares(&self) -> Result<Vec<(TenantId, ProjectName, u64, u64)>>;
    /// Lets held instances in, oldest first, while their project has room (a limit removed lets
    /// all in); their pending reason says how far the others are. The instances let in.
    async fn admit_held(&self, at: Timestamp) -> Result<Vec<InstanceId>>;
}

#[async_trait]
impl ProjectStore for SqlStore {
    async fn create_project(&self, p: &Project) -> Result<()> {
        sqlx::query(
            "INSERT INTO projects (tenant_id, name, max_priority, created_at, monthly_budget_micros) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(p.tenant_id.to_string())
        .bind(p.name.as_str())
        .bind(p.max_priority.as_str())
        .bind(p.created_at.0)
        .bind(p.monthly_budget.map(|m| m.micros()))
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, &format!("project '{}'", p.name)))?;
        Ok(())
    }

    async fn list_projects(&self, tenant: &TenantId) -> Result<Vec<Project>> {
        let rows =
            sqlx::query("SELECT name, created_at, max_priority, monthly_budget_micros FROM projects WHERE tenant_id = $1 ORDER BY name")
                .bind(tenant.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(Project {
                    tenant_id: tenant.clone(),
                    name: parse("projects", &r.try_get::<String, _>(0)?)?,
                    created_at: Timestamp(r.try_get(1)?),
                    max_priority: parse("projects", &r.try_get::<String, _>(2)?)?,
                    monthly_budget: r.try_get::<Option<i64>, _>(3)?.map(gpucloud_model::Money),
                })
            })
            .collect()
    }

    async fn set_project_budget(
        &self,
        tenant: &TenantId,
        project: &ProjectName,
        budget: Option<gpucloud_model::Money>,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO projects (tenant_id, name, max_priority, created_at, monthly_budget_micros) \
             VALUES ($1, $2, 'production', $3, $4) ON CONFLICT (tenant_id, name) DO UPDATE SET \
             monthly_budget_micros = excluded.monthly_budget_micros",
        )
        .bind(tenant.to_string())
        .bind(project.as_str())
        .bind(at.0)
        .bind(budget.map(|m| m.micros()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_quota(&self, q: &Quota) -> Result<()> {
        sqlx::query(
            "INSERT INTO project_quotas (tenant_id, project, gpu_model, limit_milli, guaranteed_milli, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, project, gpu_model) DO UPDATE SET \
             limit_milli = excluded.limit_milli, guaranteed_milli = excluded.guaranteed_milli, \
             updated_at = excluded.updated_at",
        )
        .bind(q.tenant_id.to_string())
        .bind(q.project.as_str())
        .bind(q.model.name())
        .bind(q.limit_milli as i64)
        .bind(q.guaranteed_milli as i64)
        .bind(q.updated_at.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_quota(&self, tenant: &TenantId, project: &ProjectName, model: GpuModel) -> Result<bool> {
        let r = sqlx::query("DELETE FROM project_quotas WHERE tenant_id = $1 AND project = $2 AND gpu_model = $3")
            .bind(tenant.to_string())
            .bind(project.as_str())
            .bind(model.name())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn quota_use(&self, tenant: &TenantId, project: Option<&ProjectName>) -> Result<Vec<QuotaUse>> {
        let want = project.map(|p| p.as_str().to_string()).unwrap_or_default();
        let rows = sqlx::query(&format!(
            "SELECT project, gpu_model, \
             CAST(COALESCE(SUM(CASE WHEN quota_held = 0 THEN gpu_milli * gpu_count ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN quota_held = 1 THEN gpu_milli * gpu_count ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(quota_held), 0) AS BIGINT) \
             FROM instances WHERE tenant_id = $1 AND ($2 = '' OR project = $2) AND state IN {COUNTED} \
             GROUP BY project, gpu_model"
        ))
        .bind(tenant.to_string())
        .bind(&want)
        .fetch_all(&self.pool)
        .await?;
        let mut out: std::collections::BTreeMap<(String, String), QuotaUse> = Default::default();
        for r in &rows {
            let project: String = r.try_get(0)?;
            let model: String = r.try_get(1)?;
            out.insert(
                (project.clone(), model.clone()),
                QuotaUse {
                    project: parse("instances", &project)?,
                    model: parse("instances", &model)?,
                    quota: None,
                    used_milli: r.try_get::<i64, _>(2)?.max(0) as u64,
                    waiting_milli: r.try_get::<i64, _>(3)?.max(0) as u64,
                    waiting: r.try_get::<i64, _>(4)?.max(0) as u32,
                },
            );
        }
        let quotas = sqlx::query(
            "SELECT project, gpu_model, limit_milli, guaranteed_milli, updated_at FROM project_quotas \
             WHERE tenant_id = $1 AND ($2 = '' OR project = $2)",
        )
        .bind(tenant.to_string())
        .bind(&want)
        .fetch_all(&self.pool)
        .await?;
        for r in &quotas {
            let project: String = r.try_get(0)?;
            let model: String = r.try_get(1)?;
            let q = Quota {
                tenant_id: tenant.clone(),
                project: parse("project_quotas", &project)?,
                model: parse("project_quotas", &model)?,
                limit_milli: r.try_get::<i64, _>(2)?.max(0) as u64,
                guaranteed_milli: r.try_get::<i64, _>(3)?.max(0) as u64,
                updated_at: Timestamp(r.try_get(4)?),
            };
            let (name, gpu) = (q.project.clone(), q.model);
            out.entry((project, model))
                .or_insert_with(|| QuotaUse {
                    project: name,
                    model: gpu,
                    quota: None,
                    used_milli: 0,
                    waiting_milli: 0,
                    waiting: 0,
                })
                .quota = Some(q);
        }
        Ok(out.into_values().collect())
    }

    async fn project_shares(&self) -> Result<Vec<(TenantId, ProjectName, u64, u64)>> {
        let held = sqlx::query(
            "SELECT tenant_id, project, CAST(SUM(gpu_milli * gpu_count) AS BIGINT) FROM instances \
             WHERE state IN ('provisioning', 'running', 'stopping') GROUP BY tenant_id, project",
        )
        .fetch_all(&self.pool)
        .await?;
        let deserved = sqlx::query(
            "SELECT tenant_id, project, CAST(SUM(guaranteed_milli) AS BIGINT) FROM project_quotas \
             GROUP BY tenant_id, project",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: std::collections::BTreeMap<(String, String), (u64, u64)> = Default::default();
        for (rows, second) in [(&held, false), (&deserved, true)] {
            for r in rows.iter() {
                let v = r.try_get::<i64, _>(2)?.max(0) as u64;
                let e = out.entry((r.try_get(0)?, r.try_get(1)?)).or_default();
                if second { e.1 = v } else { e.0 = v }
            }
        }
        out.into_iter()
            .map(|((t, p), (used, weight))| Ok((parse("instances", &t)?, parse("instances", &p)?, used, weight)))
            .collect()
    }

    async fn admit_held(&self, at: Timestamp) -> Result<Vec<InstanceId>> {
        let groups = sqlx::query(
            "SELECT DISTINCT tenant_id, project, gpu_model FROM instances WHERE quota_held = 1 AND state = 'pending'",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut admitted = Vec::new();
        for g in &groups {
            let tenant: String = g.try_get(0)?;
            let project: String = g.try_get(1)?;
            let model: String = g.try_get(2)?;
            let mut tx = self.pool.begin().await?;
            let limit = lock_quota(&mut tx, &tenant, &project, &model).await?;
            let mut used = counted_milli(&mut tx, &tenant, &project, &model).await?;
            let held = sqlx::query(
                "SELECT id, gpu_milli * gpu_count FROM instances WHERE tenant_id = $1 AND project = $2 \
                 AND gpu_model = $3 AND quota_held = 1 AND state = 'pending' ORDER BY created_at, id",
            )
            .bind(&tenant)
            .bind(&project)
            .bind(&model)
            .fetch_all(&mut *tx)
            .await?;
            // Oldest first, and no overtaking: a big request at the head is not starved by
            // small ones behind it.
            let mut blocked = false;
            for (ahead, h) in held.iter().enumerate() {
                let id: String = h.try_get(0)?;
                let milli = h.try_get::<i64, _>(1)?.max(0) as u64;
                let fits = limit.is_none_or(|l| used + milli <= l);
                if fits && !blocked {
                    sqlx::query(
                        "UPDATE instances SET quota_held = 0, pending_reason = NULL, updated_at = $2 WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(at.0)
                    .execute(&mut *tx)
                    .await?;
                    used += milli;
                    admitted.push(parse("instances", &id)?);
                } else {
                    blocked = true;
                    let reason = held_reason(&project, &model, used, limit.unwrap_or(0), ahead);
                    sqlx::query("UPDATE instances SET pending_reason = $2 WHERE id = $1")
                        .bind(&id)
                        .bind(reason)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        }
        Ok(admitted)
    }
}

/// The states whose GPUs count against a project's limit.
const COUNTED: &str = "('pending', 'provisioning', 'running', 'stopping')";

fn held_reason(project: &str, model: &str, used: u64, limit: u64, ahead: usize) -> String {
    let mut s =
        format!("waiting for quota: project {project} is at its {model} limit {}/{} GPUs", gpus(used), gpus(limit));
    if ahead > 0 {
        s.push_str(&format!(", {ahead} held request(s) ahead"));
    }
    s
}

/// Takes the quota row's lock for the rest of the transaction (PostgreSQL: a row lock; SQLite:
/// the write lock), so admissions against one limit are counted one after the other. The
/// limit, or `None` when the project has no quota on the model.
async fn lock_quota(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    project: &str,
    model: &str,
) -> Result<Option<u64>> {
    let limit: Option<i64> = sqlx::query_scalar(
        "UPDATE project_quotas SET limit_milli = limit_milli WHERE tenant_id = $1 AND project = $2 AND gpu_model = $3 \
         RETURNING limit_milli",
    )
    .bind(tenant)
    .bind(project)
    .bind(model)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(limit.map(|l| l.max(0) as u64))
}

/// What a project holds or has queued (not held) of a model, as this transaction sees it.
async fn counted_milli(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    project: &str,
    model: &str,
) -> Result<u64> {
    let used: i64 = sqlx::query_scalar(&format!(
        "SELECT CAST(COALESCE(SUM(gpu_milli * gpu_count), 0) AS BIGINT) FROM instances \
         WHERE tenant_id = $1 AND project = $2 AND gpu_model = $3 AND quota_held = 0 AND state IN {COUNTED}"
    ))
    .bind(tenant)
    .bind(project)
    .bind(model)
    .fetch_one(&mut **tx)
    .await?;
    Ok(used.max(0) as u64)
}

/// The admission check of an instance just written (pending, counted) in `tx`: within its
/// project's limit it stays; over it, `Wait` holds it back with the reason, `Fail` refuses
/// (the caller's transaction then writes nothing).
pub(crate) async fn admit_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &InstanceId,
    tenant: &TenantId,
    project: &ProjectName,
    model: GpuModel,
    milli: u64,
    on_quota: OnQuota,
) -> Result<()> {
    let (tenant, model_name) = (tenant.to_string(), model.name());
    let Some(limit) = lock_quota(tx, &tenant, project.as_str(), model_name).await? else { return Ok(()) };
    let used = counted_milli(tx, &tenant, project.as_str(), model_name).await?;
    let over = used > limit;
    let before = used - milli.min(used);
    match on_quota {
        OnQuota::Fail if over => Err(StoreError::QuotaExceeded(QuotaRefusal {
            project: project.clone(),
            model,
            used_milli: before,
            asked_milli: milli,
            limit_milli: limit,
        })),
        OnQuota::Fail => Ok(()),
        OnQuota::Wait => {
            // Held requests go first: one that would fit does not overtake them.
            let ahead: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM instances WHERE tenant_id = $1 AND project = $2 AND gpu_model = $3 \
                 AND quota_held = 1 AND state = 'pending'",
            )
            .bind(&tenant)
            .bind(project.as_str())
            .bind(model_name)
            .fetch_one(&mut **tx)
            .await?;
            if !over && ahead == 0 {
                return Ok(());
            }
            sqlx::query("UPDATE instances SET quota_held = 1, pending_reason = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(held_reason(project.as_str(), model_name, before, limit, ahead.max(0) as usize))
                .execute(&mut **tx)
                .await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gpus;

    #[test]
    fn gpu_counts_read_plainly() {
        assert_eq!(gpus(8000), "8");
        assert_eq!(gpus(2500), "2.5");
        assert_eq!(gpus(250), "0.25");
        assert_eq!(gpus(0), "0");
    }
}
