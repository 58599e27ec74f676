//! Monitoring history: GPU samples (the infrastructure tier, and through each sample's holder the
//! framework tier), revenue over time, and the pruning that keeps both inside their retention.

use crate::Result;
use crate::sql::SqlStore;
use async_trait::async_trait;
use gpucloud_model::{InstanceId, NodeId, Timestamp};
use sqlx::Row;

/// One GPU's reading at one time, as held by one instance (or none).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    pub node_id: NodeId,
    pub gpu_index: u32,
    pub at: Timestamp,
    /// The instance holding the GPU (whole or a slice of it) when the sample was taken.
    pub instance: Option<InstanceId>,
    pub temperature_c: f64,
    pub power_w: f64,
    pub energy_mj: i64,
    pub memory_used_mib: i64,
    pub utilization_pct: f64,
    pub xid: Option<u32>,
    pub ecc_uncorrectable: i64,
}

/// One GPU over one time bucket: means of its samples, and the peaks that matter for alerts.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuBucket {
    /// The bucket's start.
    pub at: Timestamp,
    pub node_id: NodeId,
    pub gpu_index: u32,
    pub samples: u32,
    pub utilization_pct: f64,
    pub temperature_c: f64,
    pub max_temperature_c: f64,
    pub power_w: f64,
    pub memory_used_mib: f64,
}

/// The whole fleet over one time bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetBucket {
    pub at: Timestamp,
    /// Distinct GPUs that reported in the bucket.
    pub gpus: u32,
    /// Of those, GPUs held by an instance (whole or sliced).
    pub allocated: u32,
    pub utilization_pct: f64,
    pub max_temperature_c: f64,
    pub power_w: f64,
}

#[async_trait]
pub trait TelemetryStore: Send + Sync {
    /// Stores samples; a sample already stored (same node, GPU, time and holder) is kept as is.
    async fn insert_gpu_samples(&self, samples: &[GpuSample]) -> Result<()>;
    /// An instance's GPUs since `since`, averaged per `step_ms` bucket, oldest first.
    async fn instance_telemetry(&self, id: &InstanceId, since: Timestamp, step_ms: i64) -> Result<Vec<GpuBucket>>;
    /// The highest utilization any of an instance's GPUs reported since `since`, and the time of
    /// its first sample in that window (none without samples): what idle detection reads.
    async fn instance_peak_utilization(&self, id: &InstanceId, since: Timestamp) -> Result<Option<(f64, Timestamp)>>;
    /// Each GPU's latest sample at or after `since` (one per node and GPU).
    async fn latest_gpu_samples(&self, since: Timestamp) -> Result<Vec<GpuSample>>;
    /// The fleet since `since`, per `step_ms` bucket, oldest first.
    async fn fleet_telemetry(&self, since: Timestamp, step_ms: i64) -> Result<Vec<FleetBucket>>;
    /// Net revenue (usage less lending credits) booked per `step_ms` bucket since `since`.
    async fn revenue_series(&self, since: Timestamp, step_ms: i64) -> Result<Vec<(Timestamp, i64)>>;
    /// Deletes GPU samples older than `samples_before` and business metrics older than
    /// `metrics_before`; returns how many of each went.
    async fn prune_telemetry(&self, samples_before: Timestamp, metrics_before: Timestamp) -> Result<(u64, u64)>;
    async fn insert_metrics(&self, points: &[crate::MetricPoint]) -> Result<()>;
    /// An instance's points, oldest first: of one metric, or all; at most `limit`, the latest.
    async fn instance_metrics(
        &self,
        id: &InstanceId,
        name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<crate::MetricPoint>>;
}

fn check_step(step_ms: i64) -> i64 {
    // A zero or negative bucket would divide by zero in SQL; callers validate, this is the floor.
    step_ms.max(1)
}

#[async_trait]
impl TelemetryStore for SqlStore {
    async fn insert_gpu_samples(&self, samples: &[GpuSample]) -> Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        // Many rows a statement: a sample per GPU every interval is the fleet's largest write,
        // and one statement per row was most of its round trips. SQLite takes fewer bind
        // parameters a statement (999 in older builds) than PostgreSQL.
        let per_statement = match crate::Store::backend(self) {
            crate::Backend::Sqlite => 90,
            crate::Backend::Postgres => 1000,
        };
        let mut tx = self.pool.begin().await?;
        for chunk in samples.chunks(per_statement) {
            let values = crate::billing_rows::placeholders(chunk.len(), 11, 1);
            let sql = format!(
                "INSERT INTO gpu_samples (node_id, gpu_index, at, instance_id, temperature_c, power_w, energy_mj, \
                 memory_used_mib, utilization_pct, xid, ecc_uncorrectable) VALUES {values} ON CONFLICT DO NOTHING"
            );
            let mut q = sqlx::query(&sql);
            for s in chunk {
                q = q
                    .bind(s.node_id.to_string())
                    .bind(i64::from(s.gpu_index))
                    .bind(s.at.0)
                    .bind(s.instance.as_ref().map(|i| i.to_string()).unwrap_or_default())
                    .bind(s.temperature_c)
                    .bind(s.power_w)
                    .bind(s.energy_mj)
                    .bind(s.memory_used_mib)
                    .bind(s.utilization_pct)
                    .bind(s.xid.map(i64::from))
                    .bind(s.ecc_uncorrectable);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn instance_telemetry(&self, id: &InstanceId, since: Timestamp, step_ms: i64) -> Result<Vec<GpuBucket>> {
        let step = check_step(step_ms);
        let rows = sqlx::query(
            "SELECT (at / $3) * $3 AS bucket, node_id, gpu_index, COUNT(*), AVG(utilization_pct), \
             AVG(temperature_c), MAX(temperature_c), AVG(power_w), AVG(CAST(memory_used_mib AS DOUBLE PRECISION)) \
             FROM gpu_samples WHERE instance_id = $1 AND at >= $2 \
             GROUP BY bucket, node_id, gpu_index ORDER BY bucket, node_id, gpu_index",
        )
        .bind(id.to_string())
        .bind(since.0)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let node: String = r.try_get(1)?;
            out.push(GpuBucket {
                at: Timestamp(r.try_get(0)?),
                node_id: crate::sql::parse("gpu_samples", &node)?,
                gpu_index: r.try_get::<i64, _>(2)? as u32,
                samples: r.try_get::<i64, _>(3)? as u32,
                utilization_pct: r.try_get(4)?,
                temperature_c: r.try_get(5)?,
                max_temperature_c: r.try_get(6)?,
                power_w: r.try_get(7)?,
                memory_used_mib: r.try_get(8)?,
            });
        }
        Ok(out)
    }

    async fn instance_peak_utilization(&self, id: &InstanceId, since: Timestamp) -> Result<Option<(f64, Timestamp)>> {
        let row = sqlx::query(
            "SELECT MAX(utilization_pct), MIN(at) FROM gpu_samples WHERE instance_id = $1 AND at >= $2 HAVING COUNT(*) > 0",
        )
        .bind(id.to_string())
        .bind(since.0)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some((r.try_get(0)?, Timestamp(r.try_get(1)?)))),
            None => Ok(None),
        }
    }

    async fn latest_gpu_samples(&self, since: Timestamp) -> Result<Vec<GpuSample>> {
        let rows = sqlx::query(
            "SELECT s.node_id, s.gpu_index, s.at, s.instance_id, s.temperature_c, s.power_w, s.energy_mj, \
             s.memory_used_mib, s.utilization_pct, s.xid, s.ecc_uncorrectable FROM gpu_samples s \
             JOIN (SELECT node_id, gpu_index, MAX(at) AS at FROM gpu_samples WHERE at >= $1 GROUP BY node_id, gpu_index) m \
             ON s.node_id = m.node_id AND s.gpu_index = m.gpu_index AND s.at = m.at ORDER BY s.node_id, s.gpu_index",
        )
        .bind(since.0)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<GpuSample> = Vec::with_capacity(rows.len());
        for r in rows {
            let node: String = r.try_get(0)?;
            let gpu_index = r.try_get::<i64, _>(1)? as u32;
            let node_id: NodeId = crate::sql::parse("gpu_samples", &node)?;
            // A sliced GPU has a row per holder at that time: one reading is enough.
            if out.last().is_some_and(|l| l.node_id == node_id && l.gpu_index == gpu_index) {
                continue;
            }
            let instance: String = r.try_get(3)?;
            let xid: Option<i64> = r.try_get(9)?;
            out.push(GpuSample {
                node_id,
                gpu_index,
                at: Timestamp(r.try_get(2)?),
                instance: if instance.is_empty() { None } else { Some(crate::sql::parse("gpu_samples", &instance)?) },
                temperature_c: r.try_get(4)?,
                power_w: r.try_get(5)?,
                energy_mj: r.try_get(6)?,
                memory_used_mib: r.try_get(7)?,
                utilization_pct: r.try_get(8)?,
                xid: xid.map(|x| x as u32),
                ecc_uncorrectable: r.try_get(10)?,
            });
        }
        Ok(out)
    }

    async fn fleet_telemetry(&self, since: Timestamp, step_ms: i64) -> Result<Vec<FleetBucket>> {
        let step = check_step(step_ms);
        // One row per GPU per sample time first (a sliced GPU has a row per holder), then the
        // bucket's means over those.
        let rows = sqlx::query(
            "SELECT (at / $2) * $2 AS bucket, COUNT(DISTINCT node_id || ':' || CAST(gpu_index AS TEXT)), \
             COUNT(DISTINCT CASE WHEN held = 1 THEN node_id || ':' || CAST(gpu_index AS TEXT) END), \
             AVG(u), MAX(t), AVG(p) FROM ( \
               SELECT node_id, gpu_index, at, MAX(utilization_pct) AS u, MAX(temperature_c) AS t, MAX(power_w) AS p, \
                      MAX(CASE WHEN instance_id = '' THEN 0 ELSE 1 END) AS held \
               FROM gpu_samples WHERE at >= $1 GROUP BY node_id, gpu_index, at) per_gpu \
             GROUP BY bucket ORDER BY bucket",
        )
        .bind(since.0)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(FleetBucket {
                at: Timestamp(r.try_get(0)?),
                gpus: r.try_get::<i64, _>(1)? as u32,
                allocated: r.try_get::<i64, _>(2)? as u32,
                utilization_pct: r.try_get(3)?,
                max_temperature_c: r.try_get(4)?,
                power_w: r.try_get(5)?,
            });
        }
        Ok(out)
    }

    async fn revenue_series(&self, since: Timestamp, step_ms: i64) -> Result<Vec<(Timestamp, i64)>> {
        let step = check_step(step_ms);
        let rows = sqlx::query(
            "SELECT (e.created_at / $2) * $2 AS bucket, CAST(SUM(p.amount_micros) AS BIGINT) \
             FROM ledger_entries e JOIN ledger_postings p ON p.entry_id = e.id \
             WHERE p.account = 'revenue' AND e.created_at >= $1 GROUP BY bucket ORDER BY bucket",
        )
        .bind(since.0)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push((Timestamp(r.try_get(0)?), r.try_get(1)?));
        }
        Ok(out)
    }

    async fn prune_telemetry(&self, samples_before: Timestamp, metrics_before: Timestamp) -> Result<(u64, u64)> {
        let samples =
            sqlx::query("DELETE FROM gpu_samples WHERE at < $1").bind(samples_before.0).execute(&self.pool).await?;
        let metrics = sqlx::query("DELETE FROM instance_metrics WHERE at < $1")
            .bind(metrics_before.0)
            .execute(&self.pool)
            .await?;
        Ok((samples.rows_affected(), metrics.rows_affected()))
    }

    async fn insert_metrics(&self, points: &[crate::MetricPoint]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for p in points {
            sqlx::query(
                "INSERT INTO instance_metrics (instance_id, at, step, name, value) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(p.instance.to_string())
            .bind(p.at.0)
            .bind(p.step)
            .bind(&p.name)
            .bind(p.value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn instance_metrics(
        &self,
        id: &InstanceId,
        name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<crate::MetricPoint>> {
        let rows = sqlx::query(&format!(
            "SELECT at, step, name, value FROM instance_metrics WHERE instance_id = $1 AND ($2 = '' OR name = $2) \
             ORDER BY at DESC, name LIMIT {limit}"
        ))
        .bind(id.to_string())
        .bind(name.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows.iter().rev() {
            out.push(crate::MetricPoint {
                instance: id.clone(),
                at: Timestamp(r.try_get(0)?),
                step: r.try_get(1)?,
                name: r.try_get(2)?,
                value: r.try_get(3)?,
            });
        }
        Ok(out)
    }
}
