//! The server's edge, as strangers meet it. HTTPS set up as an operator would: `serve
//! --tls-cert --tls-key` with a certificate from a private CA made for the test; the CLI and a
//! real agent trust it through `--ca-file` and nothing else; a gateway terminating TLS in front
//! of a plain-HTTP server, whose audit log then names the client behind the proxy. And the
//! audit log written ahead: a call whose row cannot be written does not run.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A certificate for the same names that no CA the clients know signed.
    rogue_ca: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let ca = |cn: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca_cert, ca_key) = ca("gpucloud test CA");
    let (rogue_cert, _) = ca("someone else's CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let out = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        rogue_ca: dir.join("rogue-ca.pem"),
    };
    std::fs::write(&out.ca, ca_cert.pem()).unwrap();
    std::fs::write(&out.cert, cert.pem()).unwrap();
    std::fs::write(&out.key, key.serialize_pem()).unwrap();
    std::fs::write(&out.rogue_ca, rogue_cert.pem()).unwrap();
    out
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gpucloud-tls-{name}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str], ca: Option<&Path>) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("GPUCLOUD_URL").env_remove("GPUCLOUD_API_KEY").env_remove("GPUCLOUD_CA_FILE");
    cmd.env("GPUCLOUD_CONFIG_DIR", std::env::temp_dir().join("gpucloud-tls-no-profile"));
    if let Some(ca) = ca {
        cmd.arg("--ca-file").arg(ca);
    }
    let o = cmd.output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn serve_speaks_https_and_clients_trust_it_through_their_ca_file() {
    let dir = tmp("serve");
    let pki = pki(&dir);
    let out = dir.join("serve.out");
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
    let _server = serve(&dir, "127.0.0.1:0", &out, &["--tls-cert", cert, "--tls-key", key]);
    let (op, url) = serving(&out);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // The CLI with the test CA: works. With the system's roots or another CA: refused, and the
    // error says it is the certificate.
    let (ok, stdout, err) = run(&["--url", &url, "--api-key", &op, "--json", "whoami"], Some(&pki.ca));
    assert!(ok, "{err}");
    assert!(stdout.contains("\"role\""), "{stdout}");
    for ca in [None, Some(pki.rogue_ca.as_path())] {
        let (ok, _, err) = run(&["--url", &url, "--api-key", &op, "whoami"], ca);
        assert!(!ok, "an unknown issuer was trusted (ca {ca:?})");
        assert!(err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"), "{err}");
    }
    // Plain HTTP to the TLS port gets no API answer.
    let plain = url.replace("https://", "http://");
    let (ok, _, _) = run(&["--url", &plain, "--api-key", &op, "whoami"], None);
    assert!(!ok, "plain HTTP was answered on the TLS port");

    // A real agent over HTTPS with the CA file registers and heartbeats.
    let agent_key = op.clone();
    let state = dir.join("agent");
    let agent = |ca: Option<&Path>, name: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args(["agent", "--server", &url, "--name", name, "--region", "eu-1", "--fake-gpus", "A100-40GB:1"])
            .args(["--interval-ms", "100", "--metadata-port", "0", "--ingress-port", "0"])
            .arg("--state-dir")
            .arg(state.join(name))
            .env("GPUCLOUD_AGENT_TOKEN", &agent_key)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        Proc(cmd.spawn().unwrap())
    };
    let _trusting = agent(Some(&pki.ca), "tls-node");
    let _untrusting = agent(None, "no-ca-node");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, stdout, err) = run(&["--url", &url, "--api-key", &op, "--json", "node", "list"], Some(&pki.ca));
        assert!(ok, "{err}");
        let nodes: Value = serde_json::from_str(&stdout).unwrap();
        let names: Vec<&str> = nodes["nodes"].as_array().unwrap().iter().filter_map(|n| n["name"].as_str()).collect();
        assert!(!names.contains(&"no-ca-node"), "an agent trusted a certificate it had no CA for: {names:?}");
        if names.contains(&"tls-node") {
            break;
        }
        assert!(Instant::now() < deadline, "the agent never registered over HTTPS: {names:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The other agent may not have tried yet: wait for its refusal to be in its log.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(dir.join("no-ca-node.log")).unwrap_or_default();
        if log.to_lowercase().contains("certificate") || log.contains("UnknownIssuer") {
            break;
        }
        assert!(Instant::now() < deadline, "the agent without the CA never said why it failed: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, stdout, _) = run(&["--url", &url, "--api-key", &op, "--json", "node", "list"], Some(&pki.ca));
    assert!(!stdout.contains("no-ca-node"), "an agent trusted a certificate it had no CA for: {stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_agent_refuses_plain_http_to_another_host() {
    let dir = tmp("plain");
    let o = Command::new(BIN)
        .args(["agent", "--server", "http://192.0.2.10:7080", "--name", "n", "--region", "eu-1"])
        .args(["--fake-gpus", "A100-40GB:1", "--metadata-port", "0", "--ingress-port", "0"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("GPUCLOUD_AGENT_TOKEN", "gpc_agent_whatever")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("plain HTTP to another host") && err.contains("--allow-plain-http"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn behind_a_tls_terminating_gateway_the_audit_log_names_the_client() {
    let dir = tmp("proxy");
    let pki = pki(&dir);
    let out = dir.join("serve.out");
    let _server = serve(&dir, "127.0.0.1:0", &out, &[]);
    let (op, backend) = serving(&out);
    assert!(backend.starts_with("http://"), "{backend}");
    let gw_out = dir.join("gateway.out");
    let _gateway = Proc(
        Command::new(BIN)
            .args(["gateway", "--listen", "127.0.0.1:0", "--backend", &backend])
            .arg("--tls-cert")
            .arg(&pki.cert)
            .arg("--tls-key")
            .arg(&pki.key)
            .stdout(std::fs::File::create(&gw_out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let front = loop {
        let text = std::fs::read_to_string(&gw_out).unwrap_or_default();
        if let Some(u) = text.lines().find_map(|l| l.strip_prefix("gateway on ")) {
            break u.split_whitespace().next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the gateway did not start: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(front.starts_with("https://"), "{front}");
    let (ok, stdout, err) =
        run(&["--url", &front, "--api-key", &op, "--json", "tenant", "create", "behind-proxy"], Some(&pki.ca));
    assert!(ok, "{err}");
    assert!(stdout.contains("behind-proxy"), "{stdout}");
    let (ok, stdout, err) = run(&["--url", &front, "--api-key", &op, "--json", "audit"], Some(&pki.ca));
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    let row = rows["entries"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e["path"] == "/v1/tenants"))
        .unwrap_or_else(|| panic!("no audit row for the tenant create: {rows}"));
    let remote = row["remote"].as_str().unwrap();
    assert!(remote.contains("x-forwarded-for: 127.0.0.1"), "{remote}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_call_whose_audit_row_cannot_be_written_changes_nothing() {
    let dir = tmp("audit");
    let out = dir.join("serve.out");
    let _server = serve(&dir, "127.0.0.1:0", &out, &[]);
    let (op, url) = serving(&out);
    let cli = |args: &[&str]| run(&[&["--url", url.as_str(), "--api-key", op.as_str(), "--json"], args].concat(), None);
    let (ok, _, err) = cli(&["tenant", "create", "before"]);
    assert!(ok, "{err}");

    // The audit table goes away under the running server (what a full disk or a broken
    // database does to that one write).
    let db = format!("sqlite://{}/db.sqlite", dir.display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let exec = |sql: &'static str| {
        rt.block_on(async {
            use sqlx::ConnectOptions;
            let opts: sqlx::sqlite::SqliteConnectOptions = db.parse().unwrap();
            let mut c = opts.connect().await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
        })
    };
    exec("ALTER TABLE audit_log RENAME TO audit_log_away");
    let (ok, _, err) = cli(&["tenant", "create", "unaudited"]);
    assert!(!ok, "a call ran with no audit row");
    assert!(err.contains("audit_unavailable") && err.contains("503"), "{err}");
    exec("ALTER TABLE audit_log_away RENAME TO audit_log");

    let (ok, tenants, err) = cli(&["tenant", "list"]);
    assert!(ok, "{err}");
    assert!(
        tenants.contains("before") && !tenants.contains("unaudited"),
        "the refused call changed something: {tenants}"
    );
    let (ok, log, err) = cli(&["audit"]);
    assert!(ok, "{err}");
    let log: Value = serde_json::from_str(&log).unwrap();
    let creates: Vec<&Value> =
        log["entries"].as_array().unwrap().iter().filter(|e| e["path"] == "/v1/tenants").collect();
    assert_eq!(creates.len(), 1, "{log}");
    assert_eq!(creates[0]["status"], 201, "the row written ahead was finished with the answer: {log}");
    std::fs::remove_dir_all(&dir).ok();
}

/// An operator's placement settings: a bad policy or power weight stops `serve` with the flag
/// named; good ones start it.
#[test]
fn serve_checks_its_placement_settings() {
    let root = tmp("placement");
    let db = format!("sqlite://{}/db.sqlite", root.display());
    for (flags, want) in [
        (vec!["--power-weight=-1"], "--power-weight"),
        (vec!["--power-weight", "NaN"], "--power-weight"),
        (vec!["--policy", "smart"], "unknown policy 'smart'"),
    ] {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--database", &db];
        args.extend(flags.iter().copied());
        let (ok, _, err) = run(&args, None);
        assert!(!ok, "{flags:?} started");
        assert!(err.contains(want), "{flags:?}: {err}");
    }
    let out = root.join("out.txt");
    let _server = serve(&root, "127.0.0.1:0", &out, &["--policy", "fgd-cpu", "--power-weight", "2"]);
    serving(&out);
}
