//! A node's ingress: how the server's authenticated proxy reaches a workload's HTTP ports.
//! Those ports are never published on the host; the server connects here, opens a tunnel with
//! one line naming the instance and port, signed with the secret this node got at registration
//! (HMAC-SHA256, valid for a short while), and the agent splices the connection to the
//! workload's container (or, for a process, to the port on this host). Without a valid
//! signature nothing is reached, so a workload port is open only to whom the server lets in.
//!
//! The line: `GPUCLOUD-INGRESS/1 INSTANCE PORT EXPIRES_MS MAC_HEX`; the answer `OK` or
//! `ERR reason`, then (after `OK`) the bytes of the workload's port.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server signs: the instance, the port and the expiry.
pub fn signature(secret: &[u8], instance: &str, port: u16, expires_ms: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{instance} {port} {expires_ms}").as_bytes());
    gpucloud_model::hex::encode(&mac.finalize().into_bytes())
}

/// A tunnel's line is good until its expiry, which may be at most this far ahead.
pub const MAX_VALIDITY_MS: i64 = 120_000;

type Targets = HashMap<(String, u16), SocketAddr>;

pub struct Ingress {
    port: u16,
    secret: Arc<Mutex<Option<Vec<u8>>>>,
    targets: Arc<Mutex<Targets>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Ingress {
    /// Listens on `port` (0: any) on every interface.
    pub fn start(port: u16) -> Result<Ingress, String> {
        let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("ingress port {port}: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let ingress = Ingress { port, secret: Default::default(), targets: Default::default() };
        let (secret, targets) = (ingress.secret.clone(), ingress.targets.clone());
        std::thread::Builder::new()
            .name("ingress".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let (secret, targets) = (secret.clone(), targets.clone());
                    let _ = std::thread::Builder::new().name("ingress-conn".into()).spawn(move || {
                        if let Err(e) = serve(conn, &secret, &targets) {
                            tracing::debug!(error = %e, "ingress connection");
                        }
                    });
                }
            })
            .map_err(|e| e.to_string())?;
        tracing::info!(port, "ingress listening (the server's proxy reaches workloads' HTTP ports here)");
        Ok(ingress)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The secret the server gave at registration (hex).
    pub fn set_secret(&self, hex: &str) {
        let bytes = gpucloud_model::hex::decode(hex);
        *self.secret.lock().unwrap_or_else(|e| e.into_inner()) = bytes.filter(|b| b.len() >= 16);
    }

    /// Where each running workload's HTTP ports are: (instance, port) -> address.
    pub fn set_targets(&self, targets: Targets) {
        *self.targets.lock().unwrap_or_else(|e| e.into_inner()) = targets;
    }
}

fn serve(mut conn: TcpStream, secret: &Mutex<Option<Vec<u8>>>, targets: &Mutex<Targets>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    (&mut reader).take(512).read_line(&mut line)?;
    let refuse = |conn: &mut TcpStream, why: &str| -> std::io::Result<()> {
        conn.write_all(format!("ERR {why}\n").as_bytes())?;
        Ok(())
    };
    let parts: Vec<&str> = line.trim_end().split(' ').collect();
    let [magic, instance, port, expires, mac] = parts.as_slice() else {
        return refuse(&mut conn, "bad request");
    };
    let (Ok(port), Ok(expires)) = (port.parse::<u16>(), expires.parse::<i64>()) else {
        return refuse(&mut conn, "bad request");
    };
    if *magic != "GPUCLOUD-INGRESS/1" {
        return refuse(&mut conn, "bad request");
    }
    let key = secret.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(key) = key else { return refuse(&mut conn, "not registered") };
    let mut check = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    check.update(format!("{instance} {port} {expires}").as_bytes());
    let given = gpucloud_model::hex::decode(mac).filter(|g| g.len() == 32);
    let now = now_ms();
    let valid = given.is_some_and(|g| check.verify_slice(&g).is_ok());
    if !valid || expires < now || expires > now + MAX_VALIDITY_MS {
        return refuse(&mut conn, "not authorized");
    }
    let target = targets.lock().unwrap_or_else(|e| e.into_inner()).get(&(instance.to_string(), port)).copied();
    let Some(target) = target else { return refuse(&mut conn, "the workload is not serving this port here") };
    let upstream = match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return refuse(&mut conn, &format!("nothing answers on port {port} in the workload ({e})")),
    };
    conn.write_all(b"OK\n")?;
    conn.set_read_timeout(None)?;
    // Bytes the reader took past the line belong to the workload.
    let early = reader.buffer().to_vec();
    let mut up_write = upstream.try_clone()?;
    up_write.write_all(&early)?;
    let mut down = conn.try_clone()?;
    let mut up_read = upstream;
    let pump = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_read, &mut down);
        // The workload is done: what it wrote still reaches the caller, and the other direction
        // stops waiting.
        let _ = down.shutdown(std::net::Shutdown::Both);
    });
    let _ = std::io::copy(&mut conn, &mut up_write);
    let _ = up_write.shutdown(std::net::Shutdown::Write);
    let _ = pump.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(port: u16, line: &str) -> (String, TcpStream) {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(line.as_bytes()).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut answer = String::new();
        r.read_line(&mut answer).unwrap();
        (answer.trim_end().to_string(), c)
    }

    #[test]
    fn only_a_signed_fresh_line_reaches_a_known_workload_port() {
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = upstream.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in upstream.incoming().flatten() {
                let mut buf = [0u8; 64];
                let n = c.read(&mut buf).unwrap_or(0);
                let _ = c.write_all(&[b"echo:", &buf[..n]].concat());
            }
        });
        let ingress = Ingress::start(0).unwrap();
        let secret = [7u8; 32];
        let hex = gpucloud_model::hex::encode(&secret);
        let line = |inst: &str, port: u16, exp: i64, key: &[u8]| {
            format!("GPUCLOUD-INGRESS/1 {inst} {port} {exp} {}\n", signature(key, inst, port, exp))
        };
        let exp = now_ms() + 30_000;
        assert_eq!(open(ingress.port(), &line("i-1", 8888, exp, &secret)).0, "ERR not registered");
        ingress.set_secret(&hex);
        assert_eq!(
            open(ingress.port(), &line("i-1", 8888, exp, &secret)).0,
            "ERR the workload is not serving this port here"
        );
        ingress.set_targets([(("i-1".to_string(), 8888), target)].into());
        let (ok, mut c) = open(ingress.port(), &line("i-1", 8888, exp, &secret));
        assert_eq!(ok, "OK");
        c.write_all(b"hello").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "echo:hello");
        for bad in [
            line("i-1", 8888, exp, &[8u8; 32]),
            line("i-1", 8888, now_ms() - 1, &secret),
            line("i-1", 8888, now_ms() + MAX_VALIDITY_MS + 60_000, &secret),
            line("i-1", 8888, exp, &secret).replace("i-1 8888", "i-1 8889"),
            line("i-2", 8888, exp, &secret).replace("i-2", "i-1"),
            "GET / HTTP/1.1\n".to_string(),
        ] {
            assert!(open(ingress.port(), &bad).0.starts_with("ERR"), "{bad}");
        }
    }
}
