//! The API against a real server: lifecycle, tenancy, auth, idempotency, bad input, OpenAPI.

mod common;

use common::TestServer;
use serde_json::{Value, json};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn instance_lifecycle_end_to_end() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let inst = s.create(&key, "A100-40GB", 2, Some("eu-1"));
    assert_eq!(inst["state"], "pending");
    let running = s.wait_state(&key, &id(&inst), "running");
    assert_eq!(running["gpus"].as_array().unwrap().len(), 2);
    assert!(running["node"].is_string());

    let list = s.get(&key, "/v1/instances");
    assert_eq!(list.body["instances"].as_array().unwrap().len(), 1);

    let stop = s.post(&key, &format!("/v1/instances/{}/stop", id(&inst)), None);
    assert_eq!((stop.status, stop.body["state"].as_str()), (200, Some("stopping")));
    let stopped = s.wait_state(&key, &id(&inst), "stopped");
    assert_eq!(stopped["gpus"], json!([]));
    // Stopping again is a no-op, not an error.
    assert_eq!(s.post(&key, &format!("/v1/instances/{}/stop", id(&inst)), None).status, 200);

    assert_eq!(s.post(&key, &format!("/v1/instances/{}/start", id(&inst)), None).body["state"], "pending");
    s.wait_state(&key, &id(&inst), "running");
    s.post(&key, &format!("/v1/instances/{}/terminate", id(&inst)), None);
    s.wait_state(&key, &id(&inst), "terminated");

    let history = s.get(&key, &format!("/v1/instances/{}/events", id(&inst))).body;
    let states: Vec<&str> = history["events"].as_array().unwrap().iter().map(|e| e["to"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        [
            "pending",
            "provisioning",
            "running",
            "stopping",
            "stopped",
            "pending",
            "provisioning",
            "running",
            "stopping",
            "terminated"
        ]
    );

    let again = s.post(&key, &format!("/v1/instances/{}/start", id(&inst)), None);
    assert_eq!(again.status, 409);
    assert_eq!(again.body["code"], "illegal_transition");
    assert_eq!(again.body["current_state"], "terminated");

    // Every GPU is free again.
    let nodes = s.get(&s.operator_key, "/v1/nodes").body;
    let allocated: u64 = nodes["nodes"].as_array().unwrap().iter().map(|n| n["gpus_allocated"].as_u64().unwrap()).sum();
    assert_eq!(allocated, 0);
}

#[test]
fn another_tenants_instances_are_not_found() {
    let s = TestServer::start();
    let a = s.tenant("a");
    let b = s.tenant("b");
    let inst = id(&s.create(&a, "T4", 1, None));
    for (method, path) in [
        ("GET", format!("/v1/instances/{inst}")),
        ("POST", format!("/v1/instances/{inst}/stop")),
        ("POST", format!("/v1/instances/{inst}/start")),
        ("POST", format!("/v1/instances/{inst}/terminate")),
        ("GET", format!("/v1/instances/{inst}/events")),
        ("GET", format!("/v1/instances/{inst}/logs")),
    ] {
        let r = s.raw(method, &path, Some(&b), &[], None);
        assert_eq!(r.status, 404, "{method} {path}: {:?}", r.body);
        assert_eq!(r.body["code"], "not_found");
    }
    assert_eq!(s.get(&b, "/v1/instances").body["instances"], json!([]));
    // And the owner still sees it, untouched.
    assert_ne!(s.get(&a, &format!("/v1/instances/{inst}")).body["state"], "terminated");
}

#[test]
fn authentication_and_roles() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    assert_eq!(s.raw("GET", "/v1/instances", None, &[], None).status, 401);
    assert_eq!(s.get("gpc_not-a-real-key", "/v1/instances").status, 401);
    assert_eq!(s.raw("GET", "/v1/instances", None, &[("Authorization", "Basic eA==")], None).status, 401);
    let r = s.get(&key, "/v1/nodes");
    assert_eq!((r.status, r.body["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(s.post(&key, "/v1/tenants", Some(&json!({"name": "evil"}))).status, 403);
    let who = s.get(&key, "/v1/whoami").body;
    assert_eq!((who["tenant"]["name"].as_str(), who["tenant"]["role"].as_str()), (Some("acme"), Some("tenant")));
    assert!(key.starts_with("gpc_") && who["key_prefix"].as_str().is_some_and(|p| key.starts_with(p)));
    assert_eq!(s.post(&s.operator_key, "/v1/tenants", Some(&json!({"name": "acme"}))).status, 409);
}

#[test]
fn idempotency_key_returns_the_first_response() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let body = serde_json::to_vec(&json!({"gpu": "T4", "count": 1, "command": "x"})).unwrap();
    let headers = [("Content-Type", "application/json"), ("Idempotency-Key", "create-1")];
    let first = s.raw("POST", "/v1/instances", Some(&key), &headers, Some(&body));
    let second = s.raw("POST", "/v1/instances", Some(&key), &headers, Some(&body));
    assert_eq!((first.status, second.status), (201, 201));
    assert_eq!(id(&first.body), id(&second.body));
    assert!(!first.replayed && second.replayed);
    assert_eq!(s.get(&key, "/v1/instances").body["instances"].as_array().unwrap().len(), 1);

    let other = serde_json::to_vec(&json!({"gpu": "T4", "count": 2, "command": "x"})).unwrap();
    let reused = s.raw("POST", "/v1/instances", Some(&key), &headers, Some(&other));
    assert_eq!((reused.status, reused.body["code"].as_str()), (422, Some("idempotency_key_reused")));

    // Keys are per tenant: another tenant's identical key is its own.
    let key_b = s.tenant("b");
    let theirs = s.raw("POST", "/v1/instances", Some(&key_b), &headers, Some(&body));
    assert_eq!(theirs.status, 201);
    assert_ne!(id(&theirs.body), id(&first.body));

    // Actions too: a retried stop replays its first answer.
    let stop_path = format!("/v1/instances/{}/stop", id(&first.body));
    let h = [("Idempotency-Key", "stop-1")];
    let s1 = s.raw("POST", &stop_path, Some(&key), &h, None);
    let s2 = s.raw("POST", &stop_path, Some(&key), &h, None);
    assert_eq!(s1.body, s2.body);
    assert!(s2.replayed);
    let bad = s.raw("POST", "/v1/instances", Some(&key), &[("Idempotency-Key", "")], Some(b"{}"));
    assert_eq!(bad.status, 400);

    // A new key is shown once: a replayed tenant creation answers without it.
    let h = [("Content-Type", "application/json"), ("Idempotency-Key", "tenant-c")];
    let body = br#"{"name": "c"}"#;
    let first = s.raw("POST", "/v1/tenants", Some(&s.operator_key), &h, Some(body));
    let again = s.raw("POST", "/v1/tenants", Some(&s.operator_key), &h, Some(body));
    assert!(first.body["api_key"].as_str().unwrap().starts_with("gpc_"));
    assert!(again.replayed && !again.body["api_key"].as_str().unwrap().starts_with("gpc_"), "{:?}", again.body);
    assert_eq!(again.body["tenant"], first.body["tenant"]);
}

#[test]
fn bad_input_gets_a_4xx_that_names_the_problem() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let ct = [("Content-Type", "application/json")];
    let post = |body: &str| s.raw("POST", "/v1/instances", Some(&key), &ct, Some(body.as_bytes()));
    let cases: &[(&str, u16, &str, Option<&str>)] = &[
        (r#"{"gpu":"A100-40GB","count":-1,"command":"x"}"#, 422, "invalid_request", Some("count")),
        (r#"{"gpu":"A100-40GB","count":0,"command":"x"}"#, 422, "invalid_request", Some("count")),
        (r#"{"gpu":"A100-40GB","count":17,"command":"x"}"#, 422, "invalid_request", Some("count")),
        (r#"{"gpu":"B300","count":1,"command":"x"}"#, 422, "invalid_request", Some("gpu")),
        (r#"{"gpu":"T4","count":1,"command":"x","colour":"red"}"#, 422, "invalid_request", None),
        (r#"{"gpu":"T4","count":1}"#, 422, "invalid_request", None),
        (r#"{"gpu":"T4","count":1,"command":"x","region":"Mars 1"}"#, 422, "invalid_request", Some("region")),
        (r#"{"gpu":"T4","count":1,"command":"x","region":"mars-1"}"#, 422, "invalid_request", Some("region")),
        (r#"{"gpu":"T4","count":1,"command":"   "}"#, 422, "invalid_request", Some("command")),
        (r#"{"gpu":"T4","count":"#, 400, "malformed_json", None),
        (r#"[]"#, 422, "invalid_request", None),
        (r#"{"gpu":"A100-40GB","count":1,"command":"x","gpu_share":0}"#, 422, "invalid_request", Some("gpu_share")),
        (r#"{"gpu":"A100-40GB","count":1,"command":"x","gpu_share":101}"#, 422, "invalid_request", Some("gpu_share")),
        (r#"{"gpu":"A100-40GB","count":1,"command":"x","gpu_share":-5}"#, 422, "invalid_request", None),
        (
            r#"{"gpu":"A100-40GB","count":1,"command":"x","gpu_memory_mib":50000}"#,
            422,
            "invalid_request",
            Some("gpu_memory_mib"),
        ),
        (r#"{"gpu":"A100-40GB","count":2,"command":"x","gpu_share":25}"#, 422, "invalid_request", Some("count")),
        (r#"{"gpu":"T4","count":1,"command":"x","mig":"1g.5gb"}"#, 422, "invalid_request", Some("mig")),
        (r#"{"gpu":"A100-40GB","count":1,"command":"x","mig":"9g.99gb"}"#, 422, "invalid_request", Some("mig")),
        (
            r#"{"gpu":"A100-40GB","count":1,"command":"x","mig":"1g.5gb","gpu_share":10}"#,
            422,
            "invalid_request",
            Some("mig"),
        ),
    ];
    for (body, status, code, field) in cases {
        let r = post(body);
        assert_eq!(r.status, *status, "{body}: {:?}", r.body);
        assert_eq!(r.body["code"], *code, "{body}");
        if let Some(f) = field {
            assert_eq!(r.body["field"], *f, "{body}: {:?}", r.body);
        }
        assert!(r.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let mig = post(r#"{"gpu":"T4","count":1,"command":"x","mig":"1g.5gb"}"#);
    assert!(mig.body["detail"].as_str().unwrap().contains("MIG-capable: A100-40GB"), "{:?}", mig.body);
    let ok = post(r#"{"gpu":"A100-40GB","count":1,"command":"x","mig":"3g.20gb"}"#);
    assert_eq!(ok.status, 201, "{:?}", ok.body);
    assert_eq!((ok.body["gpu_milli"].as_u64(), ok.body["mig"].as_str()), (Some(429), Some("3g.20gb")));
    let unknown = post(r#"{"gpu":"B300","count":1,"command":"x"}"#);
    assert!(unknown.body["detail"].as_str().unwrap().contains("H100-80GB"), "lists the known models");

    let big = format!(r#"{{"gpu":"T4","count":1,"command":"{}"}}"#, "x".repeat(100_000));
    assert_eq!(post(&big).status, 413);
    let no_ct = s.raw("POST", "/v1/instances", Some(&key), &[], Some(b"{}"));
    assert_eq!(no_ct.status, 415);
    assert_eq!(s.get(&key, "/v1/nope").body["code"], "route_not_found");
    assert_eq!(s.raw("DELETE", "/v1/instances", Some(&key), &[], None).status, 405);
    assert_eq!(s.get(&key, "/v1/instances/i-doesnotexist").status, 404);
    assert_eq!(s.get(&key, "/v1/instances/..%2F..%2Fetc").status, 404);
}

/// 200 generated malformed requests: none may produce a 5xx or kill the server.
#[test]
fn two_hundred_malformed_requests_never_5xx() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let fields = [
        "gpu",
        "count",
        "region",
        "command",
        "name",
        "zz",
        "monthly_limit",
        "price_per_gpu_hour",
        "granularity_seconds",
        "gpu_share",
        "gpu_memory_mib",
        "mig",
    ];
    let values = [
        "null",
        "-1",
        "0",
        "1e40",
        "18446744073709551616",
        "\"\"",
        "\"A100-40GB\"",
        "[]",
        "{}",
        "true",
        "\"\\u0000\"",
        "\"eu-1\"",
        "2.5",
        "\"9999999999\"",
        "\"1g.5gb\"",
        "18446744073709551615",
    ];
    let mut seen_4xx = 0;
    for i in 0..200usize {
        let mut body = String::from("{");
        for j in 0..(i % 5) {
            let f = fields[(i * 7 + j * 3) % fields.len()];
            let v = values[(i * 13 + j * 5) % values.len()];
            body.push_str(&format!("\"{f}\":{v},"));
        }
        if i % 3 == 0 {
            body.pop();
        }
        if i % 11 != 0 {
            body.push('}');
        }
        let (method, path) = match i % 8 {
            0 | 1 => ("POST", "/v1/instances"),
            2 => ("POST", "/v1/nodes"),
            3 => ("POST", "/v1/tenants"),
            4 => ("POST", "/v1/instances/quote"),
            5 => ("POST", "/v1/billing/budget"),
            6 => ("POST", "/v1/prices"),
            _ => ("POST", "/v1/billing/rules"),
        };
        let who = if matches!(i % 8, 0 | 4 | 5) { key.as_str() } else { s.operator_key.as_str() };
        let r = s.raw(method, path, Some(who), &[("Content-Type", "application/json")], Some(body.as_bytes()));
        assert!(r.status < 500, "{method} {path} {body} -> {} {:?}", r.status, r.body);
        if (400..500).contains(&r.status) {
            seen_4xx += 1;
            assert!(r.body["code"].is_string(), "problem+json for {body}");
        }
    }
    assert!(seen_4xx > 140, "most of these are malformed: {seen_4xx}");
    assert_eq!(s.get(&key, "/v1/health").status, 200);
}

#[test]
fn pending_says_why_and_starts_when_capacity_frees() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    // us-1 has one 2-GPU A100 node in the built-in fleet.
    let first = id(&s.create(&key, "A100-40GB", 2, Some("us-1")));
    s.wait_state(&key, &first, "running");
    let second = id(&s.create(&key, "A100-40GB", 2, Some("us-1")));
    let waiting = s.wait_for(&key, &second, "explained", |b| b["pending_reason"].is_string());
    assert_eq!(waiting["state"], "pending");
    assert_eq!(waiting["pending_reason"], "no node in us-1 has 2 free A100-40GB: 1 full");
    let huge = id(&s.create(&key, "A100-40GB", 16, None));
    let why = s.wait_for(&key, &huge, "explained", |b| b["pending_reason"].is_string());
    assert_eq!(
        why["pending_reason"],
        "no node in eu-1 has 16 free A100-40GB: 2 too small; no node in us-1 has 16 free A100-40GB: 1 too small"
    );

    s.post(&key, &format!("/v1/instances/{first}/terminate"), None);
    let running = s.wait_state(&key, &second, "running");
    assert_eq!(running["pending_reason"], Value::Null);
}

#[test]
fn operator_cordons_drains_and_adds_nodes() {
    let s = TestServer::start();
    let op = s.operator_key.clone();
    let key = s.tenant("acme");
    let nodes = s.get(&op, "/v1/nodes").body;
    let node_id = |name: &str| nodes["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).map(id).unwrap();
    let rtx = node_id("us1-rtx-01");
    let inst = id(&s.create(&key, "RTX-6000-Ada", 2, None));
    s.wait_state(&key, &inst, "running");

    // Drain with nowhere else to go: the instance keeps running, and says why.
    let drained = s.post(&op, &format!("/v1/nodes/{rtx}/drain"), None);
    assert_eq!(drained.body["state"], "draining");
    let waiting = s.wait_for(&key, &inst, "told", |b| b["reason"].is_string());
    assert_eq!(waiting["state"], "running", "{waiting}");
    assert!(
        waiting["reason"].as_str().unwrap().starts_with("its node is draining: it moves once another node has room"),
        "{waiting}"
    );
    assert_eq!(s.post(&op, &format!("/v1/nodes/{rtx}/drain?force=maybe"), None).status, 400);

    // A new node has room: it moves there.
    let body = json!({"name": "us1-rtx-02", "region": "us-1", "gpus": [{"model": "RTX-6000-Ada", "count": 4}]});
    let added = s.post(&op, "/v1/nodes", Some(&body));
    assert_eq!(added.status, 201, "{:?}", added.body);
    let running = s.wait_for(&key, &inst, "moved", |b| b["state"] == "running" && b["node"] == added.body["id"]);
    assert_eq!(running["reason"], Value::Null, "{running}");
    assert_eq!(s.post(&op, "/v1/nodes", Some(&body)).status, 409, "names are unique");

    // Cordon keeps what runs and takes nothing new.
    let new_node = id(&added.body);
    assert_eq!(s.post(&op, &format!("/v1/nodes/{new_node}/cordon"), None).body["state"], "cordoned");
    let second = id(&s.create(&key, "RTX-6000-Ada", 1, None));
    let why = s.wait_for(&key, &second, "explained", |b| b["pending_reason"].is_string());
    assert_eq!(why["pending_reason"], "no node in us-1 has 1 free RTX-6000-Ada: 1 cordoned, 1 draining");
    assert_eq!(s.get(&key, &format!("/v1/instances/{inst}")).body["state"], "running");
    s.post(&op, &format!("/v1/nodes/{rtx}/uncordon"), None);
    s.wait_state(&key, &second, "running");

    let shown = s.get(&op, &format!("/v1/nodes/{new_node}")).body;
    let holders: Vec<&Value> =
        shown["gpus"].as_array().unwrap().iter().filter(|g| g["instance"] == json!(inst)).collect();
    assert_eq!(holders.len(), 2);
    assert_eq!(s.get(&op, "/v1/nodes/n-missing").status, 404);

    // A forced drain stops what runs now, with or without room: it waits pending.
    s.post(&op, &format!("/v1/nodes/{new_node}/uncordon"), None);
    let forced = s.post(&op, &format!("/v1/nodes/{new_node}/drain?force=true"), None);
    assert_eq!(forced.status, 200, "{:?}", forced.body);
    let moved = s.wait_for(&key, &inst, "requeued", |b| b["state"] == "pending" && b["pending_reason"].is_string());
    assert!(moved["pending_reason"].as_str().unwrap().contains("draining"), "{moved:?}");
}

#[test]
fn a_drain_with_a_deadline_stops_what_is_left_when_it_passes() {
    let s = TestServer::start();
    let op = s.operator_key.clone();
    let key = s.tenant("acme");
    let nodes = s.get(&op, "/v1/nodes").body;
    let rtx = nodes["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "us1-rtx-01").map(id).unwrap();
    let inst = id(&s.create(&key, "RTX-6000-Ada", 2, None));
    s.wait_state(&key, &inst, "running");

    for (bad, status) in [
        ("deadline_seconds=0", 422),
        ("deadline_seconds=2592001", 422),
        ("force=true&deadline_seconds=5", 422),
        ("deadline_seconds=soon", 400),
    ] {
        let r = s.post(&op, &format!("/v1/nodes/{rtx}/drain?{bad}"), None);
        assert_eq!(r.status, status, "{bad}: {:?}", r.body);
        assert!(r.body["detail"].as_str().unwrap_or_default().contains("deadline_seconds"), "{bad}: {:?}", r.body);
    }
    assert_eq!(s.get(&op, &format!("/v1/nodes/{rtx}")).body["state"], "ready", "a refused drain changed nothing");
    // A tenant cannot drain a node.
    assert_eq!(s.post(&key, &format!("/v1/nodes/{rtx}/drain?deadline_seconds=1"), None).status, 403);

    // Nowhere else to go: it waits, saying so, until the deadline; then it is stopped and waits
    // pending for room.
    let drained = s.post(&op, &format!("/v1/nodes/{rtx}/drain?deadline_seconds=2"), None);
    assert_eq!(drained.status, 200, "{:?}", drained.body);
    assert!(drained.body["drain_deadline"].is_string(), "{:?}", drained.body);
    let waiting = s.wait_for(&key, &inst, "told", |b| b["reason"].is_string());
    assert_eq!(waiting["state"], "running", "{waiting}");
    let stopped = s.wait_for(&key, &inst, "stopped at the deadline", |b| {
        b["state"] == "pending" && b["pending_reason"].is_string()
    });
    assert!(stopped["pending_reason"].as_str().unwrap_or_default().contains("draining"), "{stopped}");
    // Uncordoned: the deadline goes with the drain, and the instance runs again.
    let ready = s.post(&op, &format!("/v1/nodes/{rtx}/uncordon"), None);
    assert_eq!(ready.body["drain_deadline"], Value::Null, "{:?}", ready.body);
    s.wait_state(&key, &inst, "running");
}

#[test]
fn operators_see_each_reconciler_and_can_run_one_now() {
    let s = TestServer::start();
    let op = s.operator_key.clone();
    let key = s.tenant("acme");
    assert_eq!(s.get(&key, "/v1/admin/tasks").status, 403, "a tenant sees no control-plane internals");
    assert_eq!(s.post(&key, "/v1/admin/tasks/schedule/run", None).status, 403);

    let runs = |name: &str| -> u64 {
        let l = s.get(&op, "/v1/admin/tasks").body;
        let t = l["tasks"].as_array().unwrap().iter().find(|t| t["name"] == name).cloned();
        t.unwrap_or_else(|| panic!("no task {name}: {l}"))["runs"].as_u64().unwrap()
    };
    let l = s.get(&op, "/v1/admin/tasks").body;
    assert_eq!(l["leader"], true, "{l}");
    let names: Vec<&str> = l["tasks"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    for want in ["schedule", "drain", "heartbeat-watch", "metering", "jobs", "notices", "spot-prices", "invoicing"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while runs("schedule") == 0 {
        assert!(std::time::Instant::now() < deadline, "the scheduler never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Invoicing runs every 5 minutes: a kick runs it now.
    let before = runs("invoicing");
    let r = s.post(&op, "/v1/admin/tasks/invoicing/run", None);
    assert_eq!(r.status, 202, "{:?}", r.body);
    while runs("invoicing") == before {
        assert!(std::time::Instant::now() < deadline, "the kicked task never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let t = s.get(&op, "/v1/admin/tasks").body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "invoicing")
        .cloned()
        .unwrap();
    assert_eq!((t["failures"].as_u64(), &t["last_error"]), (Some(0), &Value::Null), "{t}");
    assert!(t["last_started"].is_string() && t["last_duration_ms"].is_number(), "{t}");
    let missing = s.post(&op, "/v1/admin/tasks/nope/run", None);
    assert_eq!(missing.status, 404);
    assert!(
        missing.body["detail"].as_str().unwrap().contains("schedule"),
        "names the tasks there are: {:?}",
        missing.body
    );
}

/// The OpenAPI document is 3.1 and lists exactly the routes the server answers.
#[test]
fn openapi_matches_the_routes() {
    let s = TestServer::start();
    let doc = s.raw("GET", "/v1/openapi.json", None, &[], None).body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 14, "{}", paths.len());
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "i-0000");
            let r = s.raw(&method.to_uppercase(), &concrete, Some(&s.operator_key), &[], None);
            assert!(
                r.body["code"] != "route_not_found" && r.body["code"] != "method_not_allowed",
                "{method} {path} is documented but not served"
            );
        }
    }
    // Every documented operation says what it answers on success.
    for item in paths.values() {
        for op in item.as_object().unwrap().values() {
            assert!(op["responses"].as_object().is_some_and(|r| r.keys().any(|k| k.starts_with('2'))));
        }
    }
}

/// The document is valid where generators and fuzzers trip (path parameters are in their path,
/// operationIds are unique) and is the one committed as `openapi.json`: an API change shows in
/// review. `GPUCLOUD_UPDATE_OPENAPI=1 cargo test -p gpucloud-server --test http` rewrites it.
#[test]
fn the_openapi_document_is_valid_and_committed() {
    let s = TestServer::start();
    let doc = s.raw("GET", "/v1/openapi.json", None, &[], None).body;
    let mut ids = std::collections::HashMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let template: Vec<&str> =
            path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            if let Some(other) = ids.insert(id.to_string(), format!("{method} {path}")) {
                panic!("operationId {id} is used by {other} and {method} {path}");
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let in_path: Vec<&str> =
                params.iter().filter(|p| p["in"] == "path").map(|p| p["name"].as_str().unwrap()).collect();
            for name in &in_path {
                assert!(
                    template.contains(name),
                    "{method} {path}: parameter {name} is declared in the path but is not in it"
                );
            }
            for name in &template {
                assert!(in_path.contains(name), "{method} {path}: {{{name}}} is not declared");
            }
        }
    }
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json");
    if std::env::var("GPUCLOUD_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&committed, &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        on_disk == text,
        "openapi.json is not the document the server serves: run GPUCLOUD_UPDATE_OPENAPI=1 cargo test -p gpucloud-server \
         --test http the_openapi_document, and review the diff"
    );
}

/// GPU telemetry with the DCGM exporter's names, labelled with the instance and tenant using it.
#[test]
fn metrics_expose_gpu_telemetry() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let me = s.get(&key, "/v1/whoami").body["tenant"]["id"].as_str().unwrap().to_string();
    let inst = s.create(&key, "H100-80GB", 2, Some("eu-1"));
    let id = id(&inst);
    s.wait_state(&key, &id, "running");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let r = s.raw("GET", "/metrics", Some(&s.operator_key), &[], None);
        let text = r.body.as_str().unwrap_or_default().to_string();
        if text.lines().any(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL") && l.contains(&id)) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no telemetry for {id}: {text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for name in [
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "gpucloud_pending_instances",
        "gpucloud_spot_price_per_gpu_hour",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    // The dev price book seeds spot at 40% of on-demand: H100-80GB 2.99 -> 1.196 until the market moves it.
    let spot =
        text.lines().find(|l| l.starts_with("gpucloud_spot_price_per_gpu_hour{gpu=\"H100-80GB\",region=\"eu-1\"}"));
    let value: f64 = spot.expect("the H100 spot price").rsplit(' ').next().unwrap().parse().unwrap();
    assert!((0.7475..=2.99).contains(&value), "between the floor and on-demand: {value}");
    let busy: Vec<&str> = text.lines().filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{") && l.contains(&id)).collect();
    assert_eq!(busy.len(), 2, "one series per GPU of the instance");
    for line in &busy {
        assert!(line.contains(&format!("tenant=\"{me}\"")) && line.contains("modelName=\"H100-80GB\""), "{line}");
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((80.0..=100.0).contains(&value), "a busy GPU is busy: {line}");
    }
    assert!(text.contains("gpucloud_instances{state=\"running\"} 1"));
    assert!(text.contains("gpucloud_gpu_healthy{"));
    // A key is needed; a tenant sees its own GPUs only, another tenant none of them.
    assert_eq!(s.raw("GET", "/metrics", None, &[], None).status, 401);
    let mine = s.raw("GET", "/metrics", Some(&key), &[], None).body.as_str().unwrap_or_default().to_string();
    let gpu_lines = |t: &str| t.lines().filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{")).count();
    assert_eq!(gpu_lines(&mine), 2, "{mine}");
    assert!(
        !mine.contains("gpucloud_gpu_healthy{") && !mine.contains("gpucloud_nodes{"),
        "fleet-wide series are the operator's"
    );
    let other = s.tenant("other");
    let theirs = s.raw("GET", "/metrics", Some(&other), &[], None).body.as_str().unwrap_or_default().to_string();
    assert_eq!(gpu_lines(&theirs), 0, "{theirs}");
    assert!(!theirs.contains(&me) && !theirs.contains(&id), "nothing of another tenant");
    assert!(theirs.contains("gpucloud_instances{state=\"running\"} 0"));

    // A slice's tenant sees the readings of the GPU its slice is on, labelled with its slice.
    let body = json!({"gpu": "T4", "count": 1, "gpu_share": 50, "command": "sleep 600"});
    let r = s.post(&other, "/v1/instances", Some(&body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let slice = r.body["id"].as_str().unwrap().to_string();
    s.wait_state(&other, &slice, "running");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let theirs = s.raw("GET", "/metrics", Some(&other), &[], None).body.as_str().unwrap_or_default().to_string();
        let lines: Vec<&str> = theirs.lines().filter(|l| l.starts_with("DCGM_FI_DEV_GPU_TEMP{")).collect();
        if lines.len() == 1 && lines[0].contains(&format!("instance=\"{slice}\"")) {
            assert!(lines[0].contains("modelName=\"T4\""), "{}", lines[0]);
            assert!(!theirs.contains(&id), "still nothing of the first tenant");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no series for the slice {slice}: {theirs}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn names_work_where_ids_do_and_odd_inputs_are_refused() {
    let s = TestServer::start();
    let a = s.tenant("alice");
    let b = s.tenant("bob");
    let named = |key: &str, name: &str| {
        let body = serde_json::json!({"gpu": "T4", "count": 1, "command": "sleep 1000", "name": name});
        let r = s.post(key, "/v1/instances", Some(&body));
        assert_eq!(r.status, 201, "{:?}", r.body);
        id(&r.body)
    };
    let first = named(&a, "trainer");
    let r = s.get(&a, "/v1/instances/trainer");
    assert_eq!((r.status, r.body["id"].as_str()), (200, Some(first.as_str())), "{:?}", r.body);
    assert_eq!(s.get(&b, "/v1/instances/trainer").status, 404, "not another tenant's name");
    // Actions take the name too; a terminated instance gives its name up to a live one.
    assert_eq!(s.post(&a, "/v1/instances/trainer/terminate", None).status, 200);
    s.wait_state(&a, &first, "terminated");
    let second = named(&a, "trainer");
    assert_eq!(s.get(&a, "/v1/instances/trainer").body["id"], second.as_str());
    // Two live instances of one name: the name is ambiguous, and the answer lists the ids.
    let third = named(&a, "trainer");
    let r = s.get(&a, "/v1/instances/trainer");
    assert_eq!(r.status, 409, "{:?}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains(&second) && detail.contains(&third), "{detail}");

    let r = s.post(&a, "/v1/instances", Some(&serde_json::json!({"gpu": "T4", "count": 1, "command": "echo a\u{0}b"})));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("command")), "{:?}", r.body);
    let r = s.post(&a, "/v1/jobs", Some(&serde_json::json!({"gpus": ["T4"], "count": 1, "command": "x\u{0}"})));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("command")), "{:?}", r.body);
    let r = s.get(&a, &format!("/v1/instances/{second}/logs?after=-1"));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("after")), "{:?}", r.body);
    assert_eq!(s.get(&a, &format!("/v1/instances/{second}/logs?after=0")).status, 200);
}

#[test]
fn a_placed_instance_shows_where_it_runs_and_a_stop_invents_no_exit_code() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    // A10s are only in us-1: asking for any region lands there.
    let inst = s.create(&key, "A10", 1, None);
    assert_eq!((&inst["region"], &inst["requested_region"]), (&Value::Null, &Value::Null), "{inst}");
    let running = s.wait_state(&key, &id(&inst), "running");
    assert_eq!((running["region"].as_str(), &running["requested_region"]), (Some("us-1"), &Value::Null), "{running}");
    let listed = s.get(&key, "/v1/instances").body;
    assert_eq!(listed["instances"][0]["region"], "us-1");

    // The node saw no exit status for a stop it was asked for: none is shown, not a made-up 0.
    s.post(&key, &format!("/v1/instances/{}/stop", id(&inst)), None);
    let stopped = s.wait_state(&key, &id(&inst), "stopped");
    assert_eq!((&stopped["exit_code"], stopped["region"].as_str()), (&Value::Null, Some("us-1")), "{stopped}");
    s.post(&key, &format!("/v1/instances/{}/start", id(&inst)), None);
    s.wait_state(&key, &id(&inst), "running");
    s.post(&key, &format!("/v1/instances/{}/terminate", id(&inst)), None);
    let gone = s.wait_state(&key, &id(&inst), "terminated");
    assert_eq!(gone["exit_code"], Value::Null, "{gone}");

    let asked = s.create(&key, "T4", 1, Some("eu-1"));
    assert_eq!((asked["region"].as_str(), asked["requested_region"].as_str()), (Some("eu-1"), Some("eu-1")));
}
