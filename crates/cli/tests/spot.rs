//! The spot market end to end: `gpucloud serve` with a 3 s preemption notice, one `gpucloud agent`
//! with four fake A100s, and a managed spot job whose workload counts to 12, checkpointing each
//! step through its metadata endpoint. On-demand demand preempts it twice; it finishes with the
//! right count, resuming each time from its last checkpoint, every attempt billed at spot prices,
//! and the notice reaching the workload at least 3 s before its SIGTERM.

mod common;

use common::{Api, BIN, serving};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NOTICE_MS: i64 = 3000;
const STEPS: u32 = 12;

fn counter_script(dir: &Path) -> String {
    // `sleep & wait` so SIGTERM is handled at once, not after the sleep.
    format!(
        r#"d={dir}; a=$GPUCLOUD_ATTEMPT; n=0
if [ -n "${{GPUCLOUD_RESUME_FROM:-}}" ]; then n=$(cat "$GPUCLOUD_RESUME_FROM"); fi
echo "attempt $a resumes at $n dir $GPUCLOUD_CHECKPOINT_DIR" >> $d/log
( {bin} metadata notice --wait 300 > $d/notice-$a && date +%s%3N > $d/seen-$a ) &
trap 'date +%s%3N > $d/term-$a; exit 143' TERM
while [ $n -lt {STEPS} ]; do
  sleep 1 & wait $!
  n=$((n+1)); echo $n > $d/ck-$a-$n
  {bin} metadata checkpoint $d/ck-$a-$n
  echo "attempt $a step $n" >> $d/log
done
echo $n > $d/done
"#,
        dir = dir.display(),
        bin = BIN
    )
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn job(api: &Api, key: &str, id: &str) -> Value {
    let (status, v) = api.call(key, "GET", &format!("/v1/jobs/{id}"), None);
    assert_eq!(status, 200, "{v}");
    v
}

fn read_ms(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn a_spot_job_survives_two_preemptions() {
    let root: PathBuf = std::env::temp_dir().join(format!("gpucloud-spot-{:016x}", rand::random::<u64>()));
    let ck = root.join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    let out = root.join("serve.out");
    let market = [
        "--tick-ms",
        "100",
        "--spot-notice",
        "3",
        "--spot-min-notice",
        "1",
        "--spot-min-runtime",
        "0",
        "--spot-price-interval",
        "0.5",
        "--spot-floor-percent",
        "30",
    ];
    let _server = common::serve(&root, "127.0.0.1:0", &out, &market);
    let (op, url) = serving(&out);
    let api = Api::new(&url);
    let _agent = common::start_agent(&url, &op, "host-1", &root.join("agent"), "A100-40GB:4");
    wait_for("the agent", 20, || {
        let (_, nodes) = api.call(&op, "GET", "/v1/nodes", None);
        (nodes["nodes"].as_array()?.iter().filter(|n| n["health"] == "healthy").count() == 1).then_some(())
    });
    let (status, v) = api.call(
        &op,
        "POST",
        "/v1/prices",
        Some(json!({"gpu": "A100-40GB", "region": "eu-1", "price_per_gpu_hour": "2.00"})),
    );
    assert_eq!(status, 201, "{v}");
    let (_, t) = api.call(&op, "POST", "/v1/tenants", Some(json!({"name": "acme"})));
    let key = t["api_key"].as_str().unwrap().to_string();

    // The market prices spot between the floor (30% of 2.00) and on-demand.
    let spot = wait_for("a spot price", 10, || {
        let (s, v) = api.call(&key, "GET", "/v1/spot/prices?gpu=A100-40GB&region=eu-1", None);
        (s == 200 && v["current_per_gpu_hour"].is_string()).then_some(v)
    });
    assert_eq!(spot["floor_per_gpu_hour"], "0.600000", "{spot}");

    let (status, j) = api.call(
        &key,
        "POST",
        "/v1/jobs",
        Some(json!({
            "name": "count", "gpus": ["A100-40GB"], "count": 1, "command": counter_script(&ck),
            "checkpoint_dir": ck.display().to_string(), "max_restarts": 5, "max_price_per_gpu_hour": "1.90",
        })),
    );
    assert_eq!(status, 201, "{j}");
    let jid = j["id"].as_str().unwrap().to_string();

    // Two rounds: let the attempt get a few steps in, then on-demand work for all four GPUs takes
    // them back; once it ends, the next attempt resumes from the checkpoint.
    for round in 1..=2u32 {
        wait_for("a few checkpoints", 30, || {
            let v = job(&api, &key, &jid);
            let last = v["history"].as_array()?.last()?.clone();
            // Checkpoints are named ck-ATTEMPT-STEP.
            let cp = v["checkpoint"].as_str()?.rsplit('/').next()?.to_string();
            let step: u32 = cp.strip_prefix(&format!("ck-{round}-"))?.parse().ok()?;
            (last["state"] == "running" && last["attempt"] == round && step >= 3 * round).then_some(())
        });
        let (status, od) = api.call(
            &key,
            "POST",
            "/v1/instances",
            Some(json!({"gpu": "A100-40GB", "count": 4, "command": "sleep 600"})),
        );
        assert_eq!(status, 201, "{od}");
        let od_id = od["id"].as_str().unwrap().to_string();
        let victim = job(&api, &key, &jid)["history"][round as usize - 1]["instance"].as_str().unwrap().to_string();
        let noticed = api.wait(&key, &victim, "noticed", |v| v["preemption"]["deadline"].is_string());
        let reason = noticed["preemption"]["reason"].as_str().unwrap();
        assert!(reason.contains(&od_id) && reason.contains("least work"), "{reason}");
        api.wait(&key, &od_id, "running", |v| v["state"] == "running");
        let ended = api.wait(&key, &victim, "stopped", |v| v["state"] == "stopped");
        assert!(ended["reason"].as_str().unwrap().starts_with("preempted: "), "{ended}");
        wait_for("the next attempt", 10, || {
            let v = job(&api, &key, &jid);
            (v["history"].as_array()?.len() == round as usize + 1).then_some(())
        });
        let (status, v) = api.call(&key, "POST", &format!("/v1/instances/{od_id}/terminate"), None);
        assert_eq!(status, 200, "{v}");
    }

    let done = wait_for("the job to succeed", 60, || {
        let v = job(&api, &key, &jid);
        (v["state"] != "running" && v["state"] != "pending").then_some(v)
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 3);
    assert_eq!(done["restarts"], 2);
    assert_eq!(std::fs::read_to_string(ck.join("done")).unwrap().trim(), STEPS.to_string());

    // No work lost beyond the last checkpoint: each attempt resumes where the last one's last
    // reported checkpoint left it.
    let log = std::fs::read_to_string(ck.join("log")).unwrap();
    let mut last_step = 0;
    let mut resumes = Vec::new();
    for line in log.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["attempt", _, "resumes", "at", n, "dir", _] => resumes.push((n.parse::<u32>().unwrap(), last_step)),
            ["attempt", _, "step", n] => last_step = n.parse().unwrap(),
            _ => panic!("unexpected log line {line:?}"),
        }
    }
    assert_eq!(resumes.len(), 3, "{log}");
    assert_eq!(resumes[0], (0, 0));
    for (resumed_at, reached) in &resumes[1..] {
        // A step finished but not yet reported when SIGTERM came is the only work redone.
        assert!(*resumed_at == *reached || *resumed_at + 1 == *reached, "{log}");
        assert!(*resumed_at >= 3, "{log}");
    }

    // Each attempt is billed, at spot prices: between the floor and on-demand per billed second.
    let history = done["history"].as_array().unwrap();
    for a in history {
        assert_eq!(a["tier"], "spot", "{a}");
        let cost: f64 = a["cost"].as_str().unwrap().parse().unwrap();
        let secs = a["billed_seconds"].as_i64().unwrap() as f64;
        assert!(secs >= 60.0, "the 60 s minimum applies per attempt: {a}");
        assert!(cost >= 0.6 * secs / 3600.0 - 1e-6 && cost < 2.0 * secs / 3600.0, "{a}");
    }
    assert_eq!(history[1]["resumed_from"].as_str().unwrap().rsplit('/').next().unwrap().split('-').nth(1), Some("1"));

    // The notice reached the workload at least the configured time before its SIGTERM.
    for a in 1..=2 {
        let seen = read_ms(&ck.join(format!("seen-{a}"))).expect("the workload saw its notice");
        let term = read_ms(&ck.join(format!("term-{a}"))).expect("the workload got SIGTERM");
        let lead = term - seen;
        eprintln!("attempt {a}: notice lead time {lead} ms (configured {NOTICE_MS} ms)");
        assert!(lead >= NOTICE_MS, "lead time {lead} ms is under the {NOTICE_MS} ms notice");
    }
    let notice = std::fs::read_to_string(ck.join("notice-1")).unwrap();
    assert!(notice.contains("deadline"), "{notice}");
    let _ = std::fs::remove_dir_all(&root);
}
