//! Tenants' secrets: sealed at rest with the server's key (ChaCha20-Poly1305, the tenant and the
//! name as associated data, so a sealed value moved to another tenant or name does not open),
//! opened only to hand a workload its environment through its node's agent. No API answer, log
//! line or audit row carries a value: listing shows names and times.

use super::{App, AppError, Principal};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use gpucloud_model::TenantId;
use gpucloud_model::workload::{SECRET_REF, check_env_name, check_secret_name};
use gpucloud_store::SecretRow;
use std::collections::HashMap;
use std::path::Path;

/// A secret's value is at most this many bytes.
pub const MAX_SECRET_BYTES: usize = 32 * 1024;
/// A tenant keeps at most this many secrets.
pub const MAX_SECRETS: usize = 256;

/// The server's key for sealing secrets: 32 random bytes, kept in a file only its owner reads.
/// Every replica of one cloud needs the same key.
#[derive(Clone)]
pub struct SecretsKey([u8; 32]);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    pub fn generate() -> SecretsKey {
        SecretsKey(rand::random())
    }

    /// 64 hex digits.
    pub fn from_hex(text: &str) -> Result<SecretsKey, String> {
        let key = gpucloud_model::hex::decode(text.trim()).and_then(|b| <[u8; 32]>::try_from(b).ok());
        key.map(SecretsKey).ok_or_else(|| "a secrets key is 64 hex digits (32 bytes)".to_string())
    }

    /// The key in `path`, or a new one written there (0600) when the file does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<SecretsKey, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => SecretsKey::from_hex(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let key = SecretsKey::generate();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| format!("creating the secrets key {}: {e}", path.display()))?;
                f.write_all(format!("{}\n", gpucloud_model::hex::encode(&key.0)).as_bytes())
                    .map_err(|e| format!("writing the secrets key {}: {e}", path.display()))?;
                tracing::info!(path = %path.display(), "made a new secrets key: back it up, secrets cannot be read without it");
                Ok(key)
            }
            Err(e) => Err(format!("reading the secrets key {}: {e}", path.display())),
        }
    }

    fn aad(tenant: &TenantId, name: &str) -> Vec<u8> {
        format!("gpucloud-secret\0{tenant}\0{name}").into_bytes()
    }

    /// `v1:` and the hex of a random nonce and the ciphertext.
    pub fn seal(&self, tenant: &TenantId, name: &str, value: &str) -> String {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let nonce: [u8; 12] = rand::random();
        let aad = SecretsKey::aad(tenant, name);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value.as_bytes(), aad: &aad })
            .expect("encrypting in memory cannot fail");
        format!("v1:{}{}", gpucloud_model::hex::encode(&nonce), gpucloud_model::hex::encode(&sealed))
    }

    pub fn open(&self, tenant: &TenantId, name: &str, sealed: &str) -> Result<String, String> {
        let bad = || format!("secret '{name}' does not open with this server's key");
        let bytes = sealed.strip_prefix("v1:").and_then(gpucloud_model::hex::decode).ok_or_else(bad)?;
        // A nonce and at least the tag.
        if bytes.len() < 12 + 16 {
            return Err(bad());
        }
        let (nonce, body) = bytes.split_at(12);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let aad = SecretsKey::aad(tenant, name);
        let plain = cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: &aad }).map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

impl App {
    fn secrets_key(&self) -> Result<&SecretsKey, AppError> {
        self.config.secrets_key.as_ref().ok_or_else(|| {
            AppError::Conflict(
                "this server keeps no secrets: its operator must start it with --secrets-key-file PATH".into(),
            )
        })
    }

    /// Stores (or replaces) a secret of the caller's tenant; true if it is new.
    pub async fn put_secret(&self, by: &Principal, name: &str, value: &str) -> Result<(SecretRow, bool), AppError> {
        check_secret_name(name).map_err(|e| AppError::invalid("name", e))?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(AppError::invalid("value", format!("a secret is at most {MAX_SECRET_BYTES} bytes")));
        }
        if value.contains('\0') {
            return Err(AppError::invalid(
                "value",
                "a secret cannot hold a NUL byte (it is passed as an environment variable)",
            ));
        }
        let key = self.secrets_key()?;
        let tenant = &by.tenant.id;
        let existing = self.store.get_secret(tenant, name).await?;
        if existing.is_none() && self.store.list_secrets(tenant).await?.len() >= MAX_SECRETS {
            return Err(AppError::Conflict(format!("a tenant keeps at most {MAX_SECRETS} secrets; delete one first")));
        }
        let now = self.now();
        let row = SecretRow {
            tenant_id: tenant.clone(),
            name: name.to_string(),
            sealed: key.seal(tenant, name, value),
            created_at: existing.map_or(now, |e| e.created_at),
            updated_at: now,
        };
        let created = self.store.put_secret(&row).await?;
        tracing::info!(tenant = %by.tenant.name, secret = name, created, "secret stored");
        Ok((row, created))
    }

    pub async fn list_secrets(&self, by: &Principal) -> Result<Vec<SecretRow>, AppError> {
        Ok(self.store.list_secrets(&by.tenant.id).await?)
    }

    pub async fn delete_secret(&self, by: &Principal, name: &str) -> Result<(), AppError> {
        if self.store.delete_secret(&by.tenant.id, name).await? {
            tracing::info!(tenant = %by.tenant.name, secret = name, "secret deleted");
            Ok(())
        } else {
            Err(AppError::NotFound { kind: "secret", id: name.to_string() })
        }
    }

    /// Stores (or replaces) the caller's tenant's credentials for `registry`.
    pub async fn put_registry_auth(
        &self,
        by: &Principal,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<gpucloud_store::RegistryAuthRow, AppError> {
        let (host, port) = match registry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        };
        let host_ok = (1..=253).contains(&host.len())
            && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            && !host.starts_with(['.', '-']);
        if !host_ok || port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
            return Err(AppError::invalid(
                "registry",
                format!("registry '{registry}' is HOST[:PORT], e.g. nvcr.io, or docker.io for Docker Hub"),
            ));
        }
        if username.is_empty() || username.len() > 256 || username.chars().any(char::is_control) {
            return Err(AppError::invalid("username", "a username is 1 to 256 printable characters"));
        }
        if password.is_empty() || password.len() > 8192 || password.contains('\0') {
            return Err(AppError::invalid("password", "a password is 1 to 8192 bytes with no NUL"));
        }
        let key = self.secrets_key()?;
        let row = gpucloud_store::RegistryAuthRow {
            tenant_id: by.tenant.id.clone(),
            registry: registry.to_string(),
            username: username.to_string(),
            sealed: key.seal(&by.tenant.id, &format!("registry:{registry}"), password),
            created_at: self.now(),
        };
        self.store.put_registry_auth(&row).await?;
        tracing::info!(tenant = %by.tenant.name, registry, "registry credentials stored");
        Ok(row)
    }

    pub async fn list_registry_auths(&self, by: &Principal) -> Result<Vec<gpucloud_store::RegistryAuthRow>, AppError> {
        Ok(self.store.list_registry_auths(&by.tenant.id).await?)
    }

    pub async fn delete_registry_auth(&self, by: &Principal, registry: &str) -> Result<(), AppError> {
        if self.store.delete_registry_auth(&by.tenant.id, registry).await? {
            Ok(())
        } else {
            Err(AppError::NotFound { kind: "registry credentials", id: registry.to_string() })
        }
    }

    /// The tenant's credentials for the registry of `image`, opened, for the node that pulls it.
    pub(crate) async fn registry_auth_for(
        &self,
        inst: &gpucloud_store::Instance,
        image: &str,
        cache: &mut HashMap<TenantId, Vec<gpucloud_store::RegistryAuthRow>>,
    ) -> Result<Option<(String, String)>, AppError> {
        let Some(key) = self.config.secrets_key.as_ref() else { return Ok(None) };
        let rows = match cache.get(&inst.tenant_id) {
            Some(rows) => rows,
            None => {
                let rows = self.store.list_registry_auths(&inst.tenant_id).await?;
                cache.entry(inst.tenant_id.clone()).or_insert(rows)
            }
        };
        let registry = gpucloud_model::workload::image_registry(image);
        let Some(row) = rows.iter().find(|r| r.registry == registry) else { return Ok(None) };
        match key.open(&inst.tenant_id, &format!("registry:{registry}"), &row.sealed) {
            Ok(password) => Ok(Some((row.username.clone(), password))),
            Err(why) => {
                tracing::warn!(instance = %inst.id, registry, %why, "registry credentials left out");
                Ok(None)
            }
        }
    }

    /// A create request's environment as stored: each variable checked, `--secret NAME` as
    /// `NAME=secret:NAME`, every referred secret existing now (it is read again at start).
    /// A cluster's or pool's image, environment, secrets and ports, checked as an instance's
    /// are, kept for every member it starts.
    pub(crate) async fn member_workload(
        &self,
        tenant: &TenantId,
        image: Option<String>,
        env: &std::collections::BTreeMap<String, String>,
        secrets: &[String],
        ports: &[String],
    ) -> Result<gpucloud_store::MemberWorkload, AppError> {
        if let Some(image) = &image {
            gpucloud_model::workload::check_image(image).map_err(|e| AppError::invalid("image", e))?;
        }
        let ports = gpucloud_model::workload::parse_ports(ports).map_err(|e| AppError::invalid("ports", e))?;
        let env = self.check_env(tenant, env, secrets).await?;
        Ok(gpucloud_store::MemberWorkload { image, env, ports })
    }

    pub(crate) async fn check_env(
        &self,
        tenant: &TenantId,
        env: &std::collections::BTreeMap<String, String>,
        secrets: &[String],
    ) -> Result<Vec<(String, String)>, AppError> {
        use gpucloud_model::workload::{MAX_ENV, check_env_value};
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in env {
            check_env_name(k).map_err(|e| AppError::invalid("env", e))?;
            check_env_value(k, v).map_err(|e| AppError::invalid("env", e))?;
            out.push((k.clone(), v.clone()));
        }
        for name in secrets {
            check_env_name(name).map_err(|e| {
                AppError::invalid(
                    "secrets",
                    format!("{e}; use env {{\"VAR\": \"secret:{name}\"}} to pick the variable"),
                )
            })?;
            if out.iter().any(|(k, _)| k == name) {
                return Err(AppError::invalid("secrets", format!("{name} is set twice (in env and in secrets)")));
            }
            out.push((name.clone(), format!("{SECRET_REF}{name}")));
        }
        if out.len() > MAX_ENV {
            return Err(AppError::invalid(
                "env",
                format!("at most {MAX_ENV} environment variables, got {}", out.len()),
            ));
        }
        let referred: Vec<&str> = out.iter().filter_map(|(_, v)| v.strip_prefix(SECRET_REF)).collect();
        if !referred.is_empty() {
            self.secrets_key()?;
            let have: Vec<String> = self.store.list_secrets(tenant).await?.into_iter().map(|r| r.name).collect();
            for name in referred {
                if !have.iter().any(|h| h == name) {
                    return Err(AppError::invalid(
                        "env",
                        format!("no secret named '{name}': create it first (gpucloud secret set {name})"),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The environment a workload starts with: secret references replaced by their values.
    /// A secret deleted since the instance was created leaves its variable out (and says so in
    /// the server's log, by name).
    pub(crate) async fn open_env(
        &self,
        inst: &gpucloud_store::Instance,
        env: Vec<(String, String)>,
        cache: &mut HashMap<TenantId, Vec<SecretRow>>,
    ) -> Result<Vec<(String, String)>, AppError> {
        if !env.iter().any(|(_, v)| v.starts_with(SECRET_REF)) {
            return Ok(env);
        }
        let rows = match cache.get(&inst.tenant_id) {
            Some(rows) => rows,
            None => {
                let rows = self.store.list_secrets(&inst.tenant_id).await?;
                cache.entry(inst.tenant_id.clone()).or_insert(rows)
            }
        };
        let mut out = Vec::with_capacity(env.len());
        for (k, v) in env {
            let Some(name) = v.strip_prefix(SECRET_REF) else {
                out.push((k, v));
                continue;
            };
            let opened = match (self.config.secrets_key.as_ref(), rows.iter().find(|r| r.name == name)) {
                (Some(key), Some(row)) => key.open(&inst.tenant_id, name, &row.sealed),
                (None, _) => Err("this server has no secrets key".to_string()),
                (_, None) => Err(format!("secret '{name}' was deleted")),
            };
            match opened {
                Ok(value) => out.push((k, value)),
                Err(why) => {
                    tracing::warn!(instance = %inst.id, variable = %k, %why, "a secret is left out of a workload's environment")
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_tenant_and_name_with_its_key() {
        let key = SecretsKey::generate();
        let (a, b) = (TenantId::from_random(1), TenantId::from_random(2));
        let sealed = key.seal(&a, "HF_TOKEN", "hf_abc123");
        assert!(!sealed.contains("hf_abc123"));
        assert_eq!(key.open(&a, "HF_TOKEN", &sealed).unwrap(), "hf_abc123");
        assert!(key.open(&b, "HF_TOKEN", &sealed).is_err(), "another tenant");
        assert!(key.open(&a, "OTHER", &sealed).is_err(), "another name");
        assert!(SecretsKey::generate().open(&a, "HF_TOKEN", &sealed).is_err(), "another key");
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        assert!(key.open(&a, "HF_TOKEN", &String::from_utf8(tampered).unwrap()).is_err(), "tampered");
        assert_ne!(key.seal(&a, "HF_TOKEN", "hf_abc123"), sealed, "a fresh nonce each time");
        for junk in ["", "v1:", "v2:00", "v1:zz"] {
            assert!(key.open(&a, "HF_TOKEN", junk).is_err());
        }
    }

    #[test]
    fn keys_round_trip_through_their_file() {
        let dir = std::env::temp_dir().join(format!("gpucloud-secrets-key-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets.key");
        let made = SecretsKey::load_or_create(&path).unwrap();
        let read = SecretsKey::load_or_create(&path).unwrap();
        assert_eq!(made.0, read.0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "not a key").unwrap();
        assert!(SecretsKey::load_or_create(&path).is_err());
        assert!(format!("{made:?}").contains(".."), "Debug shows no key");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
