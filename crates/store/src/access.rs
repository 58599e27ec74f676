//! Access: members' API keys (listing, revocation) and the append-only audit log.

use crate::sql::{SqlStore, parse};
use crate::{ApiKey, AuditEntry, KeyScope, Result};
use async_trait::async_trait;
use gpucloud_model::{ApiKeyId, TenantId, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

#[async_trait]
pub trait AccessStore: Send + Sync {
    /// A tenant's keys, revoked ones included, oldest first.
    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>>;
    async fn get_api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKey>>;
    /// Revokes a key once; false if it was revoked already or does not exist.
    async fn revoke_api_key(&self, id: &ApiKeyId, at: Timestamp) -> Result<bool>;
    /// Binds an unbound agent key to the node named `node`, unless another live key is bound
    /// to it already; false when the key was bound meanwhile or the node is another key's.
    async fn bind_agent_key(&self, id: &ApiKeyId, node: &str) -> Result<bool>;
    /// The node an instance runs on, or last ran on.
    async fn instance_ran_on(&self, id: &gpucloud_model::InstanceId) -> Result<Option<gpucloud_model::NodeId>>;
    /// The id of the node called `name`, if one is registered.
    async fn node_named(&self, name: &str) -> Result<Option<gpucloud_model::NodeId>>;
    /// Writes an audit row. A mutating call's row is written before the call runs, with status
    /// 0 (outcome not known yet), and finished with [`AccessStore::finish_audit`] once it has
    /// answered: a crash between leaves the row saying the call may have happened.
    async fn insert_audit(&self, entry: &AuditEntry) -> Result<()>;
    /// Records the status a call written ahead answered with (only over status 0: a row is
    /// finished once).
    async fn finish_audit(&self, id: &str, status: u16) -> Result<()>;
    /// The latest entries since `since` (of one tenant, or all), newest first, at most `limit`.
    async fn list_audit(&self, tenant: Option<&TenantId>, since: Timestamp, limit: u32) -> Result<Vec<AuditEntry>>;
}

const KEY_COLUMNS: &str = "id, prefix, hash, created_at, name, scope, revoked_at, node_name, project, tenant_id";

/// A key from `id, prefix, hash, created_at, name, scope, revoked_at, node_name, project` starting at
/// column `at`.
pub(crate) fn key_from_row(r: &AnyRow, at: usize, tenant_id: TenantId) -> Result<ApiKey> {
    let t = "api_keys";
    let revoked: Option<i64> = r.try_get(at + 6)?;
    Ok(ApiKey {
        id: parse::<ApiKeyId>(t, &r.try_get::<String, _>(at)?)?,
        tenant_id,
        prefix: r.try_get(at + 1)?,
        hash: r.try_get(at + 2)?,
        created_at: Timestamp(r.try_get(at + 3)?),
        name: r.try_get(at + 4)?,
        scope: parse::<KeyScope>(t, &r.try_get::<String, _>(at + 5)?)?,
        revoked_at: revoked.map(Timestamp),
        node: r.try_get(at + 7)?,
        project: r.try_get::<Option<String>, _>(at + 8)?.map(|p| parse(t, &p)).transpose()?,
    })
}

fn key_row(r: &AnyRow) -> Result<ApiKey> {
    let tenant = parse::<TenantId>("api_keys", &r.try_get::<String, _>(9)?)?;
    key_from_row(r, 0, tenant)
}

#[async_trait]
impl AccessStore for SqlStore {
    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>> {
        let rows =
            sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"))
                .bind(tenant.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(key_row).collect()
    }

    async fn get_api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKey>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_row).transpose()
    }

    async fn revoke_api_key(&self, id: &ApiKeyId, at: Timestamp) -> Result<bool> {
        let r = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(at.0)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn bind_agent_key(&self, id: &ApiKeyId, node: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE api_keys SET node_name = $1 WHERE id = $2 AND node_name IS NULL AND scope = 'agent' \
             AND NOT EXISTS (SELECT 1 FROM api_keys o WHERE o.node_name = $3 AND o.revoked_at IS NULL)",
        )
        .bind(node)
        .bind(id.to_string())
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn instance_ran_on(&self, id: &gpucloud_model::InstanceId) -> Result<Option<gpucloud_model::NodeId>> {
        let node: Option<Option<String>> =
            sqlx::query_scalar("SELECT COALESCE(node_id, ran_on) FROM instances WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        node.flatten().map(|n| parse("instances", &n)).transpose()
    }

    async fn node_named(&self, name: &str) -> Result<Option<gpucloud_model::NodeId>> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM nodes WHERE name = $1").bind(name).fetch_optional(&self.pool).await?;
        id.map(|id| parse("nodes", &id)).transpose()
    }

    async fn insert_audit(&self, e: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, tenant_id, key_prefix, method, path, status, remote) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&e.id)
        .bind(e.at.0)
        .bind(e.tenant_id.to_string())
        .bind(&e.key_prefix)
        .bind(&e.method)
        .bind(&e.path)
        .bind(i64::from(e.status))
        .bind(&e.remote)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn finish_audit(&self, id: &str, status: u16) -> Result<()> {
        sqlx::query("UPDATE audit_log SET status = $1 WHERE id = $2 AND status = 0")
            .bind(i64::from(status))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_audit(&self, tenant: Option<&TenantId>, since: Timestamp, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT id, at, tenant_id, key_prefix, method, path, status, remote FROM audit_log \
             WHERE at >= $1 AND ($2 = '' OR tenant_id = $2) ORDER BY at DESC, id DESC LIMIT {}",
            limit.min(10_000)
        ))
        .bind(since.0)
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        let t = "audit_log";
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    at: Timestamp(r.try_get(1)?),
                    tenant_id: parse(t, &r.try_get::<String, _>(2)?)?,
                    key_prefix: r.try_get(3)?,
                    method: r.try_get(4)?,
                    path: r.try_get(5)?,
                    status: r.try_get::<i64, _>(6)?.clamp(0, 999) as u16,
                    remote: r.try_get(7)?,
                })
            })
            .collect()
    }
}
