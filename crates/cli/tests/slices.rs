//! GPU slices end to end through `gpucloud dev`: its agents run the workloads on fake GPUs that
//! model slice memory use.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn create(config: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["instance", "create", "--gpu", "A100-40GB", "--region", "us-1"];
    all.extend_from_slice(args);
    json(config, &all)
}

fn wait_state(config: &std::path::Path, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = json(config, &["instance", "show", id]);
        if v["state"] == want {
            return v;
        }
        assert!(Instant::now() < deadline, "{id} never became {want}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn four_quarter_slices_fill_an_a100_a_fifth_waits_and_a_greedy_one_is_stopped() {
    let root = std::env::temp_dir().join(format!("gpucloud-slices-{:08x}", rand::random::<u32>()));
    let (data, config) = (root.join("data"), root.join("config"));
    std::fs::create_dir_all(&root).unwrap();
    let _dev = start_dev(&data, &config);

    // us-1 has one A100-40GB node with 2 GPUs: a whole instance takes one of them.
    let whole = create(&config, &["--command", "exec sleep 600"]);
    let whole = wait_running(&config, whole["id"].as_str().unwrap());

    let mut slices = Vec::new();
    for i in 0..4 {
        let command = if i == 0 {
            // Declares 8000 MiB, then, once told, 12000: over its 10 GiB cap.
            "env | grep -E '^(CUDA|GPUCLOUD_GPU)' | sort; echo 8000 > $GPUCLOUD_FAKE_GPU_MEMORY_FILE; \
             while [ ! -e $GPUCLOUD_FAKE_GPU_MEMORY_FILE.go ]; do sleep 0.1; done; \
             echo 12000 > $GPUCLOUD_FAKE_GPU_MEMORY_FILE; exec sleep 600"
        } else {
            "exec sleep 600"
        };
        let v = create(&config, &["--gpu-memory", "10GiB", "--gpu-share", "25%", "--command", command]);
        assert_eq!((v["gpu_milli"].as_u64(), v["gpu_memory_mib"].as_u64()), (Some(250), Some(10240)));
        slices.push(v["id"].as_str().unwrap().to_string());
    }
    let running: Vec<Value> = slices.iter().map(|id| wait_running(&config, id)).collect();
    let gpu = &running[0]["gpus"];
    assert!(running.iter().all(|v| v["gpus"] == *gpu && v["node"] == whole["node"]), "{running:?}");
    assert_ne!(*gpu, whole["gpus"], "slices never share the whole instance's GPU");

    // The fifth waits, and says why.
    let fifth = create(&config, &["--gpu-memory", "10GiB", "--command", "exec sleep 600"]);
    let fifth_id = fifth["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pending = loop {
        let v = json(&config, &["instance", "show", fifth_id]);
        if v["pending_reason"].is_string() {
            break v;
        }
        assert!(Instant::now() < deadline, "no pending reason: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["pending_reason"], "no A100-40GB in us-1 has 25% / 10240 MiB free: 1 full");

    // The operator sees the slices on the node, and no whole A100 left in us-1.
    let node = whole["node"].as_str().unwrap();
    let (ok, shown, err) = cli(&config, &[], &["node", "show", node]);
    assert!(ok, "{err}");
    assert!(slices.iter().all(|id| shown.contains(&format!("{id} 25%"))), "{shown}");
    let cap = json(&config, &["capacity"]);
    let us1 = cap["regions"].as_array().unwrap().iter().find(|r| r["region"] == "us-1").unwrap();
    let a100 = us1["models"].as_array().unwrap().iter().find(|m| m["model"] == "A100-40GB").unwrap();
    assert_eq!(a100["free"], 0, "{a100}");

    // The slice's limits reached its workload (its output ships with the agent's next beats).
    let deadline = Instant::now() + Duration::from_secs(15);
    let logs = loop {
        let (ok, logs, err) = cli(&config, &[], &["instance", "logs", &slices[0]]);
        assert!(ok, "{err}");
        if logs.contains("GPUCLOUD_GPU_MILLI") || Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for want in ["CUDA_DEVICE_MEMORY_LIMIT=10240m", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25", "GPUCLOUD_GPU_MILLI=250"] {
        assert!(logs.contains(want), "{want} not in {logs}");
    }

    // Going over the cap ends it, with the reason shown; its room goes to the fifth.
    let mem_file = data.join("agents");
    let deadline = Instant::now() + Duration::from_secs(15);
    let go = loop {
        if let Some(f) = find_file(&mem_file, &slices[0]) {
            break f;
        }
        assert!(Instant::now() < deadline, "the workload never wrote its fake GPU memory file");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::fs::write(go.with_extension("go"), "").unwrap();
    let failed = wait_state(&config, &slices[0], "failed");
    assert_eq!(failed["reason"], "exceeded its GPU memory cap: 12000 MiB used of 10240 MiB");
    let (ok, shown, _) = cli(&config, &[], &["instance", "show", &slices[0]]);
    assert!(ok && shown.contains("reason:    exceeded its GPU memory cap"), "{shown}");
    let fifth = wait_running(&config, fifth_id);
    assert_eq!(fifth["gpus"], *gpu);
    let _ = std::fs::remove_dir_all(&root);
}

/// The file named `name` anywhere under `dir`.
fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(found) = find_file(&p, name) {
                return Some(found);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}
