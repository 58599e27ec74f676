//! End to end: the real `gpucloud dev` binary, driven by the real CLI, as a new user would;
//! then a kill -9 in the middle of creating instances and a restart on the same data directory.

use serde_json::Value;
use std::process::Command;
use std::time::Duration;

mod common;
use common::*;

#[test]
fn a_new_user_walks_through_dev_and_survives_kill_9() {
    let root = std::env::temp_dir().join(format!("gpucloud-e2e-{:016x}", rand::random::<u64>()));
    let data = root.join("data");
    let config = root.join("config");
    std::fs::create_dir_all(&root).unwrap();

    let dev = start_dev(&data, &config);
    let banner = std::fs::read_to_string(&dev.out).unwrap();
    assert!(banner.contains("operator key: gpc_") && banner.contains("tenant key:   gpc_"), "{banner}");

    // credentials.json: the documented shape, readable by the owner only.
    use std::os::unix::fs::PermissionsExt;
    let creds_path = data.join("credentials.json");
    let mode = std::fs::metadata(&creds_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(&creds_path).unwrap()).unwrap();
    let url = creds["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"));
    assert!(banner.contains(creds["tenant_key"].as_str().unwrap()));

    // The CLI works right away from the profile dev wrote.
    let inst = json(
        &config,
        &[
            "instance",
            "create",
            "--gpu",
            "A100-40GB",
            "--count",
            "2",
            "--region",
            "eu-1",
            "--command",
            "echo training on $CUDA_VISIBLE_DEVICES; exec sleep 600",
        ],
    );
    let id = inst["id"].as_str().unwrap().to_string();
    let running = wait_running(&config, &id);
    assert_eq!(running["gpus"].as_array().unwrap().len(), 2);
    let (ok, table, _) = cli(&config, &[], &["instance", "list"]);
    assert!(ok && table.contains(&id) && table.contains("running") && table.starts_with("ID"), "{table}");
    let nodes = json(&config, &["node", "list"]);
    assert!(nodes["nodes"].as_array().unwrap().len() >= 4);
    let (ok, cap, _) = cli(&config, &[], &["capacity"]);
    assert!(ok && cap.contains("eu-1") && cap.contains("us-1") && cap.contains("H100-80GB"), "{cap}");

    // A second tenant, with its own key through the environment, cannot see the first's instance.
    let second = json(&config, &["tenant", "create", "second"]);
    let key2 = second["api_key"].as_str().unwrap();
    let env2 = [("GPUCLOUD_API_KEY", key2), ("GPUCLOUD_URL", url.as_str())];
    let (ok, _, err) = cli(&config, &env2, &["instance", "show", &id]);
    assert!(!ok && err.contains("404") && err.contains("not_found"), "{err}");
    let (ok, _, err) = cli(&config, &env2, &["instance", "terminate", &id]);
    assert!(!ok && err.contains("404"), "{err}");
    let (_, list2, _) = cli(&config, &env2, &["instance", "list", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&list2).unwrap()["instances"], serde_json::json!([]));

    // Bad input is refused with a reason.
    let (ok, _, err) =
        cli(&config, &[], &["instance", "create", "--gpu", "A100-40GB", "--count", "-2", "--command", "x"]);
    assert!(!ok && err.contains("--count -2"), "{err}");
    let (ok, _, err) =
        cli(&config, &[], &["instance", "create", "--gpu", "A100-40GB", "--count", "0", "--command", "x"]);
    assert!(!ok && err.contains("422") && err.contains("[field: count]"), "{err}");

    // kill -9 while a client creates instances with idempotency keys, then restart and retry.
    let creator = {
        let config = config.clone();
        std::thread::spawn(move || {
            let mut confirmed = Vec::new();
            for k in 0..40 {
                let key = format!("batch-{k}");
                let (ok, out, _) = cli(
                    &config,
                    &[],
                    &[
                        "instance",
                        "create",
                        "--gpu",
                        "T4",
                        "--count",
                        "1",
                        "--command",
                        "sleep 1",
                        "--idempotency-key",
                        &key,
                        "--json",
                    ],
                );
                if ok {
                    let v: Value = serde_json::from_str(&out).unwrap();
                    confirmed.push((key, v["id"].as_str().unwrap().to_string()));
                }
            }
            confirmed
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let metadata_url = workload_env(&id, "GPUCLOUD_METADATA_URL").expect("the workload has a metadata endpoint");
    let mut dev = dev;
    dev.child.kill().unwrap(); // SIGKILL
    dev.child.wait().unwrap();
    let confirmed = creator.join().unwrap();
    assert!(!confirmed.is_empty(), "some creates finished before the kill");

    let dev2 = start_dev(&data, &config);
    let banner2 = std::fs::read_to_string(&dev2.out).unwrap();
    assert!(
        banner2.contains("not shown again") && !banner2.contains(creds["tenant_key"].as_str().unwrap()),
        "{banner2}"
    );
    // Everything from before is still there.
    assert_eq!(json(&config, &["instance", "show", &id])["id"], id.as_str());
    // The workload kept running and was adopted: the metadata URL it was started with answers
    // again (its agent took the same port back).
    let probe: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match probe.get(&metadata_url).call() {
            Ok(r) if r.status() == 200 => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "the adopted workload's metadata endpoint {metadata_url} does not answer: {:?}",
                other.map(|r| r.status())
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The client retries every create with the same keys.
    let mut ids = std::collections::BTreeMap::new();
    for k in 0..40 {
        let key = format!("batch-{k}");
        let v = json(
            &config,
            &["instance", "create", "--gpu", "T4", "--count", "1", "--command", "sleep 1", "--idempotency-key", &key],
        );
        ids.insert(key, v["id"].as_str().unwrap().to_string());
    }
    for (key, id) in &confirmed {
        assert_eq!(&ids[key], id, "{key} was confirmed before the kill and must not be created again");
    }
    let all = json(&config, &["instance", "list"]);
    let all = all["instances"].as_array().unwrap();
    assert_eq!(all.len(), 41, "one instance per key plus the first, none lost, none duplicated");

    // No GPU is held twice, and what nodes say matches what instances say.
    let nodes = json(&config, &["node", "list"]);
    let mut held = std::collections::BTreeSet::new();
    let mut allocated = 0;
    for n in nodes["nodes"].as_array().unwrap() {
        for g in n["gpus"].as_array().unwrap() {
            if let Some(owner) = g["instance"].as_str() {
                allocated += 1;
                let inst = all.iter().find(|i| i["id"] == owner).expect("owner exists");
                assert_eq!(inst["node"], n["id"]);
            }
        }
    }
    for i in all {
        for g in i["gpus"].as_array().unwrap() {
            assert!(held.insert((i["node"].as_str().unwrap().to_string(), g.as_u64().unwrap())), "GPU held twice");
        }
    }
    assert_eq!(held.len(), allocated);

    // The workload is a real process with its GPUs, and its output is there for the asking.
    let (ok, logs, _) = cli(&config, &[], &["instance", "logs", &id]);
    assert!(ok && logs.starts_with("training on GPU-fake-"), "{logs}");
    // The books are right after the kill: the billing checker finds nothing wrong.
    let (ok, out, err) = cli(&config, &[], &["admin", "check-billing"]);
    assert!(ok && out.contains("no second charged twice or lost"), "{out}{err}");
    // Stopping dev (Ctrl-C) stops the workloads it runs.
    let mut dev2 = dev2;
    send_sigint(dev2.child.id());
    let status = dev2.child.wait().unwrap();
    assert!(status.success(), "dev exits cleanly on Ctrl-C: {status:?}");
    // Any process started by this dev's agents carries its state directory in its environment.
    let marker = format!("GPUCLOUD_AGENT_STATE={}", data.canonicalize().unwrap().join("agents").display());
    let left = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("environ")).ok())
        .filter(|env| String::from_utf8_lossy(env).contains(&marker))
        .count();
    assert_eq!(left, 0, "workloads left running after Ctrl-C");
    drop(dev2);
    let _ = std::fs::remove_dir_all(&root);
}

/// A variable from the environment of the workload process of instance `id` (from /proc).
fn workload_env(id: &str, var: &str) -> Option<String> {
    let marker = format!("GPUCLOUD_INSTANCE_ID={id}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let vars: Vec<String> = env.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        if !vars.contains(&marker) {
            return None;
        }
        vars.iter().find_map(|v| v.strip_prefix(&format!("{var}=")).map(str::to_string))
    })
}

fn send_sigint(pid: u32) {
    let status = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_second_dev_cloud_gets_a_profile_of_its_own_and_leaves_the_default_alone() {
    let root = std::env::temp_dir().join(format!("gpucloud-profiles-{:016x}", rand::random::<u64>()));
    let config = root.join("config");
    std::fs::create_dir_all(&root).unwrap();
    let a = start_dev(&root.join("alpha"), &config);
    let banner = std::fs::read_to_string(&a.out).unwrap();
    assert!(banner.contains("CLI profile:  alpha (") && banner.contains("the default)"), "{banner}");
    let b = start_dev(&root.join("beta"), &config);
    let banner = std::fs::read_to_string(&b.out).unwrap();
    assert!(banner.contains("CLI profile:  beta (") && banner.contains("not the default"), "{banner}");

    // The default still reaches the first cloud; --profile (or GPUCLOUD_PROFILE) the second.
    let inst = json(&config, &["instance", "create", "--gpu", "T4", "--command", "sleep 600"]);
    let id = inst["id"].as_str().unwrap();
    let listed = |env: &[(&str, &str)], args: &[&str]| -> Value {
        let (ok, out, err) = cli(&config, env, args);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap()
    };
    let in_alpha = listed(&[], &["instance", "list", "--json"]);
    assert!(in_alpha["instances"].as_array().unwrap().iter().any(|i| i["id"] == id), "{in_alpha}");
    let in_beta = listed(&[], &["--profile", "beta", "instance", "list", "--json"]);
    assert_eq!(in_beta["instances"], serde_json::json!([]), "{in_beta}");
    let by_env = listed(&[("GPUCLOUD_PROFILE", "beta")], &["instance", "list", "--json"]);
    assert_eq!(by_env["instances"], serde_json::json!([]));
    let by_name = listed(&[], &["--profile", "alpha", "instance", "list", "--json"]);
    assert_eq!(by_name["instances"].as_array().unwrap().len(), 1);

    let (ok, _, err) = cli(&config, &[], &["--profile", "gamma", "instance", "list"]);
    assert!(!ok && err.contains("no profile named 'gamma'"), "{err}");
    let (ok, _, err) = cli(&config, &[], &["--profile", "../etc", "instance", "list"]);
    assert!(!ok && err.contains("must be 1 to 64 letters"), "{err}");
    json(&config, &["instance", "terminate", id]);
    drop((a, b));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_operator_fails_a_gpu_for_a_test_and_returns_it_from_the_cli() {
    let root = std::env::temp_dir().join(format!("gpucloud-gpufault-{:016x}", rand::random::<u64>()));
    let config = root.join("config");
    std::fs::create_dir_all(&root).unwrap();
    let _dev = start_dev(&root.join("data"), &config);
    let nodes = json(&config, &["node", "list"]);
    let node = nodes["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "eu1-t4-01").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out, err) = cli(&config, &[], &["admin", "simulate-gpu-fault", &node, "2"]);
    assert!(ok && out.contains("GPU 2 of node") && out.contains("degraded"), "{out}{err}");
    let (ok, out, _) = cli(&config, &[], &["node", "show", &node]);
    assert!(ok && out.contains("FAILED"), "{out}");
    let (ok, _, err) = cli(&config, &[], &["admin", "simulate-gpu-fault", &node, "2", "--xid", "13"]);
    assert!(!ok && err.contains("XID 13"), "{err}");
    // The agent's next reading of the GPU is clean (the fault was simulated at the server).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out, err) = cli(&config, &[], &["node", "gpu", "return", &node, "2", "--json"]);
        if ok {
            let n: Value = serde_json::from_str(&out).unwrap();
            assert_eq!((&n["health"], &n["gpus"][2]["healthy"]), (&Value::from("healthy"), &Value::from(true)));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never returned: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_team_splits_into_projects_with_gpu_quotas_from_the_cli() {
    let root = std::env::temp_dir().join(format!("gpucloud-projects-{:016x}", rand::random::<u64>()));
    let config = root.join("config");
    std::fs::create_dir_all(&root).unwrap();
    let dev = start_dev(&root.join("data"), &config);

    json(&config, &["project", "create", "ml-research"]);
    let q = json(
        &config,
        &["quota", "set", "--project", "ml-research", "--gpu", "A10", "--limit", "2", "--guaranteed", "1"],
    );
    assert_eq!((q["limit"].as_f64(), q["guaranteed"].as_f64()), (Some(2.0), Some(1.0)), "{q}");
    let first = json(
        &config,
        &["instance", "create", "--gpu", "A10", "--count", "2", "--project", "ml-research", "--command", "sleep 600"],
    );
    assert_eq!(first["project"], "ml-research");
    wait_running(&config, first["id"].as_str().unwrap());

    // Over the limit: refused with the numbers; with --on-quota wait, queued with the reason.
    let (ok, _, err) = cli(
        &config,
        &[],
        &["instance", "create", "--gpu", "A10", "--project", "ml-research", "--command", "sleep 600"],
    );
    assert!(!ok && err.contains("project ml-research is at its A10 limit: 2/2 GPUs"), "{err}");
    let (ok, _, err) =
        cli(&config, &[], &["instance", "create", "--gpu", "A10", "--on-quota", "later", "--command", "x"]);
    assert!(!ok && err.contains("fail") && err.contains("wait"), "the flag lists its values: {err}");
    let held = json(
        &config,
        &[
            "instance",
            "create",
            "--gpu",
            "A10",
            "--project",
            "ml-research",
            "--on-quota",
            "wait",
            "--command",
            "sleep 600",
        ],
    );
    let held_id = held["id"].as_str().unwrap().to_string();
    let (ok, out, err) = cli(&config, &[], &["quota", "show", "--project", "ml-research"]);
    assert!(ok, "{err}");
    assert!(out.contains("LIMIT") && out.contains("1 (1 GPUs)"), "one request waiting for one GPU:\n{out}");
    let shown = json(&config, &["instance", "show", &held_id]);
    assert!(shown["pending_reason"].as_str().unwrap_or("").contains("waiting for quota"), "{shown}");

    // Room frees: the held request runs.
    json(&config, &["instance", "terminate", first["id"].as_str().unwrap()]);
    wait_running(&config, &held_id);

    // A key of the project creates there and sees nothing else.
    let k = json(&config, &["key", "create", "--name", "ml-ci", "--project", "ml-research"]);
    let key = k["api_key"].as_str().unwrap().to_string();
    let elsewhere = json(&config, &["instance", "create", "--gpu", "T4", "--command", "sleep 600"]);
    assert_eq!(elsewhere["project"], "default");
    let (ok, out, err) = cli(&config, &[("GPUCLOUD_API_KEY", &key)], &["instance", "list", "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let projects: Vec<&str> =
        listed["instances"].as_array().unwrap().iter().map(|i| i["project"].as_str().unwrap()).collect();
    assert!(!projects.is_empty() && projects.iter().all(|p| *p == "ml-research"), "{listed}");
    let (ok, _, err) = cli(
        &config,
        &[("GPUCLOUD_API_KEY", &key)],
        &["quota", "set", "--project", "ml-research", "--gpu", "A10", "--limit", "99"],
    );
    assert!(!ok && err.contains("scoped to project ml-research"), "{err}");

    for id in [held_id.as_str(), elsewhere["id"].as_str().unwrap()] {
        json(&config, &["instance", "terminate", id]);
    }
    drop(dev);
    let _ = std::fs::remove_dir_all(&root);
}
