//! The real agent, end to end: `gpucloud serve` plus two `gpucloud agent` processes with fake GPUs.
//! Workloads are real processes: they see exactly their GPUs, their output streams back, exit
//! codes map to states, stop is SIGTERM, and a kill -9'd agent adopts what it left running.

#[path = "common/billing.rs"]
#[allow(dead_code)]
mod billing;
mod common;

use common::{Api, Proc, processes_with, serving};
use gpucloud_model::Timestamp;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn start_agent(url: &str, key: &str, name: &str, state: &Path) -> Proc {
    common::start_agent(url, key, name, state, "A100-40GB:2")
}

/// Posting every second: a lost node's instance has usage posted past its last heartbeat, which
/// its settlement must give back.
fn serve(root: &Path, listen: &str, out: &Path) -> Proc {
    common::serve(root, listen, out, &["--posting-period-s", "1"])
}

#[test]
fn agents_run_real_workloads() {
    let root: PathBuf = std::env::temp_dir().join(format!("gpucloud-agent-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    // A fixed port, so the server can restart on the URL the agents know.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let out = root.join("serve.out");
    let mut server = serve(&root, &listen, &out);
    let (op, url) = serving(&out);
    let api = Api::new(&url);
    let mut a1 = start_agent(&url, &op, "host-1", &root.join("a1"));
    let _a2 = start_agent(&url, &op, "host-2", &root.join("a2"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, nodes) = api.call(&op, "GET", "/v1/nodes", None);
        let healthy = nodes["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["health"] == "healthy").count());
        if healthy == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "agents never registered: {nodes}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, t) = api.call(&op, "POST", "/v1/tenants", Some(json!({"name": "acme"})));
    let key = t["api_key"].as_str().unwrap().to_string();
    let create = |command: String, count: u32| {
        let (status, v) = api.call(
            &key,
            "POST",
            "/v1/instances",
            Some(json!({"gpu": "A100-40GB", "count": count, "command": command})),
        );
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    };

    // The workload sees exactly its GPUs; its output streams back; exit 3 is a failure with code 3.
    let env_dir = root.join("env");
    std::fs::create_dir_all(&env_dir).unwrap();
    let id = create(
        format!(
            "env > {}/$GPUCLOUD_INSTANCE_ID.env; echo hello from $GPUCLOUD_INSTANCE_ID; sleep 1; exit 3",
            env_dir.display()
        ),
        2,
    );
    let running = api.wait(&key, &id, "running", |v| v["state"] == "running");
    let (_, node) = api.call(&op, "GET", &format!("/v1/nodes/{}", running["node"].as_str().unwrap()), None);
    let mut expected: Vec<String> = node["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["instance"] == json!(id))
        .map(|g| g["uuid"].as_str().unwrap().to_string())
        .collect();
    expected.sort();
    let failed = api.wait(&key, &id, "failed", |v| v["state"] == "failed");
    assert_eq!(failed["exit_code"], 3);
    // Started again, it shows no exit status until this run ends: the last run's 3 is gone.
    let (status, again) = api.call(&key, "POST", &format!("/v1/instances/{id}/start"), None);
    assert_eq!((status, &again["state"], &again["exit_code"]), (200, &json!("pending"), &json!(null)), "{again}");
    let refailed = api.wait(&key, &id, "failed again", |v| v["state"] == "failed");
    assert_eq!(refailed["exit_code"], 3);
    let env = std::fs::read_to_string(env_dir.join(format!("{id}.env"))).unwrap();
    let visible = env.lines().find_map(|l| l.strip_prefix("CUDA_VISIBLE_DEVICES=")).unwrap();
    let mut visible: Vec<String> = visible.split(',').map(str::to_string).collect();
    visible.sort();
    assert_eq!((visible.len(), &visible), (2, &expected));
    assert!(env.contains(&format!("GPUCLOUD_INSTANCE_ID={id}")));
    assert!(env.contains("GPUCLOUD_METADATA_URL=http://127.0.0.1:"), "{env}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, logs) = api.call(&key, "GET", &format!("/v1/instances/{id}/logs"), None);
        let text: String = logs["chunks"].as_array().unwrap().iter().map(|c| c["data"].as_str().unwrap()).collect();
        if text.contains(&format!("hello from {id}")) {
            break;
        }
        assert!(Instant::now() < deadline, "logs never arrived: {logs}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Output that needs escaping in JSON, printed at once, arrives whole (it used to be refused as
    // too large, and retried forever).
    let big = create("head -c 200000 /dev/zero | tr '\\0' '\\001'; echo; echo done-big".into(), 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, logs) = api.call(&key, "GET", &format!("/v1/instances/{big}/logs"), None);
        let text: String = logs["chunks"].as_array().unwrap().iter().map(|c| c["data"].as_str().unwrap()).collect();
        if text.contains("done-big") {
            assert_eq!(text.chars().filter(|c| *c == '\u{1}').count(), 200_000);
            break;
        }
        assert!(Instant::now() < deadline, "the large output never arrived: {} bytes so far", text.len());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Exit 0 ends as stopped.
    let ok = create("true".into(), 1);
    let done = api.wait(&key, &ok, "stopped", |v| v["state"] == "stopped");
    assert_eq!(done["exit_code"], 0);

    // Stop sends SIGTERM to the workload, which ends; its GPUs come back.
    let long = create("exec sleep 1234".into(), 1);
    api.wait(&key, &long, "running", |v| v["state"] == "running");
    assert_eq!(processes_with("sleep 1234"), 1);
    api.call(&key, "POST", &format!("/v1/instances/{long}/stop"), None);
    api.wait(&key, &long, "stopped", |v| v["state"] == "stopped");
    assert_eq!(processes_with("sleep 1234"), 0, "the workload is gone");

    // kill -9 the agent running a workload; the restarted agent adopts it: one copy, still running.
    let (_, nodes) = api.call(&op, "GET", "/v1/nodes", None);
    let host2 = nodes["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "host-2").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.call(&op, "POST", &format!("/v1/nodes/{host2}/cordon"), None);
    let kept = create(format!("echo $GPUCLOUD_METADATA_URL > {}/kept.url; exec sleep 4321", env_dir.display()), 2);
    let before = api.wait(&key, &kept, "running", |v| v["state"] == "running");
    let meta_url = || std::fs::read_to_string(env_dir.join("kept.url")).unwrap_or_default().trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while meta_url().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, meta) = api.get_url(&meta_url());
    assert_eq!((status, meta["instance_id"].as_str()), (200, Some(kept.as_str())), "{meta}");
    assert_eq!(meta["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(processes_with("sleep 4321"), 1);
    a1.0.kill().unwrap();
    a1.0.wait().unwrap();
    let mut a1 = start_agent(&url, &op, "host-1", &root.join("a1"));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(processes_with("sleep 4321"), 1, "adopted, not started twice");
    let (_, after) = api.call(&key, "GET", &format!("/v1/instances/{kept}"), None);
    assert_eq!((after["state"].as_str(), &after["node"]), (Some("running"), &before["node"]));
    let (_, host1) = api.call(&op, "GET", &format!("/v1/nodes/{}", before["node"].as_str().unwrap()), None);
    assert_eq!(host1["health"], "healthy");
    api.call(&key, "POST", &format!("/v1/instances/{kept}/terminate"), None);
    api.wait(&key, &kept, "terminated", |v| v["state"] == "terminated");
    assert_eq!(processes_with("sleep 4321"), 0);

    // kill -9 the server while an agent runs a workload: after a restart nothing is lost or doubled.
    let survivor = create("exec sleep 2468".into(), 1);
    api.wait(&key, &survivor, "running", |v| v["state"] == "running");
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    server = serve(&root, &listen, &root.join("serve2.out"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.agent.get(format!("{url}/v1/health")).call().is_err() {
        assert!(Instant::now() < deadline, "server did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2000)); // past the grace period: agents kept beating
    let (_, back) = api.call(&key, "GET", &format!("/v1/instances/{survivor}"), None);
    assert_eq!(back["state"], "running", "{back}");
    assert_eq!(processes_with("sleep 2468"), 1, "still one copy");
    api.call(&key, "POST", &format!("/v1/instances/{survivor}/terminate"), None);
    api.wait(&key, &survivor, "terminated", |v| v["state"] == "terminated");

    // kill -9 the agent and leave it dead: past the grace period its node and instance are lost,
    // and billing ends at the last heartbeat.
    let gone = create("exec sleep 5678".into(), 1);
    api.wait(&key, &gone, "running", |v| v["state"] == "running");
    a1.0.kill().unwrap();
    a1.0.wait().unwrap();
    let killed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    api.wait(&key, &gone, "lost", |v| v["state"] == "lost");
    let (_, host1) = api.call(&op, "GET", &format!("/v1/nodes/{}", before["node"].as_str().unwrap()), None);
    assert_eq!(host1["health"], "lost");
    assert_eq!(processes_with("sleep 5678"), 1, "the workload outlived its agent");
    // The operator hears of the node, the tenant of its instance.
    let (_, alerts) = api.call(&op, "GET", "/v1/alerts", None);
    assert!(alerts["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "node_lost"), "{alerts}");
    let (_, alerts) = api.call(&key, "GET", "/v1/alerts", None);
    let lost = alerts["alerts"].as_array().unwrap().iter().find(|a| a["kind"] == "instance_lost");
    assert!(lost.is_some_and(|a| a["message"].as_str().unwrap().contains(&gone)), "{alerts}");

    // The agent returns: it registers again (next epoch) and stops what the server gave up on.
    let _a1 = start_agent(&url, &op, "host-1", &root.join("a1"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with("sleep 5678") > 0 {
        assert!(Instant::now() < deadline, "the lost instance's workload was never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, host1) = api.call(&op, "GET", &format!("/v1/nodes/{}", before["node"].as_str().unwrap()), None);
    assert_eq!((host1["health"].as_str(), host1["epoch"].as_i64()), (Some("healthy"), Some(3)));

    // A GPU that reports a fatal XID (79: fallen off the bus) is marked unhealthy and takes no work.
    std::fs::write(root.join("a2").join("fake-xid-1"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, n) = api.call(&op, "GET", &format!("/v1/nodes/{host2}"), None);
        if n["gpus"][1]["healthy"] == false {
            assert_eq!(n["gpus"][0]["healthy"], true);
            break;
        }
        assert!(Instant::now() < deadline, "XID never marked the GPU: {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = api
        .agent
        .get(format!("{url}/metrics"))
        .header("Authorization", &format!("Bearer {op}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("DCGM_FI_DEV_XID_ERRORS")
            && l.contains("Hostname=\"host-2\"")
            && l.ends_with(" 79"))
    );
    api.call(&op, "POST", &format!("/v1/nodes/{host2}/uncordon"), None);
    let one = create("exec sleep 3333".into(), 1);
    let placed = api.wait(&key, &one, "running", |v| v["state"] == "running");
    if placed["node"] == json!(host2) {
        assert_eq!(placed["gpus"], json!([0]), "never on the failed GPU");
    }
    let two = create("exec sleep 3334".into(), 2);
    let (_, pending) = api.call(&key, "GET", &format!("/v1/instances/{two}"), None);
    assert_ne!(pending["node"], json!(host2), "host-2 has one good GPU left");
    for id in [&one, &two] {
        api.call(&key, "POST", &format!("/v1/instances/{id}/terminate"), None);
        api.wait(&key, id, "terminated", |v| v["state"] == "terminated");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with("sleep 333") > 0 {
        assert!(Instant::now() < deadline, "workloads left behind");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The node shows degraded; the GPU comes back only once its agent reads it without the fault.
    let (_, n) = api.call(&op, "GET", &format!("/v1/nodes/{host2}"), None);
    assert_eq!(n["health"], "degraded", "{n}");
    let (status, r) = api.call(&op, "POST", &format!("/v1/nodes/{host2}/gpus/1/return"), None);
    assert_eq!(status, 409, "{r}");
    assert!(r["detail"].as_str().unwrap().contains("still reports XID 79"), "{r}");
    std::fs::remove_file(root.join("a2").join("fake-xid-1")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, r) = api.call(&op, "POST", &format!("/v1/nodes/{host2}/gpus/1/return"), None);
        if status == 200 {
            assert_eq!((&r["health"], &r["gpus"][1]["healthy"]), (&json!("healthy"), &json!(true)), "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "the GPU never passed its check: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Every instance here has ended: metering settles each interval, the lost one included.
    rt.block_on(billing::wait_settled(&format!("sqlite://{}/db.sqlite", root.display())));
    let _ = server.0.kill();
    let _ = server.0.wait();
    rt.block_on(async {
        let store = gpucloud_store::open(&format!("sqlite://{}/db.sqlite", root.display())).await.unwrap();
        let id = gpucloud_model::InstanceId::parse(&gone).unwrap();
        let last = store.instance_events(&id).await.unwrap().pop().unwrap();
        assert_eq!(last.to, gpucloud_model::InstanceState::Lost);
        let tenant = store.list_tenants().await.unwrap().into_iter().find(|t| t.name == "acme").unwrap();
        let interval =
            store.intervals_of_tenant(&tenant.id).await.unwrap().into_iter().find(|u| u.instance_id == id).unwrap();
        let ended = interval.ended_at.unwrap().millis();
        assert_eq!(ended, last.at.millis(), "billing ends where the history says");
        assert!(
            ended <= killed_at && ended > killed_at - 1000,
            "ended at the last heartbeat: {ended} vs kill at {killed_at}"
        );
        // Settled to the last heartbeat, whatever was posted while the node was silent.
        assert!(interval.settled, "{interval:?}");
        let prices = store.prices_for(interval.model, &interval.region, interval.tier).await.unwrap();
        let usage = gpucloud_billing::Usage {
            started_at: interval.started_at,
            free_until: interval.free_until,
            milli_gpus: interval.milli_gpus,
            rules: interval.rules,
            price_cap: interval.price_cap,
        };
        let due = usage.due(interval.ended_at.unwrap(), &prices);
        assert_eq!((interval.charged, interval.charged_seconds), (due.amount, due.seconds));
        let lines = store.ledger_lines(&tenant.id, Timestamp(0), Timestamp(i64::MAX)).await.unwrap();
        let posted: i64 = lines.iter().filter(|l| l.instance_id.as_ref() == Some(&id)).map(|l| l.amount.micros()).sum();
        assert_eq!(-posted, due.amount.micros(), "the ledger holds what it owes: {lines:?}");
        let now =
            Timestamp(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64);
        let report = gpucloud_server::app::billing_check::check_billing(store.as_ref(), now).await.unwrap();
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
    });
    let _ = std::fs::remove_dir_all(&root);
}

/// A TCP proxy on loopback that can cut the agent off from the server: while `cut` is set it drops
/// new connections and closes open ones, as a network partition would.
fn partition_proxy(upstream: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if flag.load(Ordering::SeqCst) {
                continue; // dropped: the agent sees a reset
            }
            let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
            for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                let flag = flag.clone();
                std::thread::spawn(move || {
                    from.set_read_timeout(Some(Duration::from_millis(50))).ok();
                    let mut buf = [0u8; 16384];
                    loop {
                        if flag.load(Ordering::SeqCst) {
                            break;
                        }
                        match from.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (url, cut)
}

/// An agent cut off longer than the grace period: its node and instance are lost; when the
/// partition heals, the same agent (same epoch) is taken back and stops the given-up workload.
#[test]
fn a_healed_partition_stops_what_was_given_up() {
    use std::sync::atomic::Ordering;
    let root: PathBuf = std::env::temp_dir().join(format!("gpucloud-partition-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = root.join("serve.out");
    let _server = serve(&root, &format!("127.0.0.1:{port}"), &out);
    let (op, url) = serving(&out);
    let api = Api::new(&url);
    let (proxy, cut) = partition_proxy(format!("127.0.0.1:{port}"));
    let _agent = start_agent(&proxy, &op, "island", &root.join("agent"));
    let (_, t) = api.call(&op, "POST", "/v1/tenants", Some(json!({"name": "acme"})));
    let key = t["api_key"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let (status, v) = api.call(
            &key,
            "POST",
            "/v1/instances",
            Some(json!({"gpu": "A100-40GB", "count": 1, "command": "exec sleep 9753"})),
        );
        if status == 201 {
            break v["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let running = api.wait(&key, &id, "running", |v| v["state"] == "running");
    let node = running["node"].as_str().unwrap().to_string();
    assert_eq!(processes_with("sleep 9753"), 1);

    cut.store(true, Ordering::SeqCst);
    api.wait(&key, &id, "lost", |v| v["state"] == "lost");
    assert_eq!(processes_with("sleep 9753"), 1, "the cut-off node still runs it");
    cut.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with("sleep 9753") > 0 {
        assert!(Instant::now() < deadline, "the given-up workload kept running after the partition healed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, n) = api.call(&op, "GET", &format!("/v1/nodes/{node}"), None);
    assert_eq!((n["health"].as_str(), n["epoch"].as_i64()), (Some("healthy"), Some(1)), "the same agent, taken back");
    let (_, inst) = api.call(&key, "GET", &format!("/v1/instances/{id}"), None);
    assert_eq!(inst["state"], "lost", "a late report does not resurrect it");
    // Billing ended at the last heartbeat and settled there; the healed node's late reports
    // change nothing: the checker finds every second charged once.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(billing::wait_settled(&format!("sqlite://{}/db.sqlite", root.display())));
    let (status, check) = api.call(&op, "GET", "/v1/admin/billing/check", None);
    assert_eq!((status, &check["problems"]), (200, &json!([])), "{check}");
    assert!(check["intervals"].as_u64() >= Some(1), "{check}");
    let _ = std::fs::remove_dir_all(&root);
}

/// A managed job whose node is cut off: the agent stops the attempt itself once no server has
/// answered for `--agent-stop-after-ms`, and the server starts the next attempt elsewhere only
/// after that, so the two never run at once (each attempt writes the time every 50 ms).
#[test]
fn a_cut_off_agent_stops_its_job_before_the_next_attempt_starts() {
    use std::sync::atomic::Ordering;
    let root: PathBuf = std::env::temp_dir().join(format!("gpucloud-fence-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = root.join("serve.out");
    let _server = common::serve(&root, &format!("127.0.0.1:{port}"), &out, &["--agent-stop-after-ms", "5000"]);
    let (op, url) = serving(&out);
    let api = Api::new(&url);
    let (proxy, cut) = partition_proxy(format!("127.0.0.1:{port}"));
    let _island = start_agent(&proxy, &op, "island", &root.join("island"));
    let (_, t) = api.call(&op, "POST", "/v1/tenants", Some(json!({"name": "acme"})));
    let key = t["api_key"].as_str().unwrap().to_string();
    let runs = root.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let command = format!("while true; do date +%s%N >> {}/$GPUCLOUD_INSTANCE_ID; sleep 0.05; done", runs.display());
    let files = || -> Vec<PathBuf> { std::fs::read_dir(&runs).unwrap().flatten().map(|e| e.path()).collect() };
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = loop {
        let (status, v) = api.call(
            &key,
            "POST",
            "/v1/jobs",
            Some(json!({"gpus": ["A100-40GB"], "count": 1, "command": command, "spot": false})),
        );
        if status == 201 {
            break v["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "{status} {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    while files().is_empty() {
        assert!(Instant::now() < deadline, "the first attempt never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Somewhere for the next attempt, then the island is cut off.
    let _mainland = start_agent(&url, &op, "mainland", &root.join("mainland"));
    cut.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while files().len() < 2 {
        assert!(Instant::now() < deadline, "the job never ran its next attempt");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let stamps = |p: &PathBuf| -> Vec<u128> {
        std::fs::read_to_string(p).unwrap().lines().filter_map(|l| l.trim().parse().ok()).collect()
    };
    let mut spans: Vec<(u128, u128)> = files()
        .iter()
        .map(stamps)
        .filter(|s| !s.is_empty())
        .map(|s| (*s.iter().min().unwrap(), *s.iter().max().unwrap()))
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let (first, second) = (spans[0], spans[1]);
    assert!(
        first.1 < second.0,
        "the first attempt ran until {} ns, {} ms after the second started",
        first.1,
        (first.1 - second.0) / 1_000_000
    );
    let log = std::fs::read_to_string(root.join("island.log")).unwrap_or_default();
    assert!(log.contains("stopping this node's workloads"), "{log}");
    // The second attempt's workload outlives its agent: stop it through the API first, or it
    // keeps running after the test.
    let (status, v) = api.call(&key, "POST", &format!("/v1/jobs/{job}/cancel"), None);
    assert_eq!(status, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, j) = api.call(&key, "GET", &format!("/v1/jobs/{job}"), None);
        let live = j["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| matches!(a["state"].as_str(), Some("provisioning" | "running" | "stopping")));
        if !live {
            break;
        }
        assert!(Instant::now() < deadline, "the cancelled job's workload never stopped: {j}");
        std::thread::sleep(Duration::from_millis(50));
    }
    cut.store(false, Ordering::SeqCst);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_agent_takes_its_settings_from_a_config_file_and_flags_win() {
    let root: PathBuf = std::env::temp_dir().join(format!("gpucloud-agent-config-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    let out = root.join("serve.out");
    let _server = serve(&root, "127.0.0.1:0", &out);
    let (op, url) = serving(&out);
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{url}\"\ntoken = \"{op}\"\nname = \"cfg-host\"\nregion = \"eu-1\"\nfake_gpus = \"T4:2\"\n\
             state_dir = \"{}\"\ninterval_ms = 100\nmetadata_port = 0\ningress_port = 0\n\n[labels]\nrack = \"r7\"\nzone = \"a\"\n",
            root.join("state").display()
        ),
    )
    .unwrap();
    let _agent = Proc(
        std::process::Command::new(common::BIN)
            .args(["agent", "--config"])
            .arg(&config)
            .args(["--region", "us-1", "--label", "zone=b"])
            .env_remove("GPUCLOUD_URL")
            .env_remove("GPUCLOUD_AGENT_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let env = [("GPUCLOUD_URL", url.as_str()), ("GPUCLOUD_API_KEY", op.as_str())];
    let deadline = Instant::now() + Duration::from_secs(20);
    let node = loop {
        let (ok, text, err) = common::cli(&root, &env, &["node", "list", "--label", "rack=r7", "--json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if let Some(n) = v["nodes"].as_array().and_then(|n| n.first()).filter(|n| n["health"] == "healthy") {
            break n.clone();
        }
        let log = std::fs::read_to_string(root.join("agent.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "no node labelled rack=r7: {v} {log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(node["name"], "cfg-host");
    assert_eq!(node["region"], "us-1", "the flag wins over the file");
    assert_eq!(node["labels"], json!({"rack": "r7", "zone": "b"}), "labels merge; the flag's value wins");
    assert_eq!(node["gpus_total"], 2);
    let (ok, text, _) = common::cli(&root, &env, &["node", "list", "--label", "zone=a"]);
    assert!(ok && !text.contains("cfg-host"), "{text}");

    // A setting the agent does not know is an error that names it.
    std::fs::write(&config, "regoin = \"eu-1\"\n").unwrap();
    let o = std::process::Command::new(common::BIN).args(["agent", "--config"]).arg(&config).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown field `regoin`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// The agent's key never travels in argv (where every local user reads /proc/PID/cmdline): there
/// is no --token flag; --token-file reads it, and GPUCLOUD_AGENT_TOKEN is removed from the
/// agent's own environment once read, so no workload it starts inherits it.
#[test]
fn the_agent_key_comes_from_a_file_or_the_environment_never_argv() {
    let root = std::env::temp_dir().join(format!("gpucloud-agent-key-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    let agent = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .arg("agent")
            .args([
                "--server",
                "http://127.0.0.1:1",
                "--region",
                "eu-1",
                "--fake-gpus",
                "T4:1",
                "--ingress-port",
                "0",
                "--state-dir",
            ])
            .arg(root.join("state"))
            .args(args)
            .env_remove("GPUCLOUD_AGENT_TOKEN")
            .output()
            .unwrap()
    };
    let o = agent(&["--token", "gpc_x"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--token"), "{o:?}");
    let o = agent(&[]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("--token-file") && err.contains("GPUCLOUD_AGENT_TOKEN"), "{err}");
    let missing = root.join("nope.key");
    let o = agent(&["--token-file", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("nope.key"), "{err}");
    // With a key in a file the agent goes on to reach the server (which is not there).
    let key = root.join("agent.key");
    std::fs::write(&key, "gpc_somekey\n").unwrap();
    let o = agent(&["--token-file", key.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("registering"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

/// `--runtime fake` runs nothing, yet beats like any agent: a workload is reported running until
/// it is stopped, so a control plane can be loaded with real agents and no workloads. It never
/// goes with a host's real GPUs.
#[test]
fn a_fake_runtime_agent_runs_nothing_and_reports_like_any_other() {
    let root: PathBuf = std::env::temp_dir().join(format!("gpucloud-agent-fake-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    let o = std::process::Command::new(common::BIN)
        .args(["agent", "--server", "http://127.0.0.1:9", "--region", "eu-1", "--runtime", "fake"])
        .env("GPUCLOUD_AGENT_TOKEN", "unused")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--runtime fake") && err.contains("--fake-gpus"), "{err}");

    let out = root.join("serve.out");
    let _server = serve(&root, "127.0.0.1:0", &out);
    let (op, url) = serving(&out);
    let api = Api::new(&url);
    let _agent = Proc(
        std::process::Command::new(common::BIN)
            .args(["agent", "--server", &url, "--name", "fake-1", "--region", "eu-1", "--runtime", "fake"])
            .args(["--fake-gpus", "A100-40GB:2", "--interval-ms", "100", "--metadata-port", "0", "--ingress-port", "0"])
            .arg("--state-dir")
            .arg(root.join("state"))
            .env("GPUCLOUD_AGENT_TOKEN", &op)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let (_, t) = api.call(&op, "POST", "/v1/tenants", Some(json!({"name": "acme"})));
    let key = t["api_key"].as_str().unwrap().to_string();
    let marker = root.join("ran");
    let (status, v) = api.call(
        &key,
        "POST",
        "/v1/instances",
        Some(json!({"gpu": "A100-40GB", "count": 2, "command": format!("touch {}", marker.display())})),
    );
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let running = api.wait(&key, &id, "running", |v| v["state"] == "running");
    assert!(running["node"].is_string(), "{running}");
    let (status, v) = api.call(&key, "POST", &format!("/v1/instances/{id}/stop"), None);
    assert_eq!(status, 200, "{v}");
    api.wait(&key, &id, "stopped", |v| v["state"] == "stopped");
    assert!(!marker.exists(), "the fake runtime ran the command");
    let log = std::fs::read_to_string(root.join("agent.log")).unwrap_or_default();
    assert!(log.contains("runtime: fake"), "{log}");
    let _ = std::fs::remove_dir_all(&root);
}
