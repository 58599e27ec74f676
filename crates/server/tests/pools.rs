//! Warm pools over HTTP on the in-process fleet: a claim hands out a running instance at once,
//! its billing moves from the warm rate to on-demand at that instant, and the pool refills.

mod common;

use common::TestServer;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn pool(s: &TestServer, key: &str, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let l = s.get(key, "/v1/pools").body;
        if let Some(p) = l["pools"].as_array().and_then(|a| a.iter().find(|p| p["name"] == name))
            && pred(p)
        {
            return p.clone();
        }
        assert!(Instant::now() < deadline, "pool {name} never got there: {l}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_warm_pool_hands_out_running_instances_and_refills() {
    let s = TestServer::start();
    let key = s.tenant("desk");
    let body =
        json!({"name": "llm", "gpu": "T4", "region": "eu-1", "count": 1, "command": "serve --preload", "size": 2});
    let r = s.post(&key, "/v1/pools", Some(&body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(s.post(&key, "/v1/pools", Some(&body)).status, 409, "names are unique per tenant");
    for (patch, field) in [
        (json!({"name": "LLM"}), "name"),
        (json!({"count": 0}), "count"),
        (json!({"size": 1000}), "size"),
        (json!({"region": "mars-1"}), "region"),
    ] {
        let mut b = body.clone();
        b["name"] = "other".into();
        b.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        let r = s.post(&key, "/v1/pools", Some(&b));
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{:?}", r.body);
    }
    let r = s.post(&key, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "x", "tier": "warm"})));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("tier")), "warm is the pool's: {:?}", r.body);
    pool(&s, &key, "llm", |p| p["ready"] == 2);

    let r = s.post(&key, "/v1/pools/llm/claim", Some(&json!({"name": "quote-engine"})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["warm"], true);
    let inst = &r.body["instance"];
    assert_eq!(
        (inst["state"].as_str(), inst["tier"].as_str(), inst["name"].as_str()),
        (Some("running"), Some("on-demand"), Some("quote-engine"))
    );
    let id = inst["id"].as_str().unwrap().to_string();
    // The pool refills behind it.
    let p = pool(&s, &key, "llm", |p| p["ready"] == 2);
    assert!(!p["members"].as_array().unwrap().iter().any(|m| m["instance"] == id.as_str()), "{p}");

    // Billed warm until the claim, on-demand from then: two intervals meeting at one instant.
    let iid = gpucloud_model::InstanceId::parse(&id).unwrap();
    let tenant = s.block_on(s.app.store().get_instance(None, &iid)).unwrap().unwrap().tenant_id;
    let mut spans: Vec<_> = s
        .block_on(s.app.store().intervals_of_tenant(&tenant))
        .unwrap()
        .into_iter()
        .filter(|u| u.instance_id == iid)
        .collect();
    spans.sort_by_key(|u| u.started_at);
    assert_eq!(spans.iter().map(|u| u.tier.to_string()).collect::<Vec<_>>(), vec!["warm", "on-demand"]);
    assert_eq!(spans[0].ended_at, Some(spans[1].started_at), "no second lost or billed twice at the handover");

    // An empty pool falls back to a cold start of the template.
    let r =
        s.post(&key, "/v1/pools", Some(&json!({"name": "empty", "gpu": "T4", "count": 1, "command": "x", "size": 0})));
    assert_eq!(r.status, 201);
    let r = s.post(&key, "/v1/pools/empty/claim", Some(&json!({})));
    assert_eq!((r.status, r.body["warm"].as_bool()), (201, Some(false)), "{:?}", r.body);
    assert_eq!(s.post(&key, "/v1/pools/nosuch/claim", Some(&json!({}))).status, 404);
    assert_eq!(s.post(&s.tenant("other"), "/v1/pools/llm/claim", Some(&json!({}))).status, 404);

    assert_eq!(s.raw("DELETE", "/v1/pools/llm", Some(&key), &[], None).status, 204);
    let left = s.get(&key, "/v1/pools").body;
    assert!(!left["pools"].as_array().unwrap().iter().any(|p| p["name"] == "llm"), "{left}");
    assert_eq!(s.get(&key, &format!("/v1/instances/{id}")).body["state"], "running", "what was handed out stays");
}

#[test]
fn a_pool_is_warm_before_the_market_opens_on_a_simulated_clock() {
    let s = TestServer::start_with(|c| c.market.schedules_follow_clock = false);
    let key = s.tenant("desk");
    let r = s.post(
        &key,
        "/v1/pools",
        Some(&json!({"name": "open", "gpu": "T4", "region": "eu-1", "count": 1, "command": "x", "size": 0})),
    );
    assert_eq!(r.status, 201);
    let set = |b: Value| s.post(&key, "/v1/pools/open/size", Some(&b));
    assert_eq!(
        set(json!({"schedule": "09:25-16:00 2 x A40, otherwise 0 x A40"})).body["field"],
        "schedule",
        "the pool's model only"
    );
    assert_eq!(set(json!({"size": 500})).body["field"], "size");
    // New York opens at 09:30 (UTC-05:00): warm from 09:25 local.
    let r = set(json!({"schedule": "09:25-16:00 2 x T4, otherwise 0 x T4", "utc_offset": "-05:00"}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let day = 20_784 * 86_400_000i64;
    let at = |h: i64, m: i64| gpucloud_model::Timestamp(day + (h * 60 + m) * 60_000);
    assert_eq!(s.block_on(s.app.apply_pool_schedules(at(14, 24))).unwrap(), 0, "09:24 local: still cold");
    assert_eq!(s.block_on(s.app.apply_pool_schedules(at(14, 25))).unwrap(), 1, "09:25 local: warm up");
    pool(&s, &key, "open", |p| p["ready"] == 2 && p["size"] == 2);
    assert_eq!(s.block_on(s.app.apply_pool_schedules(at(21, 0))).unwrap(), 1, "16:00 local: let go");
    pool(&s, &key, "open", |p| p["size"] == 0 && p["members"].as_array().unwrap().is_empty());
}
