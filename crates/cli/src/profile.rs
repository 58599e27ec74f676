//! Where the CLI finds its server and key: flags and GPUCLOUD_URL / GPUCLOUD_API_KEY first, then
//! the profile that `gpucloud dev` writes (as k3s writes a kubeconfig).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    pub url: String,
    /// The tenant key, used for tenant commands.
    pub api_key: Option<String>,
    /// Used for operator commands (nodes, tenants) when present.
    #[serde(default)]
    pub operator_key: Option<String>,
}

/// `DATA_DIR/credentials.json`, as the issue of the dev server defines it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub url: String,
    pub operator_key: String,
    pub tenant_key: String,
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GPUCLOUD_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) => PathBuf::from(x).join("gpucloud"),
        None => home().join(".config").join("gpucloud"),
    }
}

pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME") {
        Some(x) => PathBuf::from(x).join("gpucloud").join("dev"),
        None => home().join(".local").join("share").join("gpucloud").join("dev"),
    }
}

pub fn profile_path() -> PathBuf {
    config_dir().join("config.json")
}

pub fn load_profile() -> Option<Profile> {
    let text = std::fs::read_to_string(profile_path()).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes `value` as JSON readable by the owner only: it holds secrets.
pub fn write_private_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(serde_json::to_string_pretty(value)?.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    // Rename is atomic: a reader sees the old file or the new one, never half of one.
    std::fs::rename(&tmp, path)
}

pub fn read_credentials(data_dir: &Path) -> Option<Credentials> {
    let text = std::fs::read_to_string(data_dir.join("credentials.json")).ok()?;
    serde_json::from_str(&text).ok()
}
