//! How the agent, the CLI and the gateway check the certificate of the server they call, and
//! when they refuse to call it in clear.

use std::path::Path;
pub use ureq::tls::TlsConfig;
use ureq::tls::{PemItem, RootCerts};

/// The system's trusted roots, or only the certificates in `ca_file` (PEM) when one is given:
/// a private CA is trusted by naming its file, as curl's `--cacert` does.
pub fn client_config(ca_file: Option<&Path>) -> Result<TlsConfig, String> {
    let roots = match ca_file {
        None => RootCerts::PlatformVerifier,
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item.map_err(|e| format!("--ca-file {}: {e}", path.display()))? {
                    PemItem::Certificate(c) => certs.push(c),
                    _ => continue,
                }
            }
            if certs.is_empty() {
                return Err(format!("--ca-file {}: no PEM certificate in it", path.display()));
            }
            RootCerts::new_with_certs(&certs)
        }
    };
    Ok(TlsConfig::builder().root_certs(roots).build())
}

/// Whether `url` names this host (localhost or a loopback address), where plain HTTP never
/// crosses a network.
pub fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An agent sends its key with every call: over plain HTTP to another host anyone on the path
/// could read it and act as the node. Refused unless the operator says the network is trusted.
pub fn check_server_url(url: &str, allow_plain_http: bool) -> Result<(), String> {
    let lower = url.trim().to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Ok(());
    }
    if !lower.starts_with("http://") {
        return Err(format!("server '{url}' must be an https:// (or http:// on this host) URL"));
    }
    if is_loopback(url) || allow_plain_http {
        return Ok(());
    }
    Err(format!(
        "server '{url}' is plain HTTP to another host: the agent key would cross the network in clear. \
         Use https:// (with --ca-file for a private CA), or --allow-plain-http on a network you trust"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_this_host_unless_allowed() {
        for ok in ["http://127.0.0.1:8080", "http://localhost", "http://[::1]:7000/x", "https://gpu.example.com"] {
            assert!(check_server_url(ok, false).is_ok(), "{ok}");
        }
        for refused in ["http://10.0.0.5:8080", "http://gpu.example.com", "http://127.0.0.1.evil.com/", "ftp://x"] {
            assert!(check_server_url(refused, false).is_err(), "{refused}");
        }
        assert!(check_server_url("http://10.0.0.5:8080", true).is_ok());
        assert!(check_server_url("ftp://x", true).is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("gpucloud-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("empty.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let e = client_config(Some(&f)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        assert!(client_config(Some(&dir.join("missing.pem"))).unwrap_err().contains("missing.pem"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
