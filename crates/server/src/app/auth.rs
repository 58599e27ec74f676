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
    /// A workload's call, made for it by its node's agent: only its own instance, cluster and
    /// job are reachable (`http::guard`).
    pub workload: Option<gpucloud_model::InstanceId>,
    /// A project key's project: it creates there and sees only that project's work. `None`:
    /// the whole organization.
    pub project: Option<gpucloud_model::ProjectName>,
}

impl Principal {
    /// Whether this key may see and act on work of `project`.
    pub fn sees(&self, project: &gpucloud_model::ProjectName) -> bool {
        self.project.as_ref().is_none_or(|p| p == project)
    }

    /// The organization's money (balance, invoices, budget) is read with an organization-wide
    /// key; a project key sees its project's usage and ledger lines only.
    pub fn require_org_money(&self, what: &str) -> Result<(), AppError> {
        match &self.project {
            Some(p) => Err(AppError::Forbidden(format!(
                "key {} is scoped to project {p}: the organization's {what} needs an organization-wide key \
                 (a project key reads its project's usage: GET /v1/billing/usage)",
                self.key_prefix
            ))),
            None => Ok(()),
        }
    }

    /// An organization-wide admin key (not a project's, not read-only, not an agent's): it
    /// makes projects and sets their quotas.
    pub fn require_org_admin(&self) -> Result<(), AppError> {
        if self.scope != gpucloud_store::KeyScope::Admin || self.workload.is_some() {
            return Err(AppError::Forbidden("this needs an admin key".into()));
        }
        match &self.project {
            Some(p) => Err(AppError::Forbidden(format!(
                "key {} is scoped to project {p}: projects and quotas need an organization-wide admin key",
                self.key_prefix
            ))),
            None => Ok(()),
        }
    }

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
        Ok(Principal {
            tenant,
            key_id: key.id,
            key_prefix: key.prefix,
            scope: key.scope,
            node: key.node,
            workload: None,
            project: key.project,
        })
    }

    /// The principal of a workload whose node's agent (`by`) calls for it: the instance's
    /// tenant, limited to that instance. Refused unless `by` is the agent key of the node the
    /// instance runs on now (or an operator's key, which dev agents use) and it holds GPUs.
    pub async fn act_for_workload(&self, by: &Principal, instance: &str) -> Result<Principal, AppError> {
        let refuse = || AppError::Forbidden(format!("key {} cannot act for workload {instance}", by.key_prefix));
        let is_agent = by.scope == gpucloud_store::KeyScope::Agent;
        if !is_agent && by.tenant.role != Role::Operator {
            return Err(AppError::Forbidden("only a node's agent calls for a workload (Gpucloud-Workload)".into()));
        }
        let id = gpucloud_model::InstanceId::parse(instance).map_err(|_| refuse())?;
        let inst = self.store.get_instance(None, &id).await?.ok_or_else(refuse)?;
        if !inst.state.holds_gpus() {
            return Err(refuse());
        }
        let node = match &inst.node_id {
            Some(n) => self.store.get_node(n).await?.ok_or_else(refuse)?,
            None => return Err(refuse()),
        };
        if is_agent && by.node.as_deref() != Some(node.name.as_str()) {
            return Err(refuse());
        }
        let tenant = self.store.get_tenant(&inst.tenant_id).await?.ok_or_else(refuse)?;
        Ok(Principal {
            tenant,
            key_id: by.key_id.clone(),
            key_prefix: format!("{} for {}", by.key_prefix, inst.id),
            scope: gpucloud_store::KeyScope::Admin,
            node: None,
            project: Some(inst.sale.project.clone()),
            workload: Some(inst.id),
        })
    }
}
