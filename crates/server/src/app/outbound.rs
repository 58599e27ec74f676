//! Requests the server makes on a tenant's behalf (budget and alert webhooks): where they may go
//! and how the receiver knows they came from here. A tenant names the URL, so without a check
//! it could make the server reach what only the server can reach: its own loopback services, a
//! cloud's metadata endpoint, the private network behind it. Every address the URL's host names
//! is checked when the URL is set and again before each request; an operator allow-lists
//! networks that are meant to be reached (`serve --webhook-allow 10.1.2.0/24`).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A network in CIDR notation, for the operator's allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Net, String> {
        let bad = || format!("'{s}' is an address or a network in CIDR notation, e.g. 10.1.2.0/24 or fd00::/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().map_err(|_| bad())?, p.parse::<u8>().map_err(|_| bad())?),
            None => {
                let a = s.parse::<IpAddr>().map_err(|_| bad())?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Net { addr, prefix })
    }
}

impl Net {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, unmapped(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is that IPv4 address.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why the server must not send a tenant's request to `ip` (None: a public address).
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match unmapped(ip) {
        IpAddr::V4(a) => v4_range(a),
        IpAddr::V6(a) => v6_range(a),
    }
}

fn v4_range(a: Ipv4Addr) -> Option<&'static str> {
    let [o0, o1, o2, _] = a.octets();
    if a.is_loopback() {
        Some("a loopback address")
    } else if a.is_unspecified() || o0 == 0 {
        Some("an unspecified address (this host)")
    } else if a.is_link_local() {
        // 169.254.169.254 is the metadata service of most clouds.
        Some("a link-local address (cloud metadata services live there)")
    } else if a.is_private() {
        Some("a private address")
    } else if o0 == 100 && (o1 & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else if o0 == 192 && o1 == 0 && o2 == 0 {
        Some("an IETF protocol address")
    } else if o0 == 198 && (o1 & 0xfe) == 18 {
        Some("a benchmarking address")
    } else if a.is_multicast() || a.is_broadcast() || o0 >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else if a.is_documentation() {
        Some("a documentation address")
    } else {
        None
    }
}

fn v6_range(a: Ipv6Addr) -> Option<&'static str> {
    let first = a.segments()[0];
    if a.is_loopback() {
        Some("a loopback address")
    } else if a.is_unspecified() {
        Some("an unspecified address (this host)")
    } else if (first & 0xffc0) == 0xfe80 {
        Some("a link-local address (cloud metadata services live there)")
    } else if (first & 0xfe00) == 0xfc00 {
        // fd00:ec2::254 is a cloud metadata address too.
        Some("a private (unique local) address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else if first == 0x64 && a.segments()[1] == 0xff9b {
        Some("a NAT64 address (it can reach private IPv4)")
    } else if first == 0x2001 && a.segments()[1] == 0xdb8 {
        Some("a documentation address")
    } else {
        None
    }
}

/// The host and port of an http(s) URL.
fn host_port(url: &str) -> Result<(String, u16), String> {
    let uri: axum::http::Uri = url.parse().map_err(|_| format!("'{url}' is not a URL"))?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err("webhook_url must be an http:// or https:// URL".into()),
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("webhook_url may not carry a user name or password".into());
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("'{url}' names no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, uri.port_u16().unwrap_or(default_port)))
}

/// Resolves `url`'s host and checks every address it names: all must be public or on the
/// operator's allow-list. Returns the addresses, or why the URL is refused (naming the rule).
pub async fn check_url(url: &str, allow: &[Net]) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = host_port(url)?;
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("webhook_url's host '{host}' does not resolve: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("webhook_url's host '{host}' has no address"));
    }
    for a in &addrs {
        if let Some(range) = refused_range(a.ip())
            && !allow.iter().any(|n| n.contains(a.ip()))
        {
            return Err(format!(
                "webhook_url points at {} ({range}): the server does not send tenants' requests there \
                 unless an operator allows that network (serve --webhook-allow)",
                a.ip()
            ));
        }
    }
    Ok(addrs)
}

/// The `Gpucloud-Signature` header for `body` sent at `unix_seconds`: `t=SECONDS,v1=HEX`, where
/// HEX is HMAC-SHA256 under the tenant's webhook secret of `SECONDS.BODY`. The receiver
/// recomputes it and refuses old timestamps, so a captured request cannot be replayed later.
pub fn signature(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={unix_seconds},v1={}", gpucloud_model::hex::encode(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_are_not() {
        for a in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "169.254.169.254",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(refused_range(ip(a)).is_some(), "{a} must be refused");
        }
        for a in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "2606:4700::1111", "100.128.0.1"] {
            assert_eq!(refused_range(ip(a)), None, "{a} is public");
        }
    }

    #[test]
    fn allow_lists_are_networks() {
        let n: Net = "10.1.2.0/24".parse().unwrap();
        assert!(n.contains(ip("10.1.2.200")) && !n.contains(ip("10.1.3.1")));
        assert!("127.0.0.1".parse::<Net>().unwrap().contains(ip("::ffff:127.0.0.1")));
        assert!("0.0.0.0/0".parse::<Net>().unwrap().contains(ip("192.168.0.1")));
        assert!("fd00::/8".parse::<Net>().unwrap().contains(ip("fd12::1")));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Net>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_by_every_address_they_name() {
        let refused = check_url("http://127.0.0.1:9/x", &[]).await.unwrap_err();
        assert!(refused.contains("127.0.0.1 (a loopback address)"), "{refused}");
        assert!(check_url("http://[::1]/", &[]).await.unwrap_err().contains("loopback"));
        assert!(check_url("http://localhost:9/", &[]).await.unwrap_err().contains("loopback"));
        assert!(check_url("http://169.254.169.254/latest", &[]).await.unwrap_err().contains("link-local"));
        assert!(check_url("http://user:pw@1.1.1.1/", &[]).await.unwrap_err().contains("password"));
        assert!(check_url("ftp://1.1.1.1/", &[]).await.is_err());
        assert!(check_url("http://1.1.1.1/hook", &[]).await.is_ok());
        let allow = ["127.0.0.0/8".parse().unwrap()];
        assert!(check_url("http://127.0.0.1:9/x", &allow).await.is_ok());
    }

    #[test]
    fn signatures_are_hmac_sha256_of_time_and_body() {
        // As Python's hmac.new(b"whsec", b'1700000000.{"kind":"budget"}', hashlib.sha256) says.
        let sig = signature("whsec", 1_700_000_000, br#"{"kind":"budget"}"#);
        assert_eq!(sig, "t=1700000000,v1=58685960513344f7994788ad7db89d075525d0809ea81f73414946853114089d");
        assert_ne!(sig, signature("whsec", 1_700_000_001, br#"{"kind":"budget"}"#), "the time is signed");
    }
}
