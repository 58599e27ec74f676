//! Renters' SSH keys and how an instance is reached over SSH. A tenant's keys open sessions in
//! any of its running instances on a container node: the node's agent serves SSH itself (see
//! `gpucloud_agent::ssh`) and is given the instance's tenant's keys with every heartbeat, so a
//! key added or removed counts from the next beat. Only public keys are ever sent here.

use super::{App, AppError, Principal};
use gpucloud_model::{InstanceState, NodeId, TenantId};
use gpucloud_node::ssh_key::AuthorizedKey;
use gpucloud_store::SshKeyRow;
use std::collections::HashMap;

/// A tenant keeps at most this many SSH keys.
pub const MAX_SSH_KEYS: usize = 100;

fn check_name(name: &str) -> Result<(), AppError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid(
            "name",
            format!(
                "ssh key name '{}' is 1 to 64 letters, digits, _, -, . and @, starting with a letter or digit",
                name.chars().take(80).collect::<String>()
            ),
        ))
    }
}

/// The name a key gets when none is given: its comment where that makes a name.
fn default_name(key: &AuthorizedKey) -> String {
    if check_name(&key.comment).is_ok() {
        return key.comment.clone();
    }
    let digest: String =
        key.fingerprint.trim_start_matches("SHA256:").chars().filter(|c| c.is_ascii_alphanumeric()).take(8).collect();
    format!("key-{digest}")
}

impl App {
    /// Adds a public key to the caller's tenant: it opens sessions in the tenant's instances
    /// from their nodes' next heartbeat.
    pub async fn add_ssh_key(
        &self,
        by: &Principal,
        name: Option<&str>,
        public_key: &str,
    ) -> Result<SshKeyRow, AppError> {
        let key = AuthorizedKey::parse(public_key).map_err(|e| AppError::invalid("public_key", e))?;
        let name = match name {
            Some(n) => {
                check_name(n)?;
                n.to_string()
            }
            None => default_name(&key),
        };
        let existing = self.store.list_ssh_keys(&by.tenant.id).await?;
        if let Some(same) = existing.iter().find(|k| k.fingerprint == key.fingerprint) {
            return Err(AppError::Conflict(format!(
                "this key ({}) is already added as '{}'",
                key.fingerprint, same.name
            )));
        }
        if existing.iter().any(|k| k.name == name) {
            return Err(AppError::Conflict(format!("an ssh key named '{name}' already exists: give another --name")));
        }
        if existing.len() >= MAX_SSH_KEYS {
            return Err(AppError::Conflict(format!(
                "tenant has {MAX_SSH_KEYS} ssh keys, the most it may keep: remove one first"
            )));
        }
        let row = SshKeyRow {
            tenant_id: by.tenant.id.clone(),
            name,
            public_key: key.key,
            algorithm: key.algorithm,
            fingerprint: key.fingerprint,
            comment: key.comment.chars().filter(|c| !c.is_control()).take(200).collect(),
            created_at: self.now(),
        };
        self.store.insert_ssh_key(&row).await.map_err(AppError::store_conflict)?;
        tracing::info!(tenant = %by.tenant.id, name = %row.name, fingerprint = %row.fingerprint, "ssh key added");
        Ok(row)
    }

    pub async fn list_ssh_keys(&self, by: &Principal) -> Result<Vec<SshKeyRow>, AppError> {
        Ok(self.store.list_ssh_keys(&by.tenant.id).await?)
    }

    /// Removes a key by its name or fingerprint; sessions it opens are refused from the nodes'
    /// next heartbeat (sessions already open go on).
    pub async fn delete_ssh_key(&self, by: &Principal, name: &str) -> Result<(), AppError> {
        let keys = self.store.list_ssh_keys(&by.tenant.id).await?;
        let Some(key) = keys.iter().find(|k| k.name == name || k.fingerprint == name) else {
            return Err(AppError::NotFound { kind: "ssh key", id: name.to_string() });
        };
        self.store.delete_ssh_key(&by.tenant.id, &key.name).await?;
        tracing::info!(tenant = %by.tenant.id, name = %key.name, "ssh key removed");
        Ok(())
    }

    /// Records where a (re-)registered node's agent serves SSH and its host key. A key that
    /// is not one public key line is left out (the node then offers no SSH).
    pub(crate) async fn set_node_ssh(
        &self,
        node: &NodeId,
        port: Option<u16>,
        host_key: Option<&str>,
    ) -> Result<(), AppError> {
        let key = host_key.and_then(|k| AuthorizedKey::parse(k).ok());
        match (port.filter(|p| *p > 0), key) {
            (Some(p), Some(k)) => self.store.set_node_ssh(node, Some((p, &k.key))).await?,
            _ => self.store.set_node_ssh(node, None).await?,
        }
        Ok(())
    }

    /// The keys given to a node with a workload of `tenant` (cached per heartbeat).
    pub(crate) async fn ssh_keys_for(
        &self,
        tenant: &TenantId,
        cache: &mut HashMap<TenantId, Vec<String>>,
    ) -> Result<Vec<String>, AppError> {
        if let Some(keys) = cache.get(tenant) {
            return Ok(keys.clone());
        }
        let keys: Vec<String> = self.store.list_ssh_keys(tenant).await?.into_iter().map(|k| k.public_key).collect();
        cache.insert(tenant.clone(), keys.clone());
        Ok(keys)
    }

    /// The SSH endpoints of the nodes running `instances`, in one read.
    pub async fn ssh_nodes(&self, instances: &[gpucloud_store::Instance]) -> Result<SshNodes, AppError> {
        let mut ids: Vec<gpucloud_model::NodeId> =
            instances.iter().filter(|i| i.state == InstanceState::Running).filter_map(|i| i.node_id.clone()).collect();
        if ids.is_empty() {
            return Ok(SshNodes::new());
        }
        ids.sort();
        ids.dedup();
        Ok(self.store.nodes_ssh(&ids).await?)
    }
}

/// How a running instance is reached over SSH: the command line and the node's known_hosts
/// line; `None` when it is not running or its node serves no SSH.
pub fn ssh_line(inst: &gpucloud_store::Instance, nodes: &SshNodes) -> Option<(String, String)> {
    if inst.state != InstanceState::Running {
        return None;
    }
    let (host, port, host_key) = nodes.get(inst.node_id.as_ref()?)?;
    // known_hosts writes a non-default port as [host]:port; an IPv6 host is bracketed anyway.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let known = format!("[{bare}]:{port} {host_key}");
    let command = format!("ssh -p {port} {}@{bare}", inst.id);
    Some((command, known))
}

/// Nodes' SSH endpoints (host, port, host key) by node; a node without one is absent.
pub type SshNodes = std::collections::HashMap<gpucloud_model::NodeId, (String, u16, String)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_named_by_its_comment_when_that_makes_a_name() {
        let mut k = AuthorizedKey {
            algorithm: "ssh-ed25519".into(),
            fingerprint: "SHA256:SaKGsp2lkMJpZyTnnUn3WAjfy9aB83Vsx2/oIER705Q".into(),
            key: "ssh-ed25519 AAAA".into(),
            comment: "renter@laptop".into(),
        };
        assert_eq!(default_name(&k), "renter@laptop");
        k.comment = "my laptop key".into();
        assert_eq!(default_name(&k), "key-SaKGsp2l");
        assert!(check_name("-x").is_err() && check_name("").is_err() && check_name(&"a".repeat(65)).is_err());
    }
}
