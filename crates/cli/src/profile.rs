//! Where the CLI finds its server and key: flags and GPUCLOUD_URL / GPUCLOUD_API_KEY first, then
//! a profile that `gpucloud dev` writes (as k3s writes a kubeconfig): the one `--profile` /
//! GPUCLOUD_PROFILE names (`profiles/NAME.json`), else the default (`config.json`).

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
    /// The profile's name; absent in a default written before profiles had names ("dev").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The dev cloud it reaches, by its data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
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

/// The default profile, or the named one.
pub fn profile_file(name: Option<&str>) -> PathBuf {
    match name {
        Some(n) => config_dir().join("profiles").join(format!("{n}.json")),
        None => profile_path(),
    }
}

pub fn load_profile(name: Option<&str>) -> Option<Profile> {
    read_profile(&profile_file(name))
}

fn read_profile(path: &Path) -> Option<Profile> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// 1 to 64 letters, digits, `-` or `_`: a file name anywhere.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(format!("profile name '{name}' must be 1 to 64 letters, digits, '-' or '_'")) }
}

/// Where a dev cloud's profile went.
pub struct Saved {
    pub name: String,
    pub path: PathBuf,
    /// Whether it is (now) the default profile.
    pub default: bool,
}

/// Saves a dev cloud's profile under `name` (given), or under a name of its own: `dev` for the
/// default data directory, else the directory's name, with `-2`, `-3`... when that name belongs
/// to another data directory. It becomes the default only when there is none, or the default is
/// this same profile (a restart on a new port); another cloud's default is left alone.
pub fn save_dev_profile(name: Option<&str>, mut prof: Profile, data_dir: &Path) -> Result<Saved, String> {
    let dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    let name = match name {
        Some(n) => {
            check_profile_name(n)?;
            n.to_string()
        }
        None => {
            let base = if dir == default_data_dir().canonicalize().unwrap_or_else(|_| default_data_dir()) {
                "dev".to_string()
            } else {
                let raw = dir.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                let clean: String = raw
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
                    .take(56)
                    .collect();
                if clean.is_empty() { "dev".into() } else { clean }
            };
            let mut n = 1;
            loop {
                let candidate = if n == 1 { base.clone() } else { format!("{base}-{n}") };
                match load_profile(Some(&candidate)) {
                    Some(p) if p.data_dir.as_deref().is_some_and(|d| d != dir) => n += 1,
                    _ => break candidate,
                }
            }
        }
    };
    prof.name = Some(name.clone());
    prof.data_dir = Some(dir);
    let path = profile_file(Some(&name));
    write_private_json(&path, &prof).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let default = match read_profile(&profile_path()) {
        None => true,
        Some(d) => d.name.as_deref().unwrap_or("dev") == name,
    };
    if default {
        write_private_json(&profile_path(), &prof).map_err(|e| format!("writing {}: {e}", profile_path().display()))?;
    }
    Ok(Saved { name, path, default })
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
