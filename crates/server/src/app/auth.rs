use super::{App, AppError};
use gpucloud_model::{ApiKeyId, Role};
use gpucloud_store::Tenant;
use sha2::{Digest, Sha256};

/// Who is calling: the tenant an API key belongs to.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: Tenant,
    pub key_id: ApiKeyId,
    pub key_prefix: String,
    pub scope: gpucloud_store::KeyScope,
    /// An agent key's node (by name), once bound: the only node it speaks for.
    pub node: Option<String>,
}

impl Principal {
    pub fn require_operator(&self) -> Result<(), AppError> {
        if self.tenant.role == Role::Operator {
            Ok(())
        } else {
            Err(AppError::Forbidden("this needs an operator API key".into()))
        }
    }
}

/// Keys are long random strings, so a fast hash is enough: there is nothing to brute-force.
pub fn hash_key(key: &str) -> String {
    gpucloud_model::hex::encode(&Sha256::digest(key.as_bytes()))
}

impl App {
    /// Resolves an `Authorization` header value to a principal.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AppError> {
        let key = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|k| k.starts_with("gpc_"))
            .ok_or(AppError::Unauthenticated)?;
        let (key, tenant) = self.store.find_api_key(&hash_key(key)).await?.ok_or(AppError::BadKey)?;
        Ok(Principal { tenant, key_id: key.id, key_prefix: key.prefix, scope: key.scope, node: key.node })
    }
}
