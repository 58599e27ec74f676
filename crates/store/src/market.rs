//! Persistence of the market: spot price history, preemption notices, checkpoints and managed
//! jobs. Kept apart from `sql.rs`, behind its own trait that every `Store` also implements.

use crate::sql::{GpuFilter, INSTANCE_COLUMNS, SqlStore, corrupt, instance_from_row, parse, unique_violation};
use crate::{Checkpoint, Instance, Job, JobState, Notice, Result, Sale};
use async_trait::async_trait;
use gpucloud_billing::PricePoint;
use gpucloud_model::{GpuModel, InstanceId, JobId, Money, Region, TenantId, Tier, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A job's new state, written only if the job is still at the generation it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobChange {
    pub state: JobState,
    pub attempts: u32,
    pub reason: Option<String>,
    pub at: Timestamp,
}

#[async_trait]
pub trait MarketStore: Send + Sync {
    /// Gives an instance that holds GPUs a preemption notice; false if it already has one or no
    /// longer holds GPUs (nothing written). Not a state change: the generation stays.
    async fn give_notice(&self, id: &InstanceId, notice_ms: i64, reason: &str, at: Timestamp) -> Result<bool>;
    /// Starts the clock of the notices an agent carries to its node now: each deadline becomes
    /// `at` + its notice, once (a notice already delivered keeps its deadline).
    async fn deliver_notices(&self, ids: &[InstanceId], at: Timestamp) -> Result<()>;
    /// Instances still holding GPUs whose notice is due: past the deadline, or never delivered
    /// and `undelivered_grace_ms` past the time it would have ended.
    async fn due_notices(&self, now: Timestamp, undelivered_grace_ms: i64) -> Result<Vec<Instance>>;
    /// Records the latest checkpoint of an instance, and of its job if it is an attempt of one.
    async fn record_checkpoint(&self, id: &InstanceId, path: &str, at: Timestamp) -> Result<()>;
    /// Spot instances that hold GPUs, with their GPUs.
    async fn spot_holders(&self) -> Result<Vec<Instance>>;
    /// Spot and reserved instances that are pending or hold GPUs: what reservations are
    /// measured against.
    async fn market_instances(&self) -> Result<Vec<Instance>>;
    /// The price in force at `at`.
    async fn price_at(&self, model: GpuModel, region: &Region, tier: Tier, at: Timestamp)
    -> Result<Option<PricePoint>>;
    /// Price points from `from` (and the one in force then), oldest first, at most `limit`.
    async fn price_history(
        &self,
        model: GpuModel,
        region: &Region,
        tier: Tier,
        from: Timestamp,
        limit: u32,
    ) -> Result<Vec<PricePoint>>;

    /// Inserts a job, or returns the one its tenant created with the same idempotency key; the
    /// bool says whether this call created it.
    async fn insert_job(&self, job: &Job) -> Result<(Job, bool)>;
    /// `tenant: None` is the operator's view.
    async fn get_job(&self, tenant: Option<&TenantId>, id: &JobId) -> Result<Option<Job>>;
    async fn list_jobs(&self, tenant: &TenantId) -> Result<Vec<Job>>;
    async fn active_jobs(&self) -> Result<Vec<Job>>;
    /// Compare-and-set on the job's generation; `None` if it changed meanwhile.
    async fn update_job(&self, id: &JobId, expected_generation: i64, change: &JobChange) -> Result<Option<Job>>;
    /// The instances launched for a job, first attempt first.
    async fn job_attempts(&self, id: &JobId) -> Result<Vec<Instance>>;
}

pub(crate) fn encode_env(env: &[(String, String)]) -> Option<String> {
    (!env.is_empty()).then(|| env.iter().map(|(k, v)| format!("{k}={v}\n")).collect())
}

pub(crate) fn encode_ports(ports: &[gpucloud_model::PortSpec]) -> Option<String> {
    (!ports.is_empty()).then(|| ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","))
}

pub(crate) fn encode_published(published: &[(u16, u16)]) -> Option<String> {
    (!published.is_empty()).then(|| published.iter().map(|(c, h)| format!("{c}={h}")).collect::<Vec<_>>().join(","))
}

pub(crate) fn decode_published(text: Option<String>) -> Vec<(u16, u16)> {
    text.unwrap_or_default()
        .split(',')
        .filter_map(|p| {
            let (c, h) = p.split_once('=')?;
            Some((c.parse().ok()?, h.parse().ok()?))
        })
        .collect()
}

pub(crate) fn decode_env(text: Option<String>) -> Vec<(String, String)> {
    text.unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

pub(crate) fn decode_ports(table: &'static str, text: Option<String>) -> Result<Vec<gpucloud_model::PortSpec>> {
    text.unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| parse::<gpucloud_model::PortSpec>(table, p))
        .collect()
}

pub(crate) fn sale_from_row(r: &AnyRow) -> Result<Sale> {
    let t = "instances";
    let env = decode_env(r.try_get("env")?);
    let job: Option<String> = r.try_get("job_id")?;
    let attempt: Option<i64> = r.try_get("attempt")?;
    let job = match job {
        Some(j) => Some((parse::<JobId>(t, &j)?, attempt.unwrap_or(1).max(1) as u32)),
        None => None,
    };
    let cluster: Option<String> = r.try_get("cluster_id")?;
    let rank: Option<i64> = r.try_get("cluster_rank")?;
    let cluster = match cluster {
        Some(c) => Some((parse::<gpucloud_model::ClusterId>(t, &c)?, rank.unwrap_or(0).max(0) as u32)),
        None => None,
    };
    let pool: Option<String> = r.try_get("pool_id")?;
    let ports = decode_ports(t, r.try_get("ports")?)?;
    let volume = match (r.try_get::<Option<String>, _>("volume_id")?, r.try_get::<Option<String>, _>("volume_mount")?) {
        (Some(v), Some(m)) => {
            Some((parse::<gpucloud_model::VolumeId>(t, &v)?, parse::<gpucloud_model::VolumeMount>(t, &m)?))
        }
        _ => None,
    };
    Ok(Sale {
        volume,
        image: r.try_get("image")?,
        ports,
        pool: pool.map(|p| parse::<gpucloud_model::PoolId>(t, &p)).transpose()?,
        tier: parse::<Tier>(t, &r.try_get::<String, _>("tier")?)?,
        max_price: r.try_get::<Option<i64>, _>("max_price_micros")?.map(Money),
        env,
        job,
        cluster,
        project: parse(t, &r.try_get::<String, _>("project")?)?,
        on_quota: if r.try_get::<i64, _>("quota_held")? == 1 {
            gpucloud_model::OnQuota::Wait
        } else {
            gpucloud_model::OnQuota::Fail
        },
        priority: parse(t, &r.try_get::<String, _>("priority")?)?,
    })
}

pub(crate) fn notice_from_row(r: &AnyRow) -> Result<Option<Notice>> {
    let Some(given) = r.try_get::<Option<i64>, _>("notice_at")? else { return Ok(None) };
    Ok(Some(Notice {
        given_at: Timestamp(given),
        notice_ms: r.try_get::<Option<i64>, _>("notice_ms")?.unwrap_or(0),
        reason: r.try_get::<Option<String>, _>("notice_reason")?.unwrap_or_default(),
        deadline: r.try_get::<Option<i64>, _>("preempt_at")?.map(Timestamp),
    }))
}

pub(crate) fn checkpoint_from_row(r: &AnyRow) -> Result<Option<Checkpoint>> {
    let path: Option<String> = r.try_get("checkpoint")?;
    Ok(path.map(|path| Checkpoint {
        path,
        at: Timestamp(r.try_get::<Option<i64>, _>("checkpoint_at").ok().flatten().unwrap_or(0)),
    }))
}

const JOB_COLUMNS: &str = "id, tenant_id, name, spec, state, attempts, checkpoint, reason, generation, idempotency_key, created_at, updated_at";

fn job_from_row(r: &AnyRow) -> Result<Job> {
    let t = "jobs";
    Ok(Job {
        id: parse(t, &r.try_get::<String, _>(0)?)?,
        tenant_id: parse(t, &r.try_get::<String, _>(1)?)?,
        name: r.try_get(2)?,
        spec: r.try_get(3)?,
        state: parse::<JobState>(t, &r.try_get::<String, _>(4)?)?,
        attempts: r.try_get::<i64, _>(5)?.max(0) as u32,
        checkpoint: r.try_get(6)?,
        reason: r.try_get(7)?,
        generation: r.try_get(8)?,
        idempotency_key: r.try_get(9)?,
        created_at: Timestamp(r.try_get(10)?),
        updated_at: Timestamp(r.try_get(11)?),
    })
}

fn point_from_row(r: &AnyRow) -> Result<PricePoint> {
    Ok(PricePoint { effective_from: Timestamp(r.try_get(0)?), per_gpu_hour: Money(r.try_get(1)?) })
}

#[async_trait]
impl MarketStore for SqlStore {
    async fn give_notice(&self, id: &InstanceId, notice_ms: i64, reason: &str, at: Timestamp) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE instances SET notice_at = $1, notice_ms = $2, notice_reason = $3 \
             WHERE id = $4 AND notice_at IS NULL AND state IN ('provisioning', 'running')",
        )
        .bind(at.0)
        .bind(notice_ms)
        .bind(reason)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn deliver_notices(&self, ids: &[InstanceId], at: Timestamp) -> Result<()> {
        for id in ids {
            sqlx::query(
                "UPDATE instances SET preempt_at = $1 + notice_ms \
                 WHERE id = $2 AND notice_at IS NOT NULL AND preempt_at IS NULL",
            )
            .bind(at.0)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    async fn due_notices(&self, now: Timestamp, undelivered_grace_ms: i64) -> Result<Vec<Instance>> {
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE state IN ('provisioning', 'running') \
             AND notice_at IS NOT NULL AND (preempt_at <= $1 OR (preempt_at IS NULL AND notice_at + notice_ms <= $2)) \
             ORDER BY notice_at"
        );
        let rows = sqlx::query(&sql).bind(now.0).bind(now.0 - undelivered_grace_ms).fetch_all(&self.pool).await?;
        rows.iter().map(instance_from_row).collect()
    }

    async fn record_checkpoint(&self, id: &InstanceId, path: &str, at: Timestamp) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE instances SET checkpoint = $1, checkpoint_at = $2 WHERE id = $3")
            .bind(path)
            .bind(at.0)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        // Not a job state change: the job's generation stays, so the reconciler never races it.
        sqlx::query(
            "UPDATE jobs SET checkpoint = $1 WHERE state = 'running' AND id = (SELECT job_id FROM instances WHERE id = $2)",
        )
        .bind(path)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn spot_holders(&self) -> Result<Vec<Instance>> {
        self.instances_where(
            "WHERE tier = 'spot' AND state IN ('provisioning', 'running', 'stopping') ORDER BY created_at, id",
            None,
            GpuFilter::All,
        )
        .await
    }

    async fn market_instances(&self) -> Result<Vec<Instance>> {
        self.instances_where(
            "WHERE tier IN ('spot', 'reserved') AND state IN ('pending', 'provisioning', 'running', 'stopping') \
             ORDER BY created_at, id",
            None,
            GpuFilter::All,
        )
        .await
    }

    async fn price_at(
        &self,
        model: GpuModel,
        region: &Region,
        tier: Tier,
        at: Timestamp,
    ) -> Result<Option<PricePoint>> {
        let row = sqlx::query(
            "SELECT effective_from, per_gpu_hour_micros FROM prices \
             WHERE gpu_model = $1 AND region = $2 AND tier = $3 AND effective_from <= $4 \
             ORDER BY effective_from DESC LIMIT 1",
        )
        .bind(model.name())
        .bind(region.to_string())
        .bind(tier.as_str())
        .bind(at.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(point_from_row).transpose()
    }

    async fn price_history(
        &self,
        model: GpuModel,
        region: &Region,
        tier: Tier,
        from: Timestamp,
        limit: u32,
    ) -> Result<Vec<PricePoint>> {
        // The point in force at `from` is dated `from`: a window starts where it was asked to,
        // not at whenever that price was first set (for a seeded book, the epoch).
        let first = self
            .price_at(model, region, tier, from)
            .await?
            .map(|p| PricePoint { effective_from: p.effective_from.max(from), ..p });
        let rows = sqlx::query(&format!(
            "SELECT effective_from, per_gpu_hour_micros FROM prices \
             WHERE gpu_model = $1 AND region = $2 AND tier = $3 AND effective_from > $4 \
             ORDER BY effective_from LIMIT {limit}"
        ))
        .bind(model.name())
        .bind(region.to_string())
        .bind(tier.as_str())
        .bind(from.0)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<PricePoint> = first.into_iter().collect();
        for r in &rows {
            out.push(point_from_row(r)?);
        }
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn insert_job(&self, job: &Job) -> Result<(Job, bool)> {
        let r = sqlx::query(&format!(
            "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING"
        ))
        .bind(job.id.to_string())
        .bind(job.tenant_id.to_string())
        .bind(&job.name)
        .bind(&job.spec)
        .bind(job.state.as_str())
        .bind(i64::from(job.attempts))
        .bind(job.checkpoint.clone())
        .bind(job.reason.clone())
        .bind(job.generation)
        .bind(job.idempotency_key.clone())
        .bind(job.created_at.0)
        .bind(job.updated_at.0)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, &format!("job {}", job.id)))?;
        if r.rows_affected() == 1 {
            return Ok((job.clone(), true));
        }
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2"))
            .bind(job.tenant_id.to_string())
            .bind(job.idempotency_key.clone().unwrap_or_default())
            .fetch_optional(&self.pool)
            .await?;
        let row = row.ok_or_else(|| corrupt("jobs", format!("{} vanished after insert", job.id)))?;
        Ok((job_from_row(&row)?, false))
    }

    async fn get_job(&self, tenant: Option<&TenantId>, id: &JobId) -> Result<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND ($2 = '' OR tenant_id = $2)"))
            .bind(id.to_string())
            .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn list_jobs(&self, tenant: &TenantId) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 ORDER BY created_at, id"))
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn active_jobs(&self) -> Result<Vec<Job>> {
        let rows =
            sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' ORDER BY created_at, id"))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn update_job(&self, id: &JobId, expected_generation: i64, c: &JobChange) -> Result<Option<Job>> {
        let r = sqlx::query(
            "UPDATE jobs SET state = $1, attempts = $2, reason = $3, updated_at = $4, generation = generation + 1 \
             WHERE id = $5 AND generation = $6",
        )
        .bind(c.state.as_str())
        .bind(i64::from(c.attempts))
        .bind(c.reason.clone())
        .bind(c.at.0)
        .bind(id.to_string())
        .bind(expected_generation)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        self.get_job(None, id).await
    }

    async fn job_attempts(&self, id: &JobId) -> Result<Vec<Instance>> {
        self.instances_where("WHERE job_id = $1 ORDER BY attempt, created_at", Some(id.to_string()), GpuFilter::All)
            .await
    }
}
