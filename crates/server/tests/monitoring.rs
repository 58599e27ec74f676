//! Monitoring over HTTP on the in-process fleet: GPU telemetry history per instance and for the
//! fleet, revenue over time, alerts for hot GPUs, idle detection with opt-in auto-stop, and the
//! control plane's own histograms on /metrics, each scoped to who asks.

mod common;

use common::TestServer;
use gpucloud_model::{InstanceId, Timestamp};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn fast(c: &mut gpucloud_server::app::Config) {
    c.monitor.sample_interval = Duration::from_millis(100);
    c.monitor.interval = Duration::from_millis(200);
    // Busy fake GPUs run near 70 C: this makes them "hot".
    c.monitor.temperature_alert_c = 60.0;
}

fn eventually(what: &str, mut f: impl FnMut() -> Option<Value>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn put(s: &TestServer, key: &str, path: &str, body: &Value) -> common::Resp {
    let bytes = serde_json::to_vec(body).unwrap();
    s.raw("PUT", path, Some(key), &[("Content-Type", "application/json")], Some(&bytes))
}

#[test]
fn telemetry_history_alerts_and_server_metrics_are_scoped() {
    let s = TestServer::start_with(fast);
    let key = s.tenant("lab");
    let other = s.tenant("rival");
    let inst = s.create(&key, "A100-40GB", 1, Some("eu-1"));
    let id = inst["id"].as_str().unwrap().to_string();
    s.wait_state(&key, &id, "running");

    // The framework tier: the instance's own GPU, busy, over time.
    let path = format!("/v1/instances/{id}/telemetry?since=60&step=1");
    let t = eventually("busy samples", || {
        let r = s.get(&key, &path);
        assert_eq!(r.status, 200, "{:?}", r.body);
        let pts = r.body["points"].as_array().unwrap();
        // The first sample may predate the workload's start (provisioning); the latest is busy.
        (pts.len() >= 2 && pts.last().unwrap()["utilization_pct"].as_f64().unwrap() > 50.0).then_some(r.body)
    });
    assert_eq!(t["step_s"], 1);
    assert_eq!(t["points"][0]["gpu"], inst["gpus"][0].as_u64().map_or(t["points"][0]["gpu"].clone(), Value::from));
    assert_eq!(s.get(&other, &path).status, 404, "another tenant's instance does not exist for it");
    for (q, status) in [("since=0", 422), ("since=60&step=0", 422), ("since=3600&step=1", 422), ("step=abc", 400)] {
        let r = s.get(&key, &format!("/v1/instances/{id}/telemetry?{q}"));
        assert_eq!(r.status, status, "{q}: {:?}", r.body);
    }

    // The fleet (operator only): allocation, utilization and revenue over time.
    assert_eq!(s.get(&key, "/v1/fleet/telemetry").status, 403);
    let fleet = eventually("fleet with revenue", || {
        let r = s.get(&s.operator_key, "/v1/fleet/telemetry?since=120&step=60");
        assert_eq!(r.status, 200, "{:?}", r.body);
        let allocated = r.body["points"].as_array().unwrap().iter().any(|p| p["allocated"].as_u64() >= Some(1));
        (allocated && !r.body["revenue"].as_array().unwrap().is_empty()).then_some(r.body)
    });
    let total_gpus = fleet["points"].as_array().unwrap().iter().map(|p| p["gpus"].as_u64().unwrap()).max().unwrap();
    assert!(total_gpus > 1, "every fake GPU reports, free ones too: {fleet}");

    // A hot GPU: the operator and the tenant running on it hear of it, the other tenant does not.
    let kinds = |k: &str| -> Vec<String> {
        s.get(k, "/v1/alerts").body["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_string())
            .collect()
    };
    eventually("temperature alerts", || {
        (kinds(&key).contains(&"gpu_temperature".to_string())
            && kinds(&s.operator_key).contains(&"gpu_temperature".to_string()))
        .then_some(Value::Null)
    });
    assert!(!kinds(&other).contains(&"gpu_temperature".to_string()));

    // Server metrics: the operator sees latency histograms and the revenue rate; a tenant only
    // its own spend rate.
    let m = s.get(&s.operator_key, "/metrics").body.as_str().unwrap().to_string();
    let route = "route=\"/v1/instances/{id}/telemetry\",status=\"200\"";
    assert!(
        m.lines().any(|l| l.starts_with("gpucloud_http_request_duration_seconds_count") && l.contains(route)),
        "{m}"
    );
    let scheduled = m.lines().find(|l| l.starts_with("gpucloud_scheduling_latency_seconds_count")).unwrap();
    assert!(!scheduled.ends_with(" 0"), "{scheduled}");
    let rate: f64 =
        m.lines().find(|l| l.starts_with("gpucloud_revenue_rate_per_hour ")).unwrap()[31..].parse().unwrap();
    assert!(rate > 0.0, "{rate}");
    // The business tier: the latest value a workload pushed, to its tenant only.
    let iid = InstanceId::parse(&id).unwrap();
    let point = |at: i64, value: f64| gpucloud_store::MetricPoint {
        instance: iid.clone(),
        at: Timestamp(at),
        step: Some(at),
        name: "loss".into(),
        value,
    };
    s.block_on(s.app.store().insert_metrics(&[point(1, 2.5), point(2, 0.75)])).unwrap();
    let mine = s.get(&key, "/metrics").body.as_str().unwrap().to_string();
    assert!(mine.contains("gpucloud_spend_rate_per_hour ") && !mine.contains("gpucloud_http_request_duration"));
    assert!(mine.contains(&format!("gpucloud_workload_metric{{instance=\"{id}\",")), "{mine}");
    assert!(mine.lines().any(|l| l.contains("name=\"loss\"") && l.ends_with(" 0.75")), "the latest value: {mine}");
    let theirs = s.get(&other, "/metrics").body.as_str().unwrap().to_string();
    assert!(theirs.contains("gpucloud_spend_rate_per_hour 0\n"), "{theirs}");
    assert!(!theirs.contains(&id), "{theirs}");
}

#[test]
fn idle_instances_are_flagged_and_stopped_only_with_opt_in() {
    let s = TestServer::start_with(fast);
    let key = s.tenant("notebooks");
    let r = s.get(&key, "/v1/idle-policy");
    assert_eq!((r.status, &r.body), (200, &json!({"below_percent": 5, "minutes": 30, "auto_stop": false})));
    for (body, field) in [
        (json!({"below_percent": 101, "minutes": 5, "auto_stop": true}), Some("below_percent")),
        (json!({"below_percent": 5, "minutes": 0, "auto_stop": true}), Some("minutes")),
        (json!({"below_percent": 5, "minutes": 5, "auto_stop": true, "extra": 1}), Some("extra")),
    ] {
        let r = put(&s, &key, "/v1/idle-policy", &body);
        assert!(r.status == 422 || r.status == 400, "{body}: {:?}", r.body);
        assert_eq!(r.body["field"].as_str(), field, "{:?}", r.body);
    }
    let policy = json!({"below_percent": 5, "minutes": 1, "auto_stop": false});
    assert_eq!(put(&s, &key, "/v1/idle-policy", &policy).body, policy);

    let inst = s.create(&key, "T4", 1, Some("eu-1"));
    let id = inst["id"].as_str().unwrap().to_string();
    let running = s.wait_state(&key, &id, "running");
    let iid = InstanceId::parse(&id).unwrap();
    // A minute from now (a simulated clock), the last minute of samples said 1-3% utilization.
    let now = Timestamp(s.app.now().0 + 120_000);
    let node = gpucloud_model::NodeId::parse(running["node"].as_str().unwrap()).unwrap();
    let gpu = running["gpus"][0].as_u64().unwrap() as u32;
    let samples: Vec<_> = (0..7)
        .map(|k| gpucloud_store::GpuSample {
            node_id: node.clone(),
            gpu_index: gpu,
            at: Timestamp(now.0 - 60_000 + k * 10_000),
            instance: Some(iid.clone()),
            temperature_c: 35.0,
            power_w: 20.0,
            energy_mj: 0,
            memory_used_mib: 100,
            utilization_pct: 1.0 + (k % 3) as f64,
            xid: None,
            ecc_uncorrectable: 0,
        })
        .collect();
    s.block_on(s.app.store().insert_gpu_samples(&samples)).unwrap();

    assert_eq!(s.block_on(s.app.idle_pass(now)).unwrap(), 0, "flagged, not stopped: no opt-in");
    let alerts = s.get(&key, "/v1/alerts").body;
    assert!(alerts["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "idle"), "{alerts}");
    assert_eq!(s.get(&key, &format!("/v1/instances/{id}")).body["state"], "running");
    // A window the samples do not cover (a gap in telemetry) is not idleness.
    assert_eq!(s.block_on(s.app.idle_pass(Timestamp(now.0 + 30_000))).unwrap(), 0);

    put(&s, &key, "/v1/idle-policy", &json!({"below_percent": 5, "minutes": 1, "auto_stop": true}));
    assert_eq!(s.block_on(s.app.idle_pass(now)).unwrap(), 1);
    let stopped = s.wait_state(&key, &id, "stopped");
    assert!(stopped["reason"].as_str().unwrap().contains("idle"), "{stopped}");
    let alerts = s.get(&key, "/v1/alerts").body;
    assert!(alerts["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "idle_stopped"), "{alerts}");

    // A busy instance is never flagged, opt-in or not.
    let busy = s.create(&key, "T4", 1, Some("eu-1"));
    let bid = busy["id"].as_str().unwrap().to_string();
    s.wait_state(&key, &bid, "running");
    let mut hot = samples.clone();
    for h in hot.iter_mut() {
        h.instance = Some(InstanceId::parse(&bid).unwrap());
    }
    hot[3].utilization_pct = 40.0;
    s.block_on(s.app.store().insert_gpu_samples(&hot)).unwrap();
    assert_eq!(s.block_on(s.app.idle_pass(now)).unwrap(), 0);
    assert_eq!(s.get(&key, &format!("/v1/instances/{bid}")).body["state"], "running");
}

#[test]
fn the_dashboard_is_served_from_the_binary_with_a_strict_policy() {
    let s = TestServer::start();
    let no_redirects: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let r = no_redirects.get(format!("{}/", s.url)).call().unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/ui/"));
    for (path, kind, marker) in [
        ("/ui/", "text/html", "<main id=\"main\">"),
        ("/ui/app.js", "text/javascript", "function route()"),
        ("/ui/chart.js", "text/javascript", "function drawChart("),
        ("/ui/app.css", "text/css", "--accent"),
    ] {
        let mut r = no_redirects.get(format!("{}{path}", s.url)).call().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers().clone();
        assert!(h["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        assert!(h["content-security-policy"].to_str().unwrap().contains("script-src 'self'"), "{path}");
        assert!(r.body_mut().read_to_string().unwrap().contains(marker), "{path}");
    }
    // The page needs no key; everything it shows comes from the API, which does.
    assert_eq!(s.raw("GET", "/v1/instances", None, &[], None).status, 401);
    assert_eq!(s.raw("GET", "/ui/nothing.js", None, &[], None).status, 404);
}

#[test]
fn a_failed_gpu_tells_its_instance_degrades_its_node_and_comes_back_after_a_check() {
    let s = TestServer::start_with(|c| {
        fast(c);
        c.market.notice = Duration::from_secs(1);
        c.market.min_notice = Duration::from_secs(1);
    });
    let op = s.operator_key.clone();
    let key = s.tenant("acme");
    let id = s.create(&key, "H100-80GB", 1, Some("eu-1"))["id"].as_str().unwrap().to_string();
    s.wait_state(&key, &id, "running");
    let nodes = s.get(&op, "/v1/nodes").body;
    let (node, index) = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|n| {
            let g = n["gpus"].as_array().unwrap().iter().find(|g| g["instance"] == id.as_str())?;
            Some((n["id"].as_str().unwrap().to_string(), g["index"].as_u64().unwrap()))
        })
        .unwrap();
    let fault = |who: &str, index: &str, body: Value| {
        s.post(who, &format!("/v1/admin/nodes/{node}/gpus/{index}/fault"), Some(&body))
    };
    assert_eq!(fault(&key, &index.to_string(), json!({})).status, 403, "operators only");
    let r = fault(&op, &index.to_string(), json!({"xid": 13}));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("xid")), "XID 13 is an application error");
    assert_eq!(fault(&op, "x", json!({})).status, 422);
    assert_eq!(fault(&op, "99", json!({})).status, 404);

    let r = fault(&op, &index.to_string(), json!({}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["health"], "degraded");
    assert_eq!(r.body["gpus"][index as usize]["healthy"], false);
    assert_eq!(fault(&op, &index.to_string(), json!({})).status, 409, "already out of service");

    // The instance is told (notice, alert), then stopped at the deadline.
    let v = s.wait_for(&key, &id, "noticed", |v| v["preemption"].is_object());
    assert!(v["preemption"]["reason"].as_str().unwrap().contains("GPUs failed (XID 79)"), "{v}");
    let stopped = s.wait_state(&key, &id, "stopped");
    assert!(stopped["reason"].as_str().unwrap_or_default().contains("GPUs failed"), "{stopped}");
    let alerts = s.get(&key, "/v1/alerts").body;
    assert!(
        alerts["alerts"].as_array().unwrap().iter().any(|a| a["message"].as_str().unwrap().contains(&id)),
        "{alerts}"
    );
    let ops = s.get(&op, "/v1/alerts").body;
    assert!(ops["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "gpu_failed"), "{ops}");

    // Eight H100s wait, saying why.
    let all = s.create(&key, "H100-80GB", 8, Some("eu-1"))["id"].as_str().unwrap().to_string();
    let v = s.wait_for(&key, &all, "waiting", |v| v["pending_reason"].is_string());
    assert!(v["pending_reason"].as_str().unwrap().contains("1 with a failed GPU"), "{v}");

    // Back in service once its (fake) agent reads it clean; then the eight run.
    let back = |who: &str| s.post(who, &format!("/v1/nodes/{node}/gpus/{index}/return"), None);
    assert_eq!(back(&key).status, 403);
    let r = back(&op);
    assert_eq!((r.status, r.body["health"].as_str()), (200, Some("healthy")), "{:?}", r.body);
    assert_eq!(back(&op).status, 409, "already in service");
    s.wait_state(&key, &all, "running");
}
