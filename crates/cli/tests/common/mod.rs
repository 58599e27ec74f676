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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_dev(data: &Path, config: &Path) -> Dev {
    let out = data.with_extension(format!("out{}", rand::random::<u32>()));
    let child = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
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
