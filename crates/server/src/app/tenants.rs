use super::{App, AppError, Principal, hash_key, random_bits};
use gpucloud_model::{ApiKeyId, Role, TenantId};
use gpucloud_store::{ApiKey, Tenant};
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

    pub async fn list_tenants(&self, by: &Principal) -> Result<Vec<Tenant>, AppError> {
        by.require_operator()?;
        Ok(self.store.list_tenants().await?)
    }

    pub(crate) async fn mint_key_for(&self, tenant: Tenant) -> Result<NewKey, AppError> {
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
        };
        self.store.insert_api_key(&key).await?;
        Ok(NewKey { id: key.id, tenant, prefix, secret })
    }
}
