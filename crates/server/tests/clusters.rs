//! Clusters over HTTP on the in-process fleet: resize up as a gang (all or none), down with the
//! stop notice, bounds and names checked, members' environment for torchrun.

mod common;

use common::TestServer;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn wait_cluster(s: &TestServer, key: &str, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = s.get(key, &format!("/v1/clusters/{name}"));
        if pred(&r.body) {
            return r.body;
        }
        assert!(Instant::now() < deadline, "cluster {name} never {what}: {}", r.body);
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn running(v: &Value) -> usize {
    v["members"].as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "running").count())
}

#[test]
fn a_cluster_resizes_as_a_gang_and_shrinks_with_notice() {
    let s = TestServer::start_with(|c| {
        c.market.notice = Duration::from_secs(1);
        c.market.min_notice = Duration::from_secs(1);
    });
    let key = s.tenant("lab");
    let other = s.tenant("other");
    let create = |body: Value| s.post(&key, "/v1/clusters", Some(&body));
    let body = json!({"name": "train", "gpu": "A100-40GB", "region": "us-1", "gpus_per_node": 1, "nodes": 1,
        "min_nodes": 1, "max_nodes": 4, "command": "sleep 1000"});
    let r = create(body.clone());
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(create(body.clone()).status, 409, "names are unique per tenant");
    for (patch, field) in [
        (json!({"name": "Train!"}), "name"),
        (json!({"nodes": 5}), "nodes"),
        (json!({"min_nodes": 3, "max_nodes": 2}), "min_nodes"),
        (json!({"gpus_per_node": 0}), "gpus_per_node"),
        (json!({"tier": "reserved"}), "tier"),
    ] {
        let mut b = body.clone();
        b.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        b["name"] = b["name"].as_str().map(|n| if n == "train" { "other-name" } else { n }).unwrap().into();
        let r = create(b);
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{:?}", r.body);
    }
    wait_cluster(&s, &key, "train", "ready at 1", |v| v["state"] == "ready" && running(v) == 1);
    assert_eq!(s.get(&other, "/v1/clusters/train").status, 404, "another tenant's cluster is not found");

    let resize = |n: u32| s.post(&key, "/v1/clusters/train/resize", Some(&json!({"nodes": n})));
    assert_eq!(resize(5).status, 422);
    assert_eq!(resize(0).status, 422);
    assert_eq!(resize(2).status, 200);
    let two = wait_cluster(&s, &key, "train", "ready at 2", |v| v["state"] == "ready" && running(v) == 2);
    let ranks: Vec<u64> = two["members"].as_array().unwrap().iter().map(|m| m["rank"].as_u64().unwrap()).collect();
    assert_eq!(ranks, vec![0, 1]);

    // us-1 has two A100s: growing to 4 cannot start either new member, so neither starts.
    let r = resize(4);
    assert_eq!(r.status, 200);
    let v = wait_cluster(&s, &key, "train", "waiting as a gang", |v| {
        v["reason"].as_str().is_some_and(|r| r.starts_with("waiting as a gang: 2 members"))
    });
    assert_eq!((v["state"].as_str(), running(&v)), (Some("resizing"), 2), "the running members are untouched: {v}");
    // Back to 2: the waiting members are dropped.
    resize(2);
    wait_cluster(&s, &key, "train", "ready at 2 again", |v| {
        v["state"] == "ready" && v["members"].as_array().unwrap().len() == 2
    });

    // The members' environment: rank, size, the rendezvous endpoint for torchrun.
    let v = s.get(&key, "/v1/clusters/train").body;
    let member = &v["members"][1];
    let node = gpucloud_model::NodeId::parse(member["node"].as_str().unwrap()).unwrap();
    let desired = s.in_process_beat(node);
    let d = desired.unwrap().into_iter().find(|d| d.id.as_str() == member["instance"].as_str().unwrap()).unwrap();
    let env: std::collections::HashMap<String, String> = d.env.into_iter().collect();
    assert_eq!(env["GPUCLOUD_CLUSTER_RANK"], "1");
    assert_eq!(env["WORLD_SIZE"], "2");
    assert_eq!(env["PET_NNODES"], "1:4");
    assert_eq!(env["MASTER_PORT"], v["master_port"].to_string());
    assert_eq!(env["PET_RDZV_ENDPOINT"], format!("{}:{}", env["MASTER_ADDR"], env["MASTER_PORT"]));
    assert_eq!(d.cluster.unwrap().members.len(), 2);

    // Shrinking gives the leaving rank its notice, then it goes.
    resize(1);
    let v = wait_cluster(&s, &key, "train", "noticing rank 1", |v| v["members"][1]["leaving_at"].is_string());
    assert_eq!(v["members"][1]["rank"], 1);
    wait_cluster(&s, &key, "train", "ready at 1", |v| {
        v["state"] == "ready" && v["members"].as_array().unwrap().len() == 1
    });

    let r = s.raw("DELETE", "/v1/clusters/train", Some(&key), &[], None);
    assert_eq!(r.status, 204);
    assert_eq!(s.get(&key, "/v1/clusters/train").status, 404);
    assert_eq!(s.post(&key, "/v1/clusters", Some(&body)).status, 201, "a deleted cluster's name is free again");
}

#[test]
fn a_schedule_moves_a_cluster_between_day_and_night_on_a_simulated_clock() {
    let s = TestServer::start_with(|c| {
        c.market.notice = Duration::from_secs(1);
        c.market.min_notice = Duration::from_secs(1);
        c.market.schedules_follow_clock = false;
    });
    let key = s.tenant("studio");
    let r = s.post(
        &key,
        "/v1/clusters",
        Some(&json!({"name": "render", "gpu": "T4", "region": "us-1", "gpus_per_node": 1, "nodes": 1,
            "min_nodes": 1, "max_nodes": 2, "command": "render --frames"})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let set = |body: Value| s.post(&key, "/v1/clusters/render/schedule", Some(&body));
    for (bad, field) in [
        (json!({"schedule": "08:00-20:00 2 x A100-40GB"}), "schedule"),
        (json!({"schedule": "08:00-20:00 3 x A100-40GB, otherwise 1 x T4"}), "schedule"),
        (
            json!({"schedule": "08:00-20:00 2 x A100-40GB, otherwise 1 x T4", "utc_offset": "Mars/Olympus"}),
            "utc_offset",
        ),
    ] {
        let r = set(bad);
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{:?}", r.body);
    }
    // By day two A100s, by night one T4; times at UTC+01:00.
    let r = set(json!({"schedule": "08:00-20:00 2 x A100-40GB, otherwise 1 x T4", "utc_offset": "+01:00"}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["schedule"].as_str().unwrap().ends_with("(UTC+01:00)"), "{}", r.body);
    let day = 20_784 * 86_400_000i64; // 2026-11-27T00:00Z
    let at = |h: i64, m: i64| gpucloud_model::Timestamp(day + (h * 60 + m) * 60_000);

    // 11:00 UTC is noon local: day.
    assert_eq!(s.block_on(s.app.apply_schedules(at(11, 0))).unwrap(), 1);
    let v = wait_cluster(&s, &key, "render", "two A100s by day", |v| {
        v["gpu"] == "A100-40GB"
            && v["nodes"] == 2
            && v["state"] == "ready"
            && v["members"].as_array().unwrap().len() == 2
    });
    assert!(v["members"].as_array().unwrap().iter().all(|m| m["state"] == "running"));
    assert_eq!(s.block_on(s.app.apply_schedules(at(18, 59))).unwrap(), 0, "19:59 local is still day");

    // 19:00 UTC is 20:00 local: night. The T4 starts first; the A100s leave once it runs.
    assert_eq!(s.block_on(s.app.apply_schedules(at(19, 0))).unwrap(), 1);
    let v = wait_cluster(&s, &key, "render", "one T4 by night", |v| {
        v["gpu"] == "T4" && v["state"] == "ready" && v["members"].as_array().unwrap().len() == 1
    });
    let node = v["members"][0]["node"].as_str().unwrap().to_string();
    let n = s.get(&s.operator_key, &format!("/v1/nodes/{node}")).body;
    assert_eq!(n["gpus"][0]["model"], "T4", "{n}");
}

#[test]
fn utilization_grows_and_shrinks_a_cluster_after_its_period() {
    let s = TestServer::start_with(|c| {
        c.market.notice = Duration::from_secs(1);
        c.market.min_notice = Duration::from_secs(1);
        c.market.schedules_follow_clock = false;
    });
    let key = s.tenant("lab");
    let r = s.post(
        &key,
        "/v1/clusters",
        Some(&json!({"name": "infer", "gpu": "A100-40GB", "region": "eu-1", "gpus_per_node": 1, "nodes": 1,
            "min_nodes": 1, "max_nodes": 3, "command": "serve"})),
    );
    assert_eq!(r.status, 201);
    let set = |b: Value| s.post(&key, "/v1/clusters/infer/autoscale", Some(&b));
    assert_eq!(set(json!({"up_percent": 20, "down_percent": 80})).body["field"], "up_percent");
    assert_eq!(set(json!({"up_percent": 80, "down_percent": 20, "for_seconds": 0})).body["field"], "for_seconds");
    assert_eq!(set(json!({"up_percent": 80})).status, 422);
    let r = set(json!({"up_percent": 80, "down_percent": 20, "for_seconds": 60}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["autoscale"].as_str().unwrap().contains("above 80%"), "{}", r.body);
    let r = s.post(
        &key,
        "/v1/clusters/infer/schedule",
        Some(&json!({"schedule": "08:00-20:00 2 x A100-40GB, otherwise 1 x A100-40GB"})),
    );
    assert_eq!(r.status, 422, "a schedule and autoscaling do not mix: {:?}", r.body);

    let members = |v: &Value| -> Vec<gpucloud_model::InstanceId> {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| gpucloud_model::InstanceId::parse(m["instance"].as_str().unwrap()).unwrap())
            .collect()
    };
    let busy =
        |v: &Value, pct: f64| members(v).into_iter().map(|i| (i, pct)).collect::<std::collections::HashMap<_, _>>();
    let t0 = gpucloud_model::Timestamp(1_800_000_000_000);
    let one = wait_cluster(&s, &key, "infer", "ready at 1", |v| v["state"] == "ready");
    assert_eq!(s.block_on(s.app.autoscale(t0, &busy(&one, 95.0))).unwrap(), 0, "the period starts");
    assert_eq!(s.block_on(s.app.autoscale(t0.plus_millis(59_000), &busy(&one, 95.0))).unwrap(), 0);
    assert_eq!(s.block_on(s.app.autoscale(t0.plus_millis(60_000), &busy(&one, 95.0))).unwrap(), 1, "busy for 60 s: +1");
    let two = wait_cluster(&s, &key, "infer", "ready at 2", |v| {
        v["state"] == "ready" && v["members"].as_array().unwrap().len() == 2
    });
    // A dip in between restarts the period.
    let t1 = t0.plus_millis(120_000);
    s.block_on(s.app.autoscale(t1, &busy(&two, 5.0))).unwrap();
    s.block_on(s.app.autoscale(t1.plus_millis(30_000), &busy(&two, 50.0))).unwrap();
    assert_eq!(s.block_on(s.app.autoscale(t1.plus_millis(70_000), &busy(&two, 5.0))).unwrap(), 0);
    assert_eq!(s.block_on(s.app.autoscale(t1.plus_millis(130_000), &busy(&two, 5.0))).unwrap(), 1, "idle for 60 s: -1");
    wait_cluster(&s, &key, "infer", "back to 1", |v| {
        v["nodes"] == 1 && v["state"] == "ready" && v["members"].as_array().unwrap().len() == 1
    });
    // Never below min.
    let one = s.get(&key, "/v1/clusters/infer").body;
    let t2 = t1.plus_millis(300_000);
    s.block_on(s.app.autoscale(t2, &busy(&one, 1.0))).unwrap();
    assert_eq!(s.block_on(s.app.autoscale(t2.plus_millis(120_000), &busy(&one, 1.0))).unwrap(), 0);
}

#[test]
fn a_replica_set_runs_one_member_per_region_each_on_its_own() {
    let s = TestServer::start();
    let key = s.tenant("quant");
    let other = s.tenant("other");
    let base = json!({"name": "pricer", "gpu": "A100-40GB", "gpus_per_node": 1, "nodes": 2, "command": "sleep 1000",
        "replicas_in": ["eu-1", "us-1"]});
    for (patch, needle) in [
        (json!({"region": "eu-1"}), "not both"),
        (json!({"replicas_in": ["eu-1"]}), "2 to 8"),
        (json!({"replicas_in": ["eu-1", "eu-1"]}), "twice"),
        (json!({"replicas_in": ["eu-1", "ap-9"]}), "unknown region"),
        (json!({"gpu": "H100-80GB"}), "has no H100-80GB"),
    ] {
        let mut b = base.clone();
        b.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        let r = s.post(&key, "/v1/clusters", Some(&b));
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some("replicas_in")), "{patch}: {:?}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains(needle), "{patch}: {:?}", r.body);
    }

    // us-1 has 2 A100s: another tenant holds both. The eu-1 member still starts: not a gang.
    let blocker = s.create(&other, "A100-40GB", 2, Some("us-1"));
    let blocker = blocker["id"].as_str().unwrap().to_string();
    s.wait_state(&other, &blocker, "running");
    let r = s.post(&key, "/v1/clusters", Some(&base));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["replicas_in"], json!(["eu-1", "us-1"]));
    let v = wait_cluster(&s, &key, "pricer", "half up", |v| running(v) == 1);
    let waiting = v["members"].as_array().unwrap().iter().find(|m| m["state"] == "pending").unwrap().clone();
    assert_eq!(waiting["rank"], 1);
    let reason = waiting["pending_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("us-1") && !reason.contains("gang"), "{reason}");
    for (path, body) in [
        ("resize", json!({"nodes": 3})),
        ("autoscale", json!({"up_percent": 80, "down_percent": 20, "for_seconds": 60})),
    ] {
        let r = s.post(&key, &format!("/v1/clusters/pricer/{path}"), Some(&body));
        assert_eq!(r.status, 409, "{path}: {:?}", r.body);
    }

    // us-1 frees: the second replica starts there; each member sits in its own region.
    assert_eq!(s.post(&other, &format!("/v1/instances/{blocker}/terminate"), None).status, 200);
    let v = wait_cluster(&s, &key, "pricer", "fully up", |v| running(v) == 2);
    for m in v["members"].as_array().unwrap() {
        let inst = s.get(&key, &format!("/v1/instances/{}", m["instance"].as_str().unwrap())).body;
        let want = if m["rank"] == 0 { "eu-1" } else { "us-1" };
        assert_eq!(inst["region"], want, "{inst}");
    }

    // A member that ends is replaced in its region; the ended one cannot come back beside it.
    let first = v["members"][0]["instance"].as_str().unwrap().to_string();
    assert_eq!(s.post(&key, &format!("/v1/instances/{first}/stop"), None).status, 200);
    let v = wait_cluster(&s, &key, "pricer", "replaced rank 0", |v| {
        running(v) == 2 && v["members"][0]["instance"] != first.as_str()
    });
    let second = v["members"][0]["instance"].as_str().unwrap();
    assert_eq!(s.get(&key, &format!("/v1/instances/{second}")).body["region"], "eu-1");
    s.wait_state(&key, &first, "stopped");
    let r = s.post(&key, &format!("/v1/instances/{first}/start"), None);
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains(second), "{:?}", r.body);
}
