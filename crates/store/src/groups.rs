//! Persistence of groups of instances: clusters (resizable member sets, gang or replica) and warm
//! pools, with their members and the claim that hands a warm one out. Kept apart from the market,
//! behind its own trait that every `Store` also implements.

use crate::market::{decode_env, decode_ports, encode_env, encode_ports};
use crate::sql::{GpuFilter, INSTANCE_COLUMNS, SqlStore, corrupt, instance_from_row, parse, unique_violation};
use crate::{Cluster, Instance, Result, WarmPool};
use async_trait::async_trait;
use gpucloud_model::{ClusterId, InstanceId, Region, TenantId, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A cluster's or pool's `image, env, ports` columns.
fn member_workload_from_row(table: &'static str, r: &AnyRow) -> Result<crate::MemberWorkload> {
    Ok(crate::MemberWorkload {
        image: r.try_get("image")?,
        env: decode_env(r.try_get("env")?),
        ports: decode_ports(table, r.try_get("ports")?)?,
    })
}

const CLUSTER_COLUMNS: &str = "id, tenant_id, name, gpu_model, region, gpus_per_node, min_nodes, max_nodes, \
    target_nodes, command, tier, state, epoch, generation, created_at, updated_at, schedule, utc_offset_min, \
    autoscale_up_pct, autoscale_down_pct, autoscale_for_s, replicas_in, image, env, ports, project";

fn cluster_from_row(r: &AnyRow) -> Result<Cluster> {
    let t = "clusters";
    let region: Option<String> = r.try_get(4)?;
    Ok(Cluster {
        id: parse(t, &r.try_get::<String, _>(0)?)?,
        tenant_id: parse(t, &r.try_get::<String, _>(1)?)?,
        name: r.try_get(2)?,
        model: parse(t, &r.try_get::<String, _>(3)?)?,
        region: region.map(|v| Region::parse(&v).map_err(|e| corrupt(t, e))).transpose()?,
        gpus_per_node: r.try_get::<i64, _>(5)?.max(1) as u32,
        min_nodes: r.try_get::<i64, _>(6)?.max(1) as u32,
        max_nodes: r.try_get::<i64, _>(7)?.max(1) as u32,
        target_nodes: r.try_get::<i64, _>(8)?.max(0) as u32,
        command: r.try_get(9)?,
        tier: parse(t, &r.try_get::<String, _>(10)?)?,
        active: r.try_get::<String, _>(11)? == "active",
        epoch: r.try_get(12)?,
        generation: r.try_get(13)?,
        created_at: Timestamp(r.try_get(14)?),
        updated_at: Timestamp(r.try_get(15)?),
        schedule: r.try_get(16)?,
        utc_offset_min: r.try_get::<i64, _>(17)? as i32,
        autoscale: match (
            r.try_get::<Option<i64>, _>(18)?,
            r.try_get::<Option<i64>, _>(19)?,
            r.try_get::<Option<i64>, _>(20)?,
        ) {
            (Some(up), Some(down), Some(for_s)) => Some(crate::Autoscale {
                up_pct: up.clamp(0, 100) as u32,
                down_pct: down.clamp(0, 100) as u32,
                for_s: for_s.max(0) as u32,
            }),
            _ => None,
        },
        replicas_in: r
            .try_get::<Option<String>, _>(21)?
            .unwrap_or_default()
            .split(',')
            .filter(|v| !v.is_empty())
            .map(|v| Region::parse(v).map_err(|e| corrupt(t, e)))
            .collect::<Result<_>>()?,
        workload: member_workload_from_row(t, r)?,
        project: parse(t, &r.try_get::<String, _>("project")?)?,
    })
}

const POOL_COLUMNS: &str = "id, tenant_id, name, gpu_model, region, gpu_count, command, size, created_at, schedule, utc_offset_min, image, env, ports, project";

fn pool_from_row(r: &AnyRow) -> Result<WarmPool> {
    let t = "warm_pools";
    let region: Option<String> = r.try_get(4)?;
    Ok(WarmPool {
        id: parse(t, &r.try_get::<String, _>(0)?)?,
        tenant_id: parse(t, &r.try_get::<String, _>(1)?)?,
        name: r.try_get(2)?,
        model: parse(t, &r.try_get::<String, _>(3)?)?,
        region: region.map(|v| Region::parse(&v).map_err(|e| corrupt(t, e))).transpose()?,
        count: r.try_get::<i64, _>(5)?.max(1) as u32,
        command: r.try_get(6)?,
        size: r.try_get::<i64, _>(7)?.max(0) as u32,
        created_at: Timestamp(r.try_get(8)?),
        schedule: r.try_get(9)?,
        utc_offset_min: r.try_get::<i64, _>(10)? as i32,
        workload: member_workload_from_row(t, r)?,
        project: parse(t, &r.try_get::<String, _>("project")?)?,
    })
}

#[async_trait]
pub trait GroupStore: Send + Sync {
    /// Inserts a cluster; a conflict if the tenant has an active one of that name.
    async fn insert_cluster(&self, c: &Cluster) -> Result<()>;
    /// An active cluster of a tenant (`None`: any tenant) by id or name.
    async fn find_cluster(&self, tenant: Option<&TenantId>, id_or_name: &str) -> Result<Option<Cluster>>;
    async fn list_clusters(&self, tenant: Option<&TenantId>) -> Result<Vec<Cluster>>;
    /// Compare-and-set of target size, epoch and state; `None` if the cluster changed meanwhile.
    async fn update_cluster(
        &self,
        id: &ClusterId,
        expected_generation: i64,
        target_nodes: u32,
        epoch: i64,
        active: bool,
        at: Timestamp,
    ) -> Result<Option<Cluster>>;
    /// Compare-and-set of the whole plan: model, size, epoch and schedule.
    async fn replan_cluster(&self, c: &Cluster, expected_generation: i64) -> Result<Option<Cluster>>;
    /// Every instance ever launched as a member, by rank then age.
    async fn cluster_members(&self, id: &ClusterId) -> Result<Vec<Instance>>;
    /// Inserts a warm pool; a conflict if the tenant has an active one of that name.
    async fn insert_pool(&self, p: &WarmPool) -> Result<()>;
    /// Active pools of a tenant (`None`: all).
    async fn list_pools(&self, tenant: Option<&TenantId>) -> Result<Vec<WarmPool>>;
    /// Sets a pool's size and schedule; false if there is no such active pool.
    async fn update_pool(&self, p: &WarmPool) -> Result<bool>;
    /// Retires a pool (its name is free again); false if there was no such active pool.
    async fn delete_pool(&self, id: &gpucloud_model::PoolId) -> Result<bool>;
    /// Instances a pool holds that are pending or hold GPUs, oldest first.
    async fn pool_members(&self, id: &gpucloud_model::PoolId) -> Result<Vec<Instance>>;
    /// Hands a running warm instance out: it leaves its pool, takes `name`, and its billing moves
    /// from the warm rate to on-demand at `at` (the warm interval closes and an on-demand one
    /// opens in the same transaction). `None` if it was handed out or changed meanwhile.
    async fn claim_warm(
        &self,
        id: &InstanceId,
        expected_generation: i64,
        name: &str,
        at: Timestamp,
    ) -> Result<Option<Instance>>;
}

#[async_trait]
impl GroupStore for SqlStore {
    async fn insert_cluster(&self, c: &Cluster) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO clusters ({CLUSTER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)"
        ))
        .bind(c.id.to_string())
        .bind(c.tenant_id.to_string())
        .bind(&c.name)
        .bind(c.model.name())
        .bind(c.region.as_ref().map(|r| r.to_string()))
        .bind(i64::from(c.gpus_per_node))
        .bind(i64::from(c.min_nodes))
        .bind(i64::from(c.max_nodes))
        .bind(i64::from(c.target_nodes))
        .bind(&c.command)
        .bind(c.tier.as_str())
        .bind(if c.active { "active" } else { "deleted" })
        .bind(c.epoch)
        .bind(c.generation)
        .bind(c.created_at.0)
        .bind(c.updated_at.0)
        .bind(c.schedule.clone())
        .bind(i64::from(c.utc_offset_min))
        .bind(c.autoscale.map(|a| i64::from(a.up_pct)))
        .bind(c.autoscale.map(|a| i64::from(a.down_pct)))
        .bind(c.autoscale.map(|a| i64::from(a.for_s)))
        .bind((!c.replicas_in.is_empty()).then(|| c.replicas_in.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",")))
        .bind(c.workload.image.clone())
        .bind(encode_env(&c.workload.env))
        .bind(encode_ports(&c.workload.ports))
        .bind(c.project.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, &format!("a cluster named '{}'", c.name)))?;
        Ok(())
    }

    async fn find_cluster(&self, tenant: Option<&TenantId>, id_or_name: &str) -> Result<Option<Cluster>> {
        let row = sqlx::query(&format!(
            "SELECT {CLUSTER_COLUMNS} FROM clusters WHERE state = 'active' AND (id = $1 OR name = $1) \
             AND ($2 = '' OR tenant_id = $2) ORDER BY created_at LIMIT 1"
        ))
        .bind(id_or_name)
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(cluster_from_row).transpose()
    }

    async fn list_clusters(&self, tenant: Option<&TenantId>) -> Result<Vec<Cluster>> {
        let rows = sqlx::query(&format!(
            "SELECT {CLUSTER_COLUMNS} FROM clusters WHERE state = 'active' AND ($1 = '' OR tenant_id = $1) \
             ORDER BY created_at, id"
        ))
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cluster_from_row).collect()
    }

    async fn update_cluster(
        &self,
        id: &ClusterId,
        expected_generation: i64,
        target_nodes: u32,
        epoch: i64,
        active: bool,
        at: Timestamp,
    ) -> Result<Option<Cluster>> {
        let r = sqlx::query(
            "UPDATE clusters SET target_nodes = $1, epoch = $2, state = $3, updated_at = $4, generation = generation + 1 \
             WHERE id = $5 AND generation = $6",
        )
        .bind(i64::from(target_nodes))
        .bind(epoch)
        .bind(if active { "active" } else { "deleted" })
        .bind(at.0)
        .bind(id.to_string())
        .bind(expected_generation)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        let row = sqlx::query(&format!("SELECT {CLUSTER_COLUMNS} FROM clusters WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cluster_from_row).transpose()
    }

    async fn replan_cluster(&self, c: &Cluster, expected_generation: i64) -> Result<Option<Cluster>> {
        let r = sqlx::query(
            "UPDATE clusters SET gpu_model = $1, target_nodes = $2, epoch = $3, schedule = $4, utc_offset_min = $5, \
             updated_at = $6, generation = generation + 1, autoscale_up_pct = $9, autoscale_down_pct = $10, \
             autoscale_for_s = $11 WHERE id = $7 AND generation = $8 AND state = 'active'",
        )
        .bind(c.model.name())
        .bind(i64::from(c.target_nodes))
        .bind(c.epoch)
        .bind(c.schedule.clone())
        .bind(i64::from(c.utc_offset_min))
        .bind(c.updated_at.0)
        .bind(c.id.to_string())
        .bind(expected_generation)
        .bind(c.autoscale.map(|a| i64::from(a.up_pct)))
        .bind(c.autoscale.map(|a| i64::from(a.down_pct)))
        .bind(c.autoscale.map(|a| i64::from(a.for_s)))
        .execute(&self.pool)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        self.find_cluster(None, c.id.as_str()).await
    }

    async fn cluster_members(&self, id: &ClusterId) -> Result<Vec<Instance>> {
        self.instances_where(
            "WHERE cluster_id = $1 ORDER BY cluster_rank, created_at",
            Some(id.to_string()),
            GpuFilter::All,
        )
        .await
    }

    async fn insert_pool(&self, p: &WarmPool) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO warm_pools ({POOL_COLUMNS}, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'active')"
        ))
        .bind(p.id.to_string())
        .bind(p.tenant_id.to_string())
        .bind(&p.name)
        .bind(p.model.name())
        .bind(p.region.as_ref().map(|r| r.to_string()))
        .bind(i64::from(p.count))
        .bind(&p.command)
        .bind(i64::from(p.size))
        .bind(p.created_at.0)
        .bind(p.schedule.clone())
        .bind(i64::from(p.utc_offset_min))
        .bind(p.workload.image.clone())
        .bind(encode_env(&p.workload.env))
        .bind(encode_ports(&p.workload.ports))
        .bind(p.project.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, &format!("a warm pool named '{}'", p.name)))?;
        Ok(())
    }

    async fn list_pools(&self, tenant: Option<&TenantId>) -> Result<Vec<WarmPool>> {
        let rows = sqlx::query(&format!(
            "SELECT {POOL_COLUMNS} FROM warm_pools WHERE state = 'active' AND ($1 = '' OR tenant_id = $1) ORDER BY created_at, id"
        ))
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pool_from_row).collect()
    }

    async fn update_pool(&self, p: &WarmPool) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE warm_pools SET size = $1, schedule = $2, utc_offset_min = $3 WHERE id = $4 AND state = 'active'",
        )
        .bind(i64::from(p.size))
        .bind(p.schedule.clone())
        .bind(i64::from(p.utc_offset_min))
        .bind(p.id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_pool(&self, id: &gpucloud_model::PoolId) -> Result<bool> {
        let r = sqlx::query("UPDATE warm_pools SET state = 'deleted' WHERE id = $1 AND state = 'active'")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn pool_members(&self, id: &gpucloud_model::PoolId) -> Result<Vec<Instance>> {
        self.instances_where(
            "WHERE pool_id = $1 AND state IN ('pending', 'provisioning', 'running', 'stopping') ORDER BY created_at, id",
            Some(id.to_string()),
            GpuFilter::All,
        )
        .await
    }

    async fn claim_warm(
        &self,
        id: &InstanceId,
        expected_generation: i64,
        name: &str,
        at: Timestamp,
    ) -> Result<Option<Instance>> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE instances SET pool_id = NULL, tier = 'on-demand', name = $1, generation = generation + 1, \
             updated_at = $2 WHERE id = $3 AND generation = $4 AND pool_id IS NOT NULL AND state = 'running'",
        )
        .bind(name)
        .bind(at.0)
        .bind(id.to_string())
        .bind(expected_generation)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        sqlx::query("UPDATE usage_intervals SET ended_at = $1 WHERE instance_id = $2 AND ended_at IS NULL")
            .bind(at.0)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"))
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let claimed = instance_from_row(&row)?;
        crate::billing_rows::open_interval(&mut tx, &claimed, expected_generation + 1, at).await?;
        tx.commit().await?;
        crate::Store::get_instance(self, None, id).await
    }
}
