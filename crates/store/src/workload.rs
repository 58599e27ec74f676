//! What tenants' workloads run with: their sealed secrets, and what agents say about a workload
//! that is not a state change (its preparation, where its ports are published).

use crate::sql::{SqlStore, parse};
use crate::{Result, SecretRow};
use async_trait::async_trait;
use gpucloud_model::{InstanceId, NodeId, TenantId, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

#[async_trait]
pub trait WorkloadStore: Send + Sync {
    /// What the agent says while preparing the instance; `None` clears it. Not a state change:
    /// the generation stays.
    async fn set_instance_progress(&self, id: &InstanceId, progress: Option<&str>) -> Result<()>;
    /// Where its exposed ports are published on its node now (empty: nowhere).
    async fn set_instance_published(&self, id: &InstanceId, published: &[(u16, u16)]) -> Result<()>;
    /// Stores a secret, replacing one of the same name; true if it is new.
    async fn put_secret(&self, secret: &SecretRow) -> Result<bool>;
    async fn get_secret(&self, tenant: &TenantId, name: &str) -> Result<Option<SecretRow>>;
    /// A tenant's secrets by name.
    async fn list_secrets(&self, tenant: &TenantId) -> Result<Vec<SecretRow>>;
    /// False if there was none.
    async fn delete_secret(&self, tenant: &TenantId, name: &str) -> Result<bool>;
    /// Where a node's agent takes proxied connections, and their signing secret (hex).
    async fn set_node_ingress(&self, node: &NodeId, port: Option<u16>, secret: Option<&str>) -> Result<()>;
    async fn node_ingress(&self, node: &NodeId) -> Result<Option<(u16, String)>>;
    /// Stores a template; a name taken in the tenant is a `Conflict`.
    async fn insert_template(&self, t: &TemplateRow) -> Result<()>;
    async fn get_template(&self, tenant: &TenantId, name: &str) -> Result<Option<TemplateRow>>;
    /// A tenant's templates by name.
    async fn list_templates(&self, tenant: &TenantId) -> Result<Vec<TemplateRow>>;
    async fn delete_template(&self, tenant: &TenantId, name: &str) -> Result<bool>;
    /// Stores a tenant's credentials for a registry, replacing earlier ones.
    async fn put_registry_auth(&self, a: &RegistryAuthRow) -> Result<()>;
    /// A tenant's registry credentials by registry.
    async fn list_registry_auths(&self, tenant: &TenantId) -> Result<Vec<RegistryAuthRow>>;
    async fn delete_registry_auth(&self, tenant: &TenantId, registry: &str) -> Result<bool>;
    /// Adds a tenant's SSH key; a name or a key the tenant has already is a `Conflict`.
    async fn insert_ssh_key(&self, k: &SshKeyRow) -> Result<()>;
    /// A tenant's SSH keys by name.
    async fn list_ssh_keys(&self, tenant: &TenantId) -> Result<Vec<SshKeyRow>>;
    /// False if there was none of that name.
    async fn delete_ssh_key(&self, tenant: &TenantId, name: &str) -> Result<bool>;
    /// Where a node's agent serves SSH, and its host key; `None` when it does not.
    async fn set_node_ssh(&self, node: &NodeId, ssh: Option<(u16, &str)>) -> Result<()>;
    async fn node_ssh(&self, node: &NodeId) -> Result<Option<(u16, String)>>;
    /// For each of `nodes` that serves SSH: the host it is reached at (its address, else its
    /// name), the port and the host key, in one read (a page of instances names many nodes).
    async fn nodes_ssh(&self, nodes: &[NodeId]) -> Result<std::collections::HashMap<NodeId, (String, u16, String)>>;
}

/// One of a tenant's SSH public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKeyRow {
    pub tenant_id: TenantId,
    pub name: String,
    /// `ssh-ed25519 AAAA...`, without a comment.
    pub public_key: String,
    pub algorithm: String,
    /// `SHA256:...`
    pub fingerprint: String,
    pub comment: String,
    pub created_at: Timestamp,
}

const SSH_KEY_COLUMNS: &str = "tenant_id, name, public_key, algorithm, fingerprint, comment, created_at";

fn ssh_key_row(r: &AnyRow) -> Result<SshKeyRow> {
    Ok(SshKeyRow {
        tenant_id: parse("ssh_keys", &r.try_get::<String, _>(0)?)?,
        name: r.try_get(1)?,
        public_key: r.try_get(2)?,
        algorithm: r.try_get(3)?,
        fingerprint: r.try_get(4)?,
        comment: r.try_get(5)?,
        created_at: Timestamp(r.try_get(6)?),
    })
}

/// A tenant's credentials for one registry; the password sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAuthRow {
    pub tenant_id: TenantId,
    pub registry: String,
    pub username: String,
    pub sealed: String,
    pub created_at: Timestamp,
}

/// A tenant's template as stored: its spec is the API's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRow {
    pub tenant_id: TenantId,
    pub name: String,
    pub spec: String,
    pub created_at: Timestamp,
}

fn template_row(r: &AnyRow) -> Result<TemplateRow> {
    Ok(TemplateRow {
        tenant_id: parse("templates", &r.try_get::<String, _>(0)?)?,
        name: r.try_get(1)?,
        spec: r.try_get(2)?,
        created_at: Timestamp(r.try_get(3)?),
    })
}

const SECRET_COLUMNS: &str = "tenant_id, name, sealed, created_at, updated_at";

fn secret_row(r: &AnyRow) -> Result<SecretRow> {
    Ok(SecretRow {
        tenant_id: parse("secrets", &r.try_get::<String, _>(0)?)?,
        name: r.try_get(1)?,
        sealed: r.try_get(2)?,
        created_at: Timestamp(r.try_get(3)?),
        updated_at: Timestamp(r.try_get(4)?),
    })
}

#[async_trait]
impl WorkloadStore for SqlStore {
    async fn set_instance_progress(&self, id: &InstanceId, progress: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE instances SET progress = $1 WHERE id = $2")
            .bind(progress.map(str::to_string))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_instance_published(&self, id: &InstanceId, published: &[(u16, u16)]) -> Result<()> {
        sqlx::query("UPDATE instances SET published = $1 WHERE id = $2")
            .bind(crate::market::encode_published(published))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn put_secret(&self, s: &SecretRow) -> Result<bool> {
        let existed = self.get_secret(&s.tenant_id, &s.name).await?.is_some();
        sqlx::query(&format!(
            "INSERT INTO secrets ({SECRET_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at"
        ))
        .bind(s.tenant_id.to_string())
        .bind(&s.name)
        .bind(&s.sealed)
        .bind(s.created_at.0)
        .bind(s.updated_at.0)
        .execute(&self.pool)
        .await?;
        Ok(!existed)
    }

    async fn get_secret(&self, tenant: &TenantId, name: &str) -> Result<Option<SecretRow>> {
        let row = sqlx::query(&format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE tenant_id = $1 AND name = $2"))
            .bind(tenant.to_string())
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(secret_row).transpose()
    }

    async fn list_secrets(&self, tenant: &TenantId) -> Result<Vec<SecretRow>> {
        let rows = sqlx::query(&format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE tenant_id = $1 ORDER BY name"))
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(secret_row).collect()
    }

    async fn delete_secret(&self, tenant: &TenantId, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND name = $2")
            .bind(tenant.to_string())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_node_ingress(&self, node: &NodeId, port: Option<u16>, secret: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE nodes SET ingress_port = $1, ingress_secret = $2 WHERE id = $3")
            .bind(port.map(i64::from))
            .bind(secret.map(str::to_string))
            .bind(node.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn node_ingress(&self, node: &NodeId) -> Result<Option<(u16, String)>> {
        let row = sqlx::query("SELECT ingress_port, ingress_secret FROM nodes WHERE id = $1")
            .bind(node.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let port: Option<i64> = row.try_get(0)?;
        let secret: Option<String> = row.try_get(1)?;
        Ok(match (port, secret) {
            (Some(p), Some(s)) if (1..=65535).contains(&p) => Some((p as u16, s)),
            _ => None,
        })
    }

    async fn insert_ssh_key(&self, k: &SshKeyRow) -> Result<()> {
        sqlx::query(&format!("INSERT INTO ssh_keys ({SSH_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
            .bind(k.tenant_id.to_string())
            .bind(&k.name)
            .bind(&k.public_key)
            .bind(&k.algorithm)
            .bind(&k.fingerprint)
            .bind(&k.comment)
            .bind(k.created_at.0)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                crate::sql::unique_violation(e, &format!("ssh key '{}' (or the same key under another name)", k.name))
            })?;
        Ok(())
    }

    async fn list_ssh_keys(&self, tenant: &TenantId) -> Result<Vec<SshKeyRow>> {
        let rows = sqlx::query(&format!("SELECT {SSH_KEY_COLUMNS} FROM ssh_keys WHERE tenant_id = $1 ORDER BY name"))
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ssh_key_row).collect()
    }

    async fn delete_ssh_key(&self, tenant: &TenantId, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM ssh_keys WHERE tenant_id = $1 AND name = $2")
            .bind(tenant.to_string())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_node_ssh(&self, node: &NodeId, ssh: Option<(u16, &str)>) -> Result<()> {
        sqlx::query("UPDATE nodes SET ssh_port = $1, ssh_host_key = $2 WHERE id = $3")
            .bind(ssh.map(|(p, _)| i64::from(p)))
            .bind(ssh.map(|(_, k)| k.to_string()))
            .bind(node.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn nodes_ssh(&self, nodes: &[NodeId]) -> Result<std::collections::HashMap<NodeId, (String, u16, String)>> {
        let mut out = std::collections::HashMap::new();
        // A bounded number of bind parameters a statement: both backends cap them.
        for chunk in nodes.chunks(500) {
            let marks = (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT id, COALESCE(address, name), ssh_port, ssh_host_key FROM nodes \
                 WHERE id IN ({marks}) AND ssh_port IS NOT NULL AND ssh_host_key IS NOT NULL"
            );
            let mut q = sqlx::query(&sql);
            for n in chunk {
                q = q.bind(n.to_string());
            }
            for row in q.fetch_all(&self.pool).await? {
                let port: i64 = row.try_get(2)?;
                if !(1..=65535).contains(&port) {
                    continue;
                }
                let id: String = row.try_get(0)?;
                out.insert(parse("nodes", &id)?, (row.try_get(1)?, port as u16, row.try_get(3)?));
            }
        }
        Ok(out)
    }

    async fn node_ssh(&self, node: &NodeId) -> Result<Option<(u16, String)>> {
        let row = sqlx::query("SELECT ssh_port, ssh_host_key FROM nodes WHERE id = $1")
            .bind(node.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let port: Option<i64> = row.try_get(0)?;
        let key: Option<String> = row.try_get(1)?;
        Ok(match (port, key) {
            (Some(p), Some(k)) if (1..=65535).contains(&p) => Some((p as u16, k)),
            _ => None,
        })
    }

    async fn insert_template(&self, t: &TemplateRow) -> Result<()> {
        sqlx::query("INSERT INTO templates (tenant_id, name, spec, created_at) VALUES ($1, $2, $3, $4)")
            .bind(t.tenant_id.to_string())
            .bind(&t.name)
            .bind(&t.spec)
            .bind(t.created_at.0)
            .execute(&self.pool)
            .await
            .map_err(|e| crate::sql::unique_violation(e, &format!("template {}", t.name)))?;
        Ok(())
    }

    async fn get_template(&self, tenant: &TenantId, name: &str) -> Result<Option<TemplateRow>> {
        let row =
            sqlx::query("SELECT tenant_id, name, spec, created_at FROM templates WHERE tenant_id = $1 AND name = $2")
                .bind(tenant.to_string())
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(template_row).transpose()
    }

    async fn list_templates(&self, tenant: &TenantId) -> Result<Vec<TemplateRow>> {
        let rows =
            sqlx::query("SELECT tenant_id, name, spec, created_at FROM templates WHERE tenant_id = $1 ORDER BY name")
                .bind(tenant.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(template_row).collect()
    }

    async fn delete_template(&self, tenant: &TenantId, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM templates WHERE tenant_id = $1 AND name = $2")
            .bind(tenant.to_string())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn put_registry_auth(&self, a: &RegistryAuthRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO registry_auths (tenant_id, registry, username, sealed, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, registry) DO UPDATE SET username = excluded.username, sealed = excluded.sealed, \
             created_at = excluded.created_at",
        )
        .bind(a.tenant_id.to_string())
        .bind(&a.registry)
        .bind(&a.username)
        .bind(&a.sealed)
        .bind(a.created_at.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_registry_auths(&self, tenant: &TenantId) -> Result<Vec<RegistryAuthRow>> {
        let rows = sqlx::query(
            "SELECT tenant_id, registry, username, sealed, created_at FROM registry_auths WHERE tenant_id = $1 \
             ORDER BY registry",
        )
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RegistryAuthRow {
                    tenant_id: parse("registry_auths", &r.try_get::<String, _>(0)?)?,
                    registry: r.try_get(1)?,
                    username: r.try_get(2)?,
                    sealed: r.try_get(3)?,
                    created_at: Timestamp(r.try_get(4)?),
                })
            })
            .collect()
    }

    async fn delete_registry_auth(&self, tenant: &TenantId, registry: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM registry_auths WHERE tenant_id = $1 AND registry = $2")
            .bind(tenant.to_string())
            .bind(registry)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
