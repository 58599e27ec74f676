//! The agent's NVML backend through its real dynamic loading, on a machine without a GPU: a
//! stand-in `libnvidia-ml.so.1` (tests/fixtures/fake_nvml.c, compiled here with the system C
//! compiler) is found through LD_LIBRARY_PATH exactly where the driver's library would be.
//! Discovery, telemetry and per-process GPU memory go through nvml-wrapper as on a real card;
//! what only a card can show (its real values) is scripts/gpu-check.sh's job.

mod common;

use common::{Api, Proc, serving};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UUID0: &str = "GPU-fa6e0000-0000-4000-8000-000000000000";
const UUID1: &str = "GPU-fa6e0000-0000-4000-8000-000000000001";

/// Builds the stand-in library into `dir`.
fn fake_nvml(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_nvml.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(dir.join("libnvidia-ml.so.1"))
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("{cc}: {e} (a C compiler builds the stand-in NVML library)"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn agent(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::BIN);
    cmd.arg("agent")
        .args(args)
        .env("LD_LIBRARY_PATH", dir)
        .env("FAKE_NVML_PROCS", dir.join("procs"))
        .env("FAKE_NVML_XIDS", dir.join("xids"));
    cmd
}

#[test]
fn the_nvml_backend_discovers_reports_and_caps_through_the_library() {
    let root: PathBuf = std::env::temp_dir().join(format!("gpucloud-nvml-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    fake_nvml(&root);

    // Discovery and one reading, as an operator checks a new host.
    let probe = agent(&root, &["--server", "http://127.0.0.1:1", "--region", "eu-1", "--probe"]).output().unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "{text}{}", String::from_utf8_lossy(&probe.stderr));
    assert!(text.contains("backend: nvml"), "{text}");
    for (uuid, temp, watts) in [(UUID0, "41", "61.0"), (UUID1, "42", "62.0")] {
        let row = text.lines().find(|l| l.contains(uuid)).unwrap_or_else(|| panic!("{uuid}: {text}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1..6], ["A100-40GB", uuid, "40960", temp, watts], "{row}");
    }

    // A real agent on it: the node registers the library's GPUs and their readings.
    let out = root.join("serve.out");
    let _server = common::serve(&root, "127.0.0.1:0", &out, &[]);
    let (op, url) = serving(&out);
    let api = Api::new(&url);
    let _agent = Proc(
        agent(&root, &["--server", &url, "--name", "nvml-host", "--region", "eu-1"])
            .env("GPUCLOUD_AGENT_TOKEN", &op)
            .args(["--interval-ms", "100", "--stop-grace-s", "2", "--metadata-port", "0", "--ingress-port", "0"])
            .arg("--state-dir")
            .arg(root.join("agent"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let (_, nodes) = api.call(&op, "GET", "/v1/nodes", None);
        let n = nodes["nodes"].as_array().and_then(|n| n.first().cloned());
        if let Some(n) = n.filter(|n| n["gpus"][1]["reading"].is_object()) {
            break n;
        }
        let log = std::fs::read_to_string(root.join("agent.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "no node with readings: {nodes} {log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let uuids: Vec<&str> = node["gpus"].as_array().unwrap().iter().map(|g| g["uuid"].as_str().unwrap()).collect();
    assert_eq!(uuids, [UUID0, UUID1]);
    assert_eq!(node["gpus"][1]["model"], "A100-40GB");
    let r = &node["gpus"][1]["reading"];
    assert_eq!((r["temperature_c"].as_f64(), r["power_w"].as_f64()), (Some(42.0), Some(62.0)), "{r}");
    assert_eq!((r["memory_used_mib"].as_u64(), r["utilization_pct"].as_f64()), (Some(1025), Some(8.0)), "{r}");

    let (_, t) = api.call(&op, "POST", "/v1/tenants", Some(json!({"name": "acme"})));
    let key = t["api_key"].as_str().unwrap().to_string();
    let create = |body: serde_json::Value| {
        let (status, v) = api.call(&key, "POST", "/v1/instances", Some(body));
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    };

    // A whole GPU: the workload sees the UUID NVML gave for it.
    let seen = root.join("seen");
    let id = create(json!({"gpu": "A100-40GB", "count": 1,
        "command": format!("echo $CUDA_VISIBLE_DEVICES > {}; sleep 30", seen.display())}));
    let running = api.wait(&key, &id, "running", |v| v["state"] == "running");
    let want = if running["gpus"][0] == 0 { UUID0 } else { UUID1 };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&seen).unwrap_or_default().trim() != want {
        assert!(Instant::now() < deadline, "saw {:?}, not {want}", std::fs::read_to_string(&seen));
        std::thread::sleep(Duration::from_millis(50));
    }

    // A slice over its memory cap, as NVML reports its process: the agent ends it and says why.
    let pid_file = root.join("slice.pid");
    let slice = create(json!({"gpu": "A100-40GB", "count": 1, "gpu_share": 25, "gpu_memory_mib": 8192,
        "command": format!("echo $$ > {}; exec sleep 60", pid_file.display())}));
    let on = api.wait(&key, &slice, "running", |v| v["state"] == "running");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Ok(p) = std::fs::read_to_string(&pid_file).map(|p| p.trim().to_string())
            && !p.is_empty()
        {
            break p;
        }
        assert!(Instant::now() < deadline, "the slice never wrote its pid");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::fs::write(root.join("procs"), format!("{} {pid} 9000\n", on["gpus"][0])).unwrap();
    let failed = api.wait(&key, &slice, "ended", |v| v["state"] == "failed");
    assert_eq!(failed["reason"], "exceeded its GPU memory cap: 9000 MiB used of 8192 MiB", "{failed}");
    assert_eq!(api.call(&key, "GET", &format!("/v1/instances/{id}"), None).1["state"], "running", "the other runs on");

    // A harmless XID changes nothing; XID 79 (fallen off the bus) takes the GPU out of service.
    let free: usize = if running["gpus"][0] == 0 { 1 } else { 0 };
    std::fs::write(root.join("xids"), format!("{free} 13\n")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (_, n) = api.call(&op, "GET", &format!("/v1/nodes/{}", node["id"].as_str().unwrap()), None);
    assert_eq!(n["gpus"][free]["healthy"], true, "XID 13 is an application error: {n}");
    std::fs::write(root.join("xids"), format!("{free} 13\n{free} 79\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, n) = api.call(&op, "GET", &format!("/v1/nodes/{}", node["id"].as_str().unwrap()), None);
        if n["gpus"][free]["healthy"] == false {
            assert_eq!(n["gpus"][1 - free]["healthy"], true, "only that GPU: {n}");
            break;
        }
        assert!(Instant::now() < deadline, "XID 79 never took the GPU out: {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = create(json!({"gpu": "A100-40GB", "count": 1, "command": "sleep 30"}));
    std::thread::sleep(Duration::from_millis(500));
    let (_, v) = api.call(&key, "GET", &format!("/v1/instances/{s}"), None);
    assert_eq!(v["state"], "pending", "no new work on a failed GPU: {v}");
    let _ = std::fs::remove_dir_all(&root);
}
