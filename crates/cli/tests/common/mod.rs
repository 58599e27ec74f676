//! Helpers shared by the end-to-end tests: the real `gpucloud dev` binary and the real CLI.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gpucloud");

pub struct Dev {
    pub child: Child,
    pub out: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// SIGTERM first, as a service manager would: `dev` and agents then stop their workloads
/// instead of leaving them running after the test (a SIGKILL orphans them). SIGKILL only if it
/// has not ended within 20 s.
fn terminate(child: &mut Child) {
    // Already waited for: its pid may be another process's by now.
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn start_dev(data: &Path, config: &Path) -> Dev {
    let out = data.with_extension(format!("out{}", rand::random::<u32>()));
    let child = Command::new(BIN)
        .args(["dev", "--runtime", "process", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("GPUCLOUD_CONFIG_DIR", config)
        .env_remove("GPUCLOUD_URL")
        .env_remove("GPUCLOUD_API_KEY")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("Try:") {
        assert!(Instant::now() < deadline, "dev did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Dev { child, out }
}

pub fn cli(config: &Path, env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("GPUCLOUD_CONFIG_DIR", config).env_remove("GPUCLOUD_URL").env_remove("GPUCLOUD_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

pub fn json(config: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = cli(config, &[], &all);
    assert!(ok, "gpucloud {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

pub fn wait_running(config: &Path, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = json(config, &["instance", "show", id]);
        if v["state"] == "running" {
            return v;
        }
        assert!(Instant::now() < deadline, "{id} never ran: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

pub struct Api {
    pub url: String,
    pub agent: ureq::Agent,
}

impl Api {
    pub fn call(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {key}");
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(serde_json::to_vec(&b).unwrap().as_slice()),
            (_, None) => self.agent.post(&url).header("Authorization", &auth).send_empty(),
        };
        let mut r = resp.unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn get_url(&self, url: &str) -> (u16, Value) {
        let mut r = self.agent.get(url).call().unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn wait(&self, key: &str, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = self.call(key, "GET", &format!("/v1/instances/{id}"), None);
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{id} never {what}: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The local image the Docker tests run workloads in (GPUCLOUD_TEST_DOCKER_IMAGE, which
/// `.ci/run` sets); `None`, said why, where it is not set. Under CI that is a failure.
pub fn docker_image(what: &str) -> Option<String> {
    let image = std::env::var("GPUCLOUD_TEST_DOCKER_IMAGE").ok().filter(|i| !i.is_empty());
    if image.is_none() {
        assert!(std::env::var("CI").is_err(), "under CI {what} needs GPUCLOUD_TEST_DOCKER_IMAGE");
        eprintln!("GPUCLOUD_TEST_DOCKER_IMAGE is not set: {what} does not run here");
    }
    image
}

/// `gpucloud serve` on `listen` with its SQLite file in `root`, a 1.5 s heartbeat grace, and its
/// stdout in `out`.
pub fn serve(root: &Path, listen: &str, out: &Path, extra: &[&str]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(["serve", "--listen", listen, "--heartbeat-grace-ms", "1500"])
            .args(extra)
            .arg("--database")
            .arg(format!("sqlite://{}/db.sqlite", root.display()))
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Waits for a first start's banner: the operator key and the URL.
pub fn serving(out: &Path) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("operator key: "))
            .map(|k| k.split_whitespace().next().unwrap().to_string());
        let url = text.lines().find_map(|l| l.strip_prefix("gpucloud serving on ")).map(str::to_string);
        if let (Some(k), Some(u)) = (key, url) {
            return (k, u);
        }
        assert!(Instant::now() < deadline, "serve did not start: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Api {
    pub fn new(url: &str) -> Api {
        let agent = gpucloud_client::local_agent(Duration::from_secs(10));
        Api { url: url.to_string(), agent }
    }
}

/// `gpucloud agent` with fake GPUs (`gpus` such as "A100-40GB:2"), beating every 100 ms.
pub fn start_agent(url: &str, key: &str, name: &str, state: &Path, gpus: &str) -> Proc {
    Proc(
        Command::new(BIN)
            .args(["agent", "--server", url, "--name", name, "--region", "eu-1"])
            .env("GPUCLOUD_AGENT_TOKEN", key)
            .args([
                "--fake-gpus",
                gpus,
                "--interval-ms",
                "100",
                "--stop-grace-s",
                "2",
                "--metadata-port",
                "0",
                "--ingress-port",
                "0",
            ])
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(state.with_extension("log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Processes whose command line contains `needle` (from /proc).
pub fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).replace('\0', " ").contains(needle))
        .count()
}
