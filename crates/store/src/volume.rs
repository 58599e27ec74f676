//! Tenants' volumes: where each lives, which instance holds it, and what its storage has been
//! billed. Attachment is one conditional write, so two creates racing for one volume cannot
//! both win.

use crate::sql::{SqlStore, corrupt, parse};
use crate::{LedgerRecord, Result};
use async_trait::async_trait;
use gpucloud_model::{InstanceId, Money, NodeId, Region, TenantId, Timestamp, VolumeId};
use sqlx::any::AnyRow;
use sqlx::{Acquire, Row};

/// One volume as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    pub id: VolumeId,
    pub tenant_id: TenantId,
    pub name: String,
    pub region: Region,
    pub size_gib: u32,
    /// The node its data is on; `None` until an instance mounting it is first placed.
    pub node_id: Option<NodeId>,
    /// The live (not terminated) instance that holds it, if any.
    pub attached_to: Option<InstanceId>,
    pub created_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
    /// Storage billed so far, and for how many seconds.
    pub charged: Money,
    pub charged_seconds: i64,
    /// The project it belongs to (a project key sees its own project's volumes only).
    pub project: gpucloud_model::ProjectName,
}

/// Moving a volume's storage charge from what `volume` says was charged to `amount`/`seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeCharge {
    pub volume: VolumeRow,
    pub amount: Money,
    pub seconds: i64,
    /// The volume is deleted and this charges it to its deletion: nothing is owed after.
    pub settled: bool,
    pub record: Option<LedgerRecord>,
}

#[async_trait]
pub trait VolumeStore: Send + Sync {
    /// A live name taken in the tenant is a `Conflict`.
    async fn insert_volume(&self, v: &VolumeRow) -> Result<()>;
    /// A tenant's live volume by name or id.
    async fn find_volume(&self, tenant: &TenantId, name_or_id: &str) -> Result<Option<VolumeRow>>;
    async fn get_volume(&self, id: &VolumeId) -> Result<Option<VolumeRow>>;
    /// A tenant's live volumes by name.
    async fn list_volumes(&self, tenant: &TenantId) -> Result<Vec<VolumeRow>>;
    /// Gives the volume to `instance` unless a live instance holds it; false if one does.
    async fn attach_volume(&self, id: &VolumeId, instance: &InstanceId) -> Result<bool>;
    /// Lets `instance` go of its volume if it holds one (it failed to be created).
    async fn detach_volume(&self, id: &VolumeId, instance: &InstanceId) -> Result<()>;
    /// Marks a live volume deleted unless a live instance holds it; false if one does.
    async fn delete_volume(&self, id: &VolumeId, at: Timestamp) -> Result<bool>;
    /// Deleted volumes on `node` whose data the node has not yet removed.
    async fn volumes_to_purge(&self, node: &NodeId) -> Result<Vec<VolumeId>>;
    /// The node says it removed these volumes' data.
    async fn mark_volumes_purged(&self, node: &NodeId, ids: &[VolumeId], at: Timestamp) -> Result<()>;
    /// Volumes whose storage may still owe money: live ones, and deleted ones not yet settled.
    async fn unsettled_volumes(&self) -> Result<Vec<VolumeRow>>;
    /// One tenant's unsettled volumes: what its balance and budget reads add accrual for.
    async fn unsettled_volumes_of(&self, tenant: &TenantId) -> Result<Vec<VolumeRow>>;
    /// Applies each charge if the volume still shows what the charge was computed from, posting
    /// its ledger entry in the same transaction; one bool per charge.
    async fn charge_volumes(&self, charges: &[VolumeCharge]) -> Result<Vec<bool>>;
    /// Adds a storage price point for a region; false if one starts at that time already.
    async fn add_storage_price(&self, region: &Region, from: Timestamp, per_gib_hour: Money) -> Result<bool>;
    /// A region's storage prices, oldest first; all regions' when `None`.
    async fn storage_prices(&self, region: Option<&Region>) -> Result<Vec<(Region, Timestamp, Money)>>;
}

/// The live instance holding a volume: its `instance_id`, unless that instance is terminated.
const VOLUME_COLUMNS: &str = "v.id, v.tenant_id, v.name, v.region, v.size_gib, v.node_id, \
     CASE WHEN i.state IS NOT NULL AND i.state <> 'terminated' THEN v.instance_id END, \
     v.created_at, v.deleted_at, v.charged_micros, v.charged_seconds, v.project";
const VOLUME_FROM: &str = "volumes v LEFT JOIN instances i ON i.id = v.instance_id";

fn volume_row(r: &AnyRow) -> Result<VolumeRow> {
    let t = "volumes";
    let node: Option<String> = r.try_get(5)?;
    let inst: Option<String> = r.try_get(6)?;
    Ok(VolumeRow {
        id: parse(t, &r.try_get::<String, _>(0)?)?,
        tenant_id: parse(t, &r.try_get::<String, _>(1)?)?,
        name: r.try_get(2)?,
        region: Region::parse(&r.try_get::<String, _>(3)?).map_err(|e| corrupt(t, e))?,
        size_gib: r.try_get::<i64, _>(4)?.clamp(0, i64::from(u32::MAX)) as u32,
        node_id: node.map(|n| parse(t, &n)).transpose()?,
        attached_to: inst.map(|i| parse(t, &i)).transpose()?,
        created_at: Timestamp(r.try_get(7)?),
        deleted_at: r.try_get::<Option<i64>, _>(8)?.map(Timestamp),
        charged: Money(r.try_get(9)?),
        charged_seconds: r.try_get(10)?,
        project: parse(t, &r.try_get::<String, _>(11)?)?,
    })
}

/// Free: no instance, or one that is terminated (or was never created).
pub(crate) const FREE: &str = "(instance_id IS NULL OR NOT EXISTS \
     (SELECT 1 FROM instances WHERE instances.id = volumes.instance_id AND instances.state <> 'terminated'))";

#[async_trait]
impl VolumeStore for SqlStore {
    async fn insert_volume(&self, v: &VolumeRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO volumes (id, tenant_id, name, region, size_gib, node_id, instance_id, created_at, project) \
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, $7)",
        )
        .bind(v.id.to_string())
        .bind(v.tenant_id.to_string())
        .bind(&v.name)
        .bind(v.region.to_string())
        .bind(i64::from(v.size_gib))
        .bind(v.created_at.0)
        .bind(v.project.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| crate::sql::unique_violation(e, &format!("volume {}", v.name)))?;
        Ok(())
    }

    async fn find_volume(&self, tenant: &TenantId, name_or_id: &str) -> Result<Option<VolumeRow>> {
        let row = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM {VOLUME_FROM} WHERE v.tenant_id = $1 AND v.deleted_at IS NULL \
             AND (v.name = $2 OR v.id = $2)"
        ))
        .bind(tenant.to_string())
        .bind(name_or_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(volume_row).transpose()
    }

    async fn get_volume(&self, id: &VolumeId) -> Result<Option<VolumeRow>> {
        let row = sqlx::query(&format!("SELECT {VOLUME_COLUMNS} FROM {VOLUME_FROM} WHERE v.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(volume_row).transpose()
    }

    async fn list_volumes(&self, tenant: &TenantId) -> Result<Vec<VolumeRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM {VOLUME_FROM} WHERE v.tenant_id = $1 AND v.deleted_at IS NULL ORDER BY v.name"
        ))
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(volume_row).collect()
    }

    async fn attach_volume(&self, id: &VolumeId, instance: &InstanceId) -> Result<bool> {
        let r = sqlx::query(&format!(
            "UPDATE volumes SET instance_id = $1 WHERE id = $2 AND deleted_at IS NULL AND {FREE}"
        ))
        .bind(instance.to_string())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn detach_volume(&self, id: &VolumeId, instance: &InstanceId) -> Result<()> {
        sqlx::query("UPDATE volumes SET instance_id = NULL WHERE id = $1 AND instance_id = $2")
            .bind(id.to_string())
            .bind(instance.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_volume(&self, id: &VolumeId, at: Timestamp) -> Result<bool> {
        let r =
            sqlx::query(&format!("UPDATE volumes SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL AND {FREE}"))
                .bind(at.0)
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn volumes_to_purge(&self, node: &NodeId) -> Result<Vec<VolumeId>> {
        let rows = sqlx::query(
            "SELECT id FROM volumes WHERE node_id = $1 AND deleted_at IS NOT NULL AND purged_at IS NULL ORDER BY id",
        )
        .bind(node.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| parse("volumes", &r.try_get::<String, _>(0)?)).collect()
    }

    async fn mark_volumes_purged(&self, node: &NodeId, ids: &[VolumeId], at: Timestamp) -> Result<()> {
        for id in ids {
            sqlx::query(
                "UPDATE volumes SET purged_at = $1 WHERE id = $2 AND node_id = $3 AND deleted_at IS NOT NULL \
                 AND purged_at IS NULL",
            )
            .bind(at.0)
            .bind(id.to_string())
            .bind(node.to_string())
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    async fn unsettled_volumes(&self) -> Result<Vec<VolumeRow>> {
        let rows =
            sqlx::query(&format!("SELECT {VOLUME_COLUMNS} FROM {VOLUME_FROM} WHERE v.settled = 0 ORDER BY v.id"))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(volume_row).collect()
    }

    async fn unsettled_volumes_of(&self, tenant: &TenantId) -> Result<Vec<VolumeRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM {VOLUME_FROM} WHERE v.settled = 0 AND v.tenant_id = $1 ORDER BY v.id"
        ))
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(volume_row).collect()
    }

    async fn charge_volumes(&self, charges: &[VolumeCharge]) -> Result<Vec<bool>> {
        let mut tx = self.pool.begin().await?;
        let mut done = Vec::with_capacity(charges.len());
        for c in charges {
            let mut sp = tx.begin().await?;
            let moved = sqlx::query(
                "UPDATE volumes SET charged_micros = $1, charged_seconds = $2, settled = $3 \
                 WHERE id = $4 AND charged_micros = $5 AND charged_seconds = $6 AND settled = 0",
            )
            .bind(c.amount.micros())
            .bind(c.seconds)
            .bind(i64::from(c.settled))
            .bind(c.volume.id.to_string())
            .bind(c.volume.charged.micros())
            .bind(c.volume.charged_seconds)
            .execute(&mut *sp)
            .await?;
            let ok = moved.rows_affected() == 1
                && match &c.record {
                    Some(r) => crate::billing_rows::insert_ledger(&mut sp, r).await?,
                    None => true,
                };
            if ok {
                sp.commit().await?;
            } else {
                sp.rollback().await?;
            }
            done.push(ok);
        }
        tx.commit().await?;
        Ok(done)
    }

    async fn add_storage_price(&self, region: &Region, from: Timestamp, per_gib_hour: Money) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO storage_prices (region, effective_from, per_gib_hour_micros) VALUES ($1, $2, $3) \
             ON CONFLICT (region, effective_from) DO NOTHING",
        )
        .bind(region.to_string())
        .bind(from.0)
        .bind(per_gib_hour.micros())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn storage_prices(&self, region: Option<&Region>) -> Result<Vec<(Region, Timestamp, Money)>> {
        let all = "SELECT region, effective_from, per_gib_hour_micros FROM storage_prices";
        let rows = match region {
            Some(r) => {
                sqlx::query(&format!("{all} WHERE region = $1 ORDER BY effective_from"))
                    .bind(r.to_string())
                    .fetch_all(&self.pool)
                    .await?
            }
            None => sqlx::query(&format!("{all} ORDER BY region, effective_from")).fetch_all(&self.pool).await?,
        };
        rows.iter()
            .map(|r| {
                Ok((
                    Region::parse(&r.try_get::<String, _>(0)?).map_err(|e| corrupt("storage_prices", e))?,
                    Timestamp(r.try_get(1)?),
                    Money(r.try_get(2)?),
                ))
            })
            .collect()
    }
}
