use super::{App, AppError, Principal, hash_key, random_bits};
use gpucloud_model::{ApiKeyId, Role, TenantId};
use gpucloud_store::{ApiKey, KeyScope, Tenant};
use rand::Rng;

/// A freshly minted key: the secret is returned once and only its hash is kept.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: ApiKeyId,
    pub tenant: Tenant,
    pub prefix: String,
    pub secret: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl App {
    /// Creates a tenant and its first key. Operators only (and the dev bootstrap).
    pub async fn create_tenant(&self, by: Option<&Principal>, name: &str, role: Role) -> Result<NewKey, AppError> {
        if let Some(p) = by {
            p.require_operator()?;
        }
        if !valid_name(name) {
            return Err(AppError::invalid("name", "a tenant name has 1 to 64 letters, digits, '-' or '_'"));
        }
        let tenant =
            Tenant { id: TenantId::from_random(random_bits()), name: name.to_string(), role, created_at: self.now() };
        self.store.create_tenant(&tenant).await.map_err(AppError::store_conflict)?;
        self.mint_key_for(tenant).await
    }

    pub async fn create_key(&self, by: &Principal, tenant: &TenantId) -> Result<NewKey, AppError> {
        by.require_operator()?;
        let tenant = self
            .store
            .get_tenant(tenant)
            .await?
            .ok_or_else(|| AppError::NotFound { kind: "tenant", id: tenant.to_string() })?;
        self.mint_key_for(tenant).await
    }

    /// A tenant admin gives a member a key of its own tenant: named, admin or read-only. An
    /// operator's agent key may be bound to a node (by name) here; otherwise its first
    /// registration binds it.
    pub async fn create_member_key(
        &self,
        by: &Principal,
        name: &str,
        scope: &str,
        node: Option<&str>,
        project: Option<&str>,
    ) -> Result<NewKey, AppError> {
        let scope: KeyScope = scope.parse().map_err(|e: String| AppError::invalid("scope", e))?;
        if scope == KeyScope::Agent && by.tenant.role != gpucloud_model::Role::Operator {
            return Err(AppError::Forbidden("agent keys register GPU nodes: only an operator can make one".into()));
        }
        if by.scope == KeyScope::Agent {
            return Err(AppError::Forbidden("an agent key cannot make keys".into()));
        }
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(AppError::invalid("name", "a key name is 1 to 64 printable characters"));
        }
        if let Some(n) = node {
            if scope != KeyScope::Agent {
                return Err(AppError::invalid("node", "only an agent key (scope agent) is bound to a node"));
            }
            super::nodes::check_node_name(n)
                .map_err(|_| AppError::invalid("node", "a node name has 1 to 64 letters, digits, '-', '.' or '_'"))?;
        }
        // A project key makes keys of its own project only, so it cannot widen its reach.
        let project = match (project, &by.project) {
            (None, mine) => mine.clone(),
            (Some(asked), _) => Some(self.project_for(by, Some(asked)).await?),
        };
        if project.is_some() && scope == KeyScope::Agent {
            return Err(AppError::invalid("project", "an agent key belongs to a node, not to a project"));
        }
        self.mint_key(by.tenant.clone(), name, scope, node, project).await
    }

    /// The caller's tenant's keys (never their secrets).
    /// A project key sees its project's keys only.
    pub async fn list_keys(&self, by: &Principal) -> Result<Vec<ApiKey>, AppError> {
        let mut keys = self.store.list_api_keys(&by.tenant.id).await?;
        keys.retain(|k| by.project.is_none() || k.project == by.project);
        Ok(keys)
    }

    /// Revokes a key of the caller's tenant (an operator: of any tenant). Takes effect on every
    /// replica at the next request: keys are looked up on each one.
    pub async fn revoke_key(&self, by: &Principal, id: &str) -> Result<ApiKey, AppError> {
        let not_found = || AppError::NotFound { kind: "api key", id: id.to_string() };
        let kid = ApiKeyId::parse(id).map_err(|_| not_found())?;
        let key = self.store.get_api_key(&kid).await?.ok_or_else(not_found)?;
        if key.tenant_id != by.tenant.id && by.tenant.role != Role::Operator {
            return Err(not_found());
        }
        if by.project.is_some() && key.project != by.project {
            return Err(not_found());
        }
        if !self.store.revoke_api_key(&kid, self.now()).await? {
            return Err(AppError::Conflict(format!("key {id} was revoked already")));
        }
        Ok(self.store.get_api_key(&kid).await?.unwrap_or(key))
    }

    pub async fn list_tenants(&self, by: &Principal) -> Result<Vec<Tenant>, AppError> {
        by.require_operator()?;
        Ok(self.store.list_tenants().await?)
    }

    /// Operator: mutating calls since `since_s` seconds ago, of one tenant or all.
    pub async fn audit_log(
        &self,
        by: &Principal,
        tenant: Option<&str>,
        since_s: i64,
        limit: u32,
    ) -> Result<Vec<gpucloud_store::AuditEntry>, AppError> {
        by.require_operator()?;
        if !(1..=366 * 86_400).contains(&since_s) {
            return Err(AppError::invalid("since", "since is 1 s to a year back, in seconds"));
        }
        if !(1..=10_000).contains(&limit) {
            return Err(AppError::invalid("limit", "limit is 1 to 10000"));
        }
        let tenant = match tenant {
            Some(t) => {
                Some(TenantId::parse(t).map_err(|_| AppError::invalid("tenant", format!("'{t}' is not a tenant id")))?)
            }
            None => None,
        };
        Ok(self.store.list_audit(tenant.as_ref(), self.now().plus_millis(-since_s * 1000), limit).await?)
    }

    pub(crate) async fn mint_key_for(&self, tenant: Tenant) -> Result<NewKey, AppError> {
        self.mint_key(tenant, "", KeyScope::Admin, None, None).await
    }

    async fn mint_key(
        &self,
        tenant: Tenant,
        name: &str,
        scope: KeyScope,
        node: Option<&str>,
        project: Option<gpucloud_model::ProjectName>,
    ) -> Result<NewKey, AppError> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let body: String = {
            let mut rng = rand::rng();
            (0..40).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
        };
        let secret = format!("gpc_{body}");
        let prefix = secret[..12].to_string();
        let key = ApiKey {
            id: ApiKeyId::from_random(random_bits()),
            tenant_id: tenant.id.clone(),
            prefix: prefix.clone(),
            hash: hash_key(&secret),
            created_at: self.now(),
            name: name.to_string(),
            scope,
            revoked_at: None,
            node: node.map(str::to_string),
            project,
        };
        self.store.insert_api_key(&key).await?;
        Ok(NewKey { id: key.id, tenant, prefix, secret })
    }
}
