//! `gpucloud gateway` in front of two backend processes: each round the backend answering is
//! killed with SIGKILL while a client sends requests through the gateway; every request must
//! still be answered (by the other side), and traffic must move back once the first returns.
//! Speed is `gpucloud bench failover`'s to report, not this test's. Then the way a user runs it:
//! a replica set in two regions under `gpucloud dev`, fronted by `gpucloud gateway --cluster`.

use serde_json::Value;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn killing_a_backend_loses_no_request() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpucloud"))
        .args(["--json", "bench", "failover", "--rounds", "4", "--rate", "200"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(v["rounds"], 4, "{v}");
    assert_eq!(v["failed_requests"], 0, "a request went unanswered across a kill: {v}");
    assert!(v["requests"].as_u64().unwrap() > 100, "{v}");
    // Every round found the survivor answering after the kill.
    assert!(v["switch_ms"]["max"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn the_gateway_refuses_bad_backends() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpucloud"))
        .args(["gateway", "--listen", "127.0.0.1:0", "--backend", "ftp://example"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be an http:// or https:// URL"));
}

/// The pid of the echo backend named `name` (a workload's instance id).
fn echo_pid(name: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse().ok()?;
        let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
        (cmd.contains("gateway-echo") && cmd.contains(name)).then_some(pid)
    })
}

/// The cluster once `pred` holds.
fn cluster_when(config: &std::path::Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let c = json(config, &["cluster", "show", "quant"]);
        if pred(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "the cluster never {what}: {c}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn serving(m: &Value) -> bool {
    m["state"] == "running" && m["endpoint"].is_string()
}

#[test]
fn a_gateway_follows_a_replica_set_through_a_member_crash() {
    let root = std::env::temp_dir().join(format!("gpucloud-gw-{:016x}", rand::random::<u64>()));
    let (data, config) = (root.join("data"), root.join("config"));
    std::fs::create_dir_all(&root).unwrap();
    let dev = start_dev(&data, &config);
    // Each member serves its own instance id on the port its agent gave it.
    let command = format!("exec {BIN} gateway-echo --listen 127.0.0.1:$GPUCLOUD_PORT --name $GPUCLOUD_INSTANCE_ID");
    let (ok, _, err) = cli(
        &config,
        &[],
        &["cluster", "create", "quant", "--gpu", "A100-40GB", "--replicas-in", "eu-1,us-1", "--command", &command],
    );
    assert!(ok, "{err}");
    let c = cluster_when(&config, "served from both regions", |c| {
        c["members"].as_array().is_some_and(|m| m.len() == 2 && m.iter().all(serving))
    });
    let first: Vec<String> = (0..2).map(|r| c["members"][r]["instance"].as_str().unwrap().to_string()).collect();
    for m in c["members"].as_array().unwrap() {
        assert!(m["endpoint"].as_str().unwrap().starts_with("127.0.0.1:"), "the node's --address: {m}");
    }

    let mut gateway = Proc(
        Command::new(BIN)
            .args(["gateway", "--cluster", "quant", "--listen", "127.0.0.1:0", "--health-path", "/health"])
            .args(["--discover-interval-ms", "200"])
            .env("GPUCLOUD_CONFIG_DIR", &config)
            .env_remove("GPUCLOUD_URL")
            .env_remove("GPUCLOUD_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut banner = String::new();
    std::io::BufReader::new(gateway.0.stdout.take().unwrap()).read_line(&mut banner).unwrap();
    let front = banner.split_whitespace().nth(2).expect("gateway on URL -> ...").to_string();
    assert!(
        banner.contains("cluster quant") && banner.contains(c["members"][0]["endpoint"].as_str().unwrap()),
        "{banner}"
    );

    // A client at a steady rate; every answer names the member that gave it.
    let answers: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (answers, stop) = (answers.clone(), stop.clone());
        std::thread::spawn(move || {
            let http: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            while !stop.load(Ordering::Relaxed) {
                let answer = match http.get(&format!("{front}/work")).call() {
                    Ok(mut r) if r.status() == 200 => Ok(r.body_mut().read_to_string().unwrap_or_default()),
                    Ok(mut r) => Err(format!("{}: {}", r.status(), r.body_mut().read_to_string().unwrap_or_default())),
                    Err(e) => Err(e.to_string()),
                };
                answers.lock().unwrap().push(answer);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let seen = |who: &str| answers.lock().unwrap().iter().any(|a| a.as_deref() == Ok(who));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen(&first[0]) {
        assert!(Instant::now() < deadline, "rank 0 (eu-1) never answered: {:?}", answers.lock().unwrap().last());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Rank 0's workload dies (kill -9): its region's side fails over to rank 1 at once, and the
    // cluster replaces the member, which the gateway picks up and goes back to.
    let pid = echo_pid(&first[0]).expect("rank 0's backend process");
    let before = answers.lock().unwrap().len();
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers.lock().unwrap()[before..].iter().any(|a| a.as_deref() == Ok(first[1].as_str())) {
        assert!(Instant::now() < deadline, "rank 1 never took over");
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = cluster_when(&config, "replaced rank 0", |c| {
        c["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["rank"] == 0 && m["instance"] != first[0].as_str() && serving(m)))
    });
    let replacement = c["members"].as_array().unwrap().iter().find(|m| m["rank"] == 0).unwrap()["instance"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen(&replacement) {
        assert!(Instant::now() < deadline, "traffic never moved to the new rank 0 {replacement}");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let answers = answers.lock().unwrap();
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(3)]
    );
    drop(gateway);
    // Stopped as a service manager stops it, dev takes its workloads with it: no echo backend
    // outlives the test.
    let members: Vec<String> = json(&config, &["cluster", "show", "quant"])["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["instance"].as_str().unwrap().to_string())
        .collect();
    drop(dev);
    for name in first.iter().chain(&members) {
        assert_eq!(echo_pid(name), None, "the backend of {name} outlived dev");
    }
    let _ = std::fs::remove_dir_all(&root);
}
