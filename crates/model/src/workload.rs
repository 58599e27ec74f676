//! What a tenant's workload runs in and with: its image, its environment, the ports it exposes.
//! The rules here are the API's: the server checks requests against them, the store and the
//! agent rely on them.

use std::fmt;
use std::str::FromStr;

/// How an exposed port is reached: `http` through the server's authenticated proxy
/// (`/i/ID/PORT/`), `tcp` published on the node as a raw port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortProtocol {
    Http,
    Tcp,
}

/// A port the workload serves on, inside its container: `8888/http`, `22/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    pub port: u16,
    pub protocol: PortProtocol,
}

/// At most this many exposed ports per instance.
pub const MAX_PORTS: usize = 8;

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.protocol {
            PortProtocol::Http => "http",
            PortProtocol::Tcp => "tcp",
        };
        write!(f, "{}/{p}", self.port)
    }
}

impl FromStr for PortSpec {
    type Err = String;

    /// `PORT/http` or `PORT/tcp`, PORT 1 to 65535; a bare `PORT` is http.
    fn from_str(s: &str) -> Result<PortSpec, String> {
        let bad = || format!("port '{s}' is PORT/http or PORT/tcp with PORT 1 to 65535, e.g. 8888/http");
        let (port, protocol) = match s.split_once('/') {
            Some((p, "http")) => (p, PortProtocol::Http),
            Some((p, "tcp")) => (p, PortProtocol::Tcp),
            Some(_) => return Err(bad()),
            None => (s, PortProtocol::Http),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(PortSpec { port, protocol })
    }
}

/// A list of ports, each once, at most [`MAX_PORTS`].
pub fn parse_ports(specs: &[String]) -> Result<Vec<PortSpec>, String> {
    if specs.len() > MAX_PORTS {
        return Err(format!("at most {MAX_PORTS} ports per instance, got {}", specs.len()));
    }
    let mut out: Vec<PortSpec> = Vec::with_capacity(specs.len());
    for s in specs {
        let p: PortSpec = s.parse()?;
        if out.iter().any(|q| q.port == p.port) {
            return Err(format!("port {} is listed twice", p.port));
        }
        out.push(p);
    }
    Ok(out)
}

/// Variables gpucloud sets itself: a tenant cannot set or override them (some decide which GPUs
/// a container sees).
fn reserved_name(name: &str) -> bool {
    name.starts_with("GPUCLOUD_")
        || name.starts_with("NVIDIA_")
        || name.starts_with("CUDA_MPS_")
        || name.starts_with("CUDA_DEVICE_")
        || name == "CUDA_VISIBLE_DEVICES"
}

/// At most this many variables per instance, each value at most [`MAX_ENV_VALUE`] bytes.
pub const MAX_ENV: usize = 64;
pub const MAX_ENV_VALUE: usize = 32 * 1024;

/// What the value of `--env KEY=secret:NAME` starts with: the value is the tenant's secret NAME.
pub const SECRET_REF: &str = "secret:";

/// An environment variable's name: letters, digits and `_`, not starting with a digit, up to
/// 128 characters, and none that gpucloud sets itself.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(format!(
            "environment variable name '{}' is letters, digits and _ (not starting with a digit), up to 128",
            name.chars().take(140).collect::<String>()
        ));
    }
    if reserved_name(name) {
        return Err(format!(
            "environment variable {name} is set by gpucloud (GPUCLOUD_*, NVIDIA_*, CUDA_VISIBLE_DEVICES, CUDA_DEVICE_*, CUDA_MPS_*)"
        ));
    }
    Ok(())
}

/// A value: no NUL and no newline (the store keeps one variable per line), at most
/// [`MAX_ENV_VALUE`] bytes.
pub fn check_env_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_ENV_VALUE {
        return Err(format!("environment variable {name} is longer than {MAX_ENV_VALUE} bytes"));
    }
    if value.contains(['\0', '\n', '\r']) {
        return Err(format!("environment variable {name} holds a NUL or a line break"));
    }
    Ok(())
}

/// A secret's name: 1 to 64 letters, digits, `_`, `-` and `.`, starting with a letter.
pub fn check_secret_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret name '{}' is 1 to 64 letters, digits, _, - and . starting with a letter",
            name.chars().take(80).collect::<String>()
        ))
    }
}

/// A container image reference as Docker takes it: `[REGISTRY[:PORT]/]NAME[:TAG][@DIGEST]`,
/// lower-case path components, at most 255 characters. Checked for shape only: whether it
/// exists is the registry's answer, given when the node pulls it.
pub fn check_image(image: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("image '{}' {why}", image.chars().take(300).collect::<String>()));
    if image.is_empty() || image.len() > 255 {
        return bad("is 1 to 255 characters, e.g. ubuntu:24.04 or registry.example.com/team/app:v1");
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let hex_ok = d
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        if !hex_ok {
            return bad("has a digest that is not sha256: and 64 lower-case hex digits");
        }
    }
    // A tag follows the last ':' after the last '/' (a ':' before it is a registry's port).
    let last = rest.rsplit('/').next().unwrap_or(rest);
    let (path, tag) = match last.rsplit_once(':') {
        Some((_, t)) => (&rest[..rest.len() - t.len() - 1], Some(t)),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = (1..=128).contains(&t.len())
            && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return bad("has a tag that is not 1 to 128 letters, digits, _, . and -");
        }
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    // A first component with a '.' or ':' or that is "localhost" names a registry.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (name, port) = match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !name_ok || !port_ok {
            return bad("names a registry that is not HOST[:PORT]");
        }
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
    };
    if parts.is_empty() || !parts.iter().all(|c| component_ok(c)) {
        return bad("is not [REGISTRY/]NAME[:TAG] with a lower-case NAME of letters, digits, ., _ and -");
    }
    Ok(())
}

/// The registry an image is pulled from: its first path component when that names a host,
/// else Docker Hub (`docker.io`).
pub fn image_registry(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// A volume's size bounds, in GiB.
pub const MIN_VOLUME_GIB: u32 = 1;
pub const MAX_VOLUME_GIB: u32 = 64 * 1024;

/// A volume's name: 1 to 63 lower-case letters, digits and `-`, starting with a letter (it is
/// typed in `--volume NAME:/path`, so no `:` or `/`).
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "volume name '{}' is 1 to 63 lower-case letters, digits and - starting with a letter",
            name.chars().take(80).collect::<String>()
        ))
    }
}

/// A size in GiB from `100GiB`, `100Gi`, `100G`, `2TiB`, `2Ti`, `2T` or a bare `100` (GiB).
/// G and T are read as GiB and TiB: a volume is sold in binary units.
pub fn parse_volume_size(s: &str) -> Result<u32, String> {
    let bad = || {
        format!(
            "size '{}' is a whole number of GiB or TiB from {MIN_VOLUME_GIB} GiB to {} TiB, e.g. 100GiB or 2TiB",
            s.chars().take(40).collect::<String>(),
            MAX_VOLUME_GIB / 1024
        )
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor = match unit.trim() {
        "" | "G" | "Gi" | "GiB" | "g" | "gi" | "gib" => 1,
        "T" | "Ti" | "TiB" | "t" | "ti" | "tib" => 1024,
        _ => return Err(bad()),
    };
    let gib = n.checked_mul(factor).ok_or_else(bad)?;
    if !(u64::from(MIN_VOLUME_GIB)..=u64::from(MAX_VOLUME_GIB)).contains(&gib) {
        return Err(bad());
    }
    Ok(gib as u32)
}

/// Where a volume is mounted in an instance: `NAME:/abs/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub volume: String,
    pub path: String,
}

impl fmt::Display for VolumeMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.volume, self.path)
    }
}

impl FromStr for VolumeMount {
    type Err = String;

    /// `NAME:/path`: an absolute path of plain components (no `.`, `..` or empty ones), at most
    /// 200 bytes, not `/` and not under the directories the container runtime owns.
    fn from_str(s: &str) -> Result<VolumeMount, String> {
        let shown = s.chars().take(80).collect::<String>();
        let Some((volume, path)) = s.split_once(':') else {
            return Err(format!("volume '{shown}' is NAME:/path, e.g. data:/workspace"));
        };
        check_volume_name(volume)?;
        let path = path.trim_end_matches('/');
        let plain = path.starts_with('/')
            && path.len() <= 200
            && path[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['\0', ':', ',']))
            && !path.chars().any(char::is_control);
        if !plain {
            return Err(format!("mount path in '{shown}' must be an absolute path such as /workspace"));
        }
        let top = path[1..].split('/').next().unwrap_or("");
        if ["proc", "sys", "dev", "etc", "bin", "sbin", "lib", "lib64", "usr", "run", "boot"].contains(&top) {
            return Err(format!("a volume cannot be mounted at {path}: /{top} belongs to the container's system"));
        }
        Ok(VolumeMount { volume: volume.to_string(), path: path.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ports() {
        assert_eq!("8888/http".parse::<PortSpec>().unwrap(), PortSpec { port: 8888, protocol: PortProtocol::Http });
        assert_eq!("22/tcp".parse::<PortSpec>().unwrap().protocol, PortProtocol::Tcp);
        assert_eq!("80".parse::<PortSpec>().unwrap().protocol, PortProtocol::Http);
        for bad in ["0/http", "70000/tcp", "22/udp", "", "x/http", "22/"] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
        }
        assert!(parse_ports(&["8888/http".into(), "8888/tcp".into()]).unwrap_err().contains("twice"));
        assert!(parse_ports(&(1..=9).map(|p| p.to_string()).collect::<Vec<_>>()).is_err());
    }

    #[test]
    fn env_names_and_values() {
        for ok in ["HF_TOKEN", "_x", "a1"] {
            assert!(check_env_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "GPUCLOUD_PORT", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"] {
            assert!(check_env_name(bad).is_err(), "{bad}");
        }
        assert!(check_env_value("A", "x\ny").is_err());
        assert!(check_env_value("A", "x\0").is_err());
        assert!(check_env_value("A", &"x".repeat(MAX_ENV_VALUE + 1)).is_err());
    }

    #[test]
    fn images() {
        for ok in [
            "ubuntu",
            "ubuntu:24.04",
            "library/ubuntu",
            "nvcr.io/nvidia/pytorch:24.05-py3",
            "localhost:5000/team/app:v1",
            "registry.example.com/a/b/c",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(check_image(ok).is_ok(), "{ok}: {:?}", check_image(ok));
        }
        for bad in ["", "Ubuntu", "ubuntu:", "ubuntu:bad tag", "a//b", "-a", "busybox@md5:00", "host:99999/x", " x"] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
        assert_eq!(image_registry("nvcr.io/nvidia/pytorch:1"), "nvcr.io");
        assert_eq!(image_registry("localhost:5000/x"), "localhost:5000");
        assert_eq!(image_registry("library/ubuntu"), "docker.io");
        assert_eq!(image_registry("ubuntu"), "docker.io");
    }

    #[test]
    fn volumes() {
        assert_eq!(parse_volume_size("100GiB"), Ok(100));
        assert_eq!(parse_volume_size("2TiB"), Ok(2048));
        assert_eq!(parse_volume_size("7"), Ok(7));
        assert_eq!(parse_volume_size("1G"), Ok(1));
        for bad in ["", "0", "0GiB", "-1", "1.5GiB", "10MB", "65TiB", "99999999999999999999T", "GiB"] {
            assert!(parse_volume_size(bad).is_err(), "{bad}");
        }
        let m: VolumeMount = "data:/workspace".parse().unwrap();
        assert_eq!((m.volume.as_str(), m.path.as_str()), ("data", "/workspace"));
        assert_eq!("d-1:/mnt/x/".parse::<VolumeMount>().unwrap().path, "/mnt/x");
        for bad in
            ["data", "data:", "data:/", "data:rel", "Data:/w", "d:/a/../b", "d:/etc", "d:/proc/x", "d:/a,b", "d:/a:b"]
        {
            assert!(bad.parse::<VolumeMount>().is_err(), "{bad}");
        }
        assert!(check_volume_name("a").is_ok());
        assert!(check_volume_name(&"a".repeat(64)).is_err());
    }

    proptest! {
        #[test]
        fn a_port_reads_back_as_written(port in 1u16.., tcp in any::<bool>()) {
            let p = PortSpec { port, protocol: if tcp { PortProtocol::Tcp } else { PortProtocol::Http } };
            prop_assert_eq!(p.to_string().parse::<PortSpec>().unwrap(), p);
        }

        #[test]
        fn image_check_never_panics(s in "\\PC{0,300}") {
            let _ = check_image(&s);
            let _ = check_env_name(&s);
            let _ = check_secret_name(&s);
        }
    }
}
