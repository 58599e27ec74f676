//! Members' keys, read-only scope, revocation, per-key rate limits and the audit log, over HTTP.

mod common;

use common::TestServer;
use serde_json::json;
use std::time::Duration;

#[test]
fn members_get_admin_or_read_only_keys_and_revocation_is_immediate() {
    let s = TestServer::start();
    let admin = s.tenant("lab");
    let other = s.tenant("rival");

    let r = s.post(&admin, "/v1/keys", Some(&json!({"name": "grafana", "scope": "read-only"})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let reader = r.body["api_key"].as_str().unwrap().to_string();
    let reader_id = r.body["id"].as_str().unwrap().to_string();
    for (body, field) in [
        (json!({"name": "x", "scope": "root"}), "scope"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "owner": "me"}), "owner"),
    ] {
        let r = s.post(&admin, "/v1/keys", Some(&body));
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{body}: {:?}", r.body);
    }

    // Read-only: reads work, every change is refused and names the key.
    assert_eq!(s.get(&reader, "/v1/instances").status, 200);
    assert_eq!(s.get(&reader, "/v1/billing/balance").status, 200);
    let body = json!({"gpu": "T4", "count": 1, "command": "sleep 100"});
    let r = s.post(&reader, "/v1/instances", Some(&body));
    assert_eq!((r.status, r.body["code"].as_str()), (403, Some("read_only_key")), "{:?}", r.body);
    assert_eq!(s.post(&reader, "/v1/keys", Some(&json!({"name": "escalate"}))).status, 403);
    let inst = s.create(&admin, "T4", 1, None);
    let id = inst["id"].as_str().unwrap();
    assert_eq!(s.post(&reader, &format!("/v1/instances/{id}/stop"), None).status, 403);

    let keys = s.get(&admin, "/v1/keys").body;
    let listed: Vec<(&str, &str)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["scope"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, vec![("", "admin"), ("grafana", "read-only")]);
    assert!(!keys.to_string().contains(&reader), "a listing never shows a secret");

    // Another tenant cannot see or revoke it; its owner can, once; then it is refused.
    assert_eq!(s.post(&other, &format!("/v1/keys/{reader_id}/revoke"), None).status, 404);
    let r = s.post(&admin, &format!("/v1/keys/{reader_id}/revoke"), None);
    assert_eq!((r.status, r.body["revoked_at"].is_string()), (200, true), "{:?}", r.body);
    assert_eq!(s.get(&reader, "/v1/instances").status, 401);
    assert_eq!(s.post(&admin, &format!("/v1/keys/{reader_id}/revoke"), None).status, 409);
    assert_eq!(s.post(&admin, "/v1/keys/k-nonsense/revoke", None).status, 404);
    // The operator may revoke any tenant's key.
    let r = s.post(&other, "/v1/keys", Some(&json!({"name": "ci"})));
    let ci_id = r.body["id"].as_str().unwrap().to_string();
    let ci = r.body["api_key"].as_str().unwrap().to_string();
    assert_eq!(s.post(&s.operator_key, &format!("/v1/keys/{ci_id}/revoke"), None).status, 200);
    assert_eq!(s.get(&ci, "/v1/whoami").status, 401);
}

#[test]
fn each_key_has_its_own_rate_limit() {
    // Virtual time: no token comes back while the test runs, until it moves the clock.
    let s = TestServer::start_with(|c| {
        c.rate_limit = Some(gpucloud_server::app::ratelimit::RateLimit { per_second: 5.0, burst: 5.0 });
        c.clock = gpucloud_server::app::Clock::virtual_now();
    });
    let a = s.tenant("busy");
    let b = s.tenant("calm");
    let statuses: Vec<u16> = (0..8).map(|_| s.get(&a, "/v1/instances").status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429], "a burst of 5");
    let limited = s.raw("GET", "/v1/instances", Some(&a), &[], None);
    assert_eq!((limited.status, limited.body["code"].as_str()), (429, Some("rate_limited")), "{:?}", limited.body);
    assert_eq!(s.get(&b, "/v1/instances").status, 200, "another key is not slowed");
    let mut resp = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .get(format!("{}/v1/instances", s.url))
        .header("Authorization", format!("Bearer {a}"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let _ = resp.body_mut().read_to_string();
    s.advance(Duration::from_millis(199));
    assert_eq!(s.get(&a, "/v1/instances").status, 429, "not yet a whole token");
    s.advance(Duration::from_millis(1));
    assert_eq!(s.get(&a, "/v1/instances").status, 200, "tokens come back at the configured rate");
    assert_eq!(s.get(&a, "/v1/instances").status, 429);
}

#[test]
fn every_mutating_call_is_in_the_audit_log_for_the_operator() {
    let s = TestServer::start();
    let key = s.tenant("lab");
    let inst = s.create(&key, "T4", 1, None);
    let id = inst["id"].as_str().unwrap().to_string();
    s.wait_state(&key, &id, "running");
    assert_eq!(s.post(&key, &format!("/v1/instances/{id}/stop"), None).status, 200);
    let r = s.post(&key, "/v1/instances", Some(&json!({"gpu": "T4", "count": 0, "command": "x"})));
    assert_eq!(r.status, 422);
    s.get(&key, "/v1/instances"); // reads are not audited

    assert_eq!(s.get(&key, "/v1/audit").status, 403, "the audit log is the operator's");
    let tenant = s.get(&key, "/v1/whoami").body["tenant"]["id"].as_str().unwrap().to_string();
    let log = s.get(&s.operator_key, &format!("/v1/audit?tenant={tenant}")).body;
    let rows: Vec<(String, String, u64)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["method"].as_str().unwrap().into(), e["path"].as_str().unwrap().into(), e["status"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("POST".to_string(), "/v1/instances".to_string(), 422),
            ("POST".to_string(), format!("/v1/instances/{id}/stop"), 200),
            ("POST".to_string(), "/v1/instances".to_string(), 201),
        ],
        "newest first: {log}"
    );
    let first = &log["entries"][0];
    assert!(first["remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{first}");
    assert_eq!(first["key_prefix"].as_str().unwrap(), &key[..12]);
    // The operator's own tenant creation is there too; a bad query is a 4xx.
    let all = s.get(&s.operator_key, "/v1/audit?limit=1000").body;
    assert!(all["entries"].as_array().unwrap().iter().any(|e| e["path"] == "/v1/tenants"), "{all}");
    assert_eq!(s.get(&s.operator_key, "/v1/audit?since=0").status, 422);
    assert_eq!(s.get(&s.operator_key, "/v1/audit?tenant=nobody").status, 422);
    assert_eq!(s.get(&s.operator_key, "/v1/audit?bogus=1").status, 400);
}

#[test]
fn an_agent_key_registers_nodes_and_does_nothing_else() {
    let s = TestServer::start();
    let tenant = s.tenant("lab");
    let r = s.post(&tenant, "/v1/keys", Some(&json!({"name": "node", "scope": "agent"})));
    assert_eq!(r.status, 403, "only an operator makes agent keys: {:?}", r.body);

    let r = s.post(&s.operator_key, "/v1/keys", Some(&json!({"name": "rack-7", "scope": "agent"})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let agent = r.body["api_key"].as_str().unwrap().to_string();
    let body =
        json!({"name": "gpu-host-7", "region": "eu-1", "gpus": [{"index": 0, "model": "T4", "uuid": "GPU-7-0"}]});
    let r = s.post(&agent, "/v1/agent/register", Some(&body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let beat = json!({"node_id": r.body["node_id"], "epoch": r.body["epoch"], "instances": [], "gpus": []});
    assert_eq!(s.post(&agent, "/v1/agent/heartbeat", Some(&beat)).status, 200);

    // Everything else is refused, reads included, and the refusal names the key's kind.
    for (method, path) in
        [("GET", "/v1/instances"), ("GET", "/v1/nodes"), ("POST", "/v1/tenants"), ("POST", "/v1/keys")]
    {
        let r = if method == "GET" { s.get(&agent, path) } else { s.post(&agent, path, Some(&json!({"name": "x"}))) };
        assert_eq!((r.status, r.body["code"].as_str()), (403, Some("agent_key")), "{method} {path}: {:?}", r.body);
    }
    let keys = s.get(&s.operator_key, "/v1/keys").body;
    assert!(keys["keys"].as_array().unwrap().iter().any(|k| k["name"] == "rack-7" && k["scope"] == "agent"), "{keys}");
}

#[test]
fn agents_register_nodes_with_labels_that_select_them() {
    let s = TestServer::start();
    let op = s.operator_key.clone();
    let register = |name: &str, labels: serde_json::Value| {
        let body = json!({"name": name, "region": "eu-1", "labels": labels,
            "gpus": [{"index": 0, "model": "T4", "uuid": format!("GPU-{name}-0")}]});
        s.post(&op, "/v1/agent/register", Some(&body))
    };
    for (labels, needle) in [
        (json!({"": "x"}), "label key ''"),
        (json!({"-rack": "x"}), "starting with a letter or digit"),
        (json!({"rack": "a\nb"}), "printable"),
        (json!({"k=v": "x"}), "letters, digits"),
    ] {
        let r = register("bad", labels.clone());
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some("labels")), "{labels}: {:?}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains(needle), "{labels}: {:?}", r.body);
    }
    assert_eq!(register("a", json!({"rack": "r7", "nvlink": "nv18"})).status, 201);
    assert_eq!(register("b", json!({"rack": "r8"})).status, 201);
    assert_eq!(register("c", json!({})).status, 201);
    let names = |query: &str| -> Vec<String> {
        let r = s.get(&op, &format!("/v1/nodes{query}"));
        assert_eq!(r.status, 200, "{query}: {:?}", r.body);
        let mut n: Vec<String> =
            r.body["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(names("").len(), 3 + 8, "the test fleet's 8 nodes and these");
    assert_eq!(names("?label=rack%3Dr7"), ["a"]);
    assert_eq!(names("?label=rack"), ["a", "b"]);
    assert_eq!(names("?label=nvlink%3Dnv12"), Vec::<String>::new());
    // A new registration says what the node is now: labels replaced, not merged.
    assert_eq!(register("a", json!({"rack": "r9"})).status, 201);
    let nodes = s.get(&op, "/v1/nodes?label=rack%3Dr9").body;
    assert_eq!(nodes["nodes"][0]["labels"], json!({"rack": "r9"}), "{nodes}");
}

/// A stolen agent key speaks for its own node and no other: every agent route, found in the
/// OpenAPI document so that a new one cannot be missed, refuses another node's business with 403
/// and changes nothing.
#[test]
fn an_agent_key_speaks_only_for_its_own_node() {
    let s = TestServer::start();
    let op = s.operator_key.clone();
    let mint = |name: &str, node: Option<&str>| {
        let r = s.post(&op, "/v1/keys", Some(&json!({"name": name, "scope": "agent", "node": node})));
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["api_key"].as_str().unwrap().to_string()
    };
    let r = s.post(&op, "/v1/keys", Some(&json!({"name": "x", "scope": "admin", "node": "host-a"})));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("node")), "only agent keys have a node");
    let key_a = mint("host-a's", Some("host-a"));
    let key_b = mint("first come", None);
    let key_c = mint("spare", None);
    let register = |key: &str, name: &str| {
        let body = json!({"name": name, "region": "eu-1",
            "gpus": [{"index": 0, "model": "L4", "uuid": format!("GPU-{name}-0")}]});
        s.post(key, "/v1/agent/register", Some(&body))
    };
    let a = register(&key_a, "host-a");
    assert_eq!(a.status, 201, "{:?}", a.body);
    let (node_a, epoch_a) = (a.body["node_id"].as_str().unwrap().to_string(), a.body["epoch"].clone());
    assert_eq!(register(&key_a, "host-z").status, 403, "a key minted for host-a registers host-a only");
    let b = register(&key_b, "host-b");
    assert_eq!(b.status, 201, "an unbound key takes the first new node it registers: {:?}", b.body);
    let node_b = b.body["node_id"].as_str().unwrap().to_string();
    assert_eq!(register(&key_b, "host-y").status, 403, "and is bound to it from then on");
    let keys = s.get(&op, "/v1/keys").body;
    assert!(keys["keys"].as_array().unwrap().iter().any(|k| k["node"] == "host-b"), "{keys}");
    let r = register(&key_c, "host-a");
    assert_eq!(r.status, 403, "a registered node needs its own key: {:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("--node host-a"), "{:?}", r.body);

    // A workload of a tenant runs on host-a (the only L4 node).
    let beat = |key: &str, node: &str, epoch: &serde_json::Value, instances: serde_json::Value| {
        s.post(
            key,
            "/v1/agent/heartbeat",
            Some(&json!({"node_id": node, "epoch": epoch, "instances": instances, "gpus": []})),
        )
    };
    assert_eq!(beat(&key_a, &node_a, &epoch_a, json!([])).status, 200);
    let tenant = s.tenant("victim");
    let id = s.create(&tenant, "L4", 1, Some("eu-1"))["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = beat(&key_a, &node_a, &epoch_a, json!([]));
        if r.body["instances"].as_array().unwrap().iter().any(|w| w["id"] == id.as_str()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never placed on host-a: {:?}", r.body);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let running = json!([{"id": id, "state": "running"}]);
    assert_eq!(beat(&key_a, &node_a, &epoch_a, running.clone()).status, 200);
    s.wait_state(&tenant, &id, "running");
    let log = |key: &str, node: &str, data: &str| {
        let body = json!({"node_id": node, "epoch": 1, "instance": id, "chunks": [{"seq": 1, "data": data}]});
        s.post(key, "/v1/agent/logs", Some(&body))
    };

    // Every agent route, with host-b's key, about host-a and its workload.
    let doc = s.get(&op, "/v1/openapi.json").body;
    let routes: Vec<String> =
        doc["paths"].as_object().unwrap().keys().filter(|p| p.starts_with("/v1/agent/")).cloned().collect();
    assert!(routes.len() >= 3, "{routes:?}");
    for route in &routes {
        let r = match route.as_str() {
            "/v1/agent/register" => register(&key_b, "host-a"),
            "/v1/agent/heartbeat" => {
                beat(&key_b, &node_a, &epoch_a, json!([{"id": id, "state": "failed", "exit_code": 1}]))
            }
            "/v1/agent/logs" => log(&key_b, &node_a, "forged by host-b"),
            other => panic!("agent route {other} has no probe here: add one, so that it is attacked too"),
        };
        assert_eq!(r.status, 403, "{route}: {:?}", r.body);
    }
    // Its own node's name on a request about another node's instance changes nothing either.
    assert_eq!(log(&key_b, &node_b, "forged as host-b's").status, 403);
    let b_epoch = json!(1);
    assert_eq!(beat(&key_b, &node_b, &b_epoch, json!([{"id": id, "state": "failed", "exit_code": 1}])).status, 200);
    // A made-up node is refused the same way as another's: a stolen key learns nothing.
    let r = beat(&key_b, "n-aaaaaaaaaaaaaaaa", &b_epoch, json!([]));
    assert_eq!(r.status, 403, "{:?}", r.body);

    // Nothing changed: host-a's agent still beats with its epoch, the workload runs, no forged line.
    assert_eq!(beat(&key_a, &node_a, &epoch_a, running).status, 200);
    assert_eq!(s.get(&tenant, &format!("/v1/instances/{id}")).body["state"], "running");
    let logs = s.get(&tenant, &format!("/v1/instances/{id}/logs")).body;
    assert_eq!(logs["chunks"], json!([]), "{logs}");
    assert_eq!(log(&key_a, &node_a, "real output").status, 204);

    // The agent calls the API for its workload (Gpucloud-Workload): that instance only.
    let as_workload = |key: &str, method: &str, path: &str, body: Option<serde_json::Value>| {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        let headers = [("Gpucloud-Workload", id.as_str()), ("Content-Type", "application/json")];
        s.raw(method, path, Some(key), &headers, bytes.as_deref())
    };
    let own = as_workload(&key_a, "GET", &format!("/v1/instances/{id}"), None);
    assert_eq!((own.status, own.body["id"].as_str()), (200, Some(id.as_str())), "{:?}", own.body);
    let other = s.create(&tenant, "T4", 1, None)["id"].as_str().unwrap().to_string();
    for (method, path, body) in [
        ("GET", "/v1/instances".to_string(), None),
        ("GET", format!("/v1/instances/{other}"), None),
        ("POST", format!("/v1/instances/{other}/terminate"), None),
        ("POST", "/v1/instances".to_string(), Some(json!({"gpu": "T4", "count": 1, "command": "x"}))),
        ("GET", "/v1/billing/balance".to_string(), None),
        ("POST", "/v1/keys".to_string(), Some(json!({"name": "escalate"}))),
    ] {
        let r = as_workload(&key_a, method, &path, body);
        assert_eq!((r.status, r.body["code"].as_str()), (403, Some("workload_scope")), "{method} {path}: {:?}", r.body);
    }
    // Only the agent of the node it runs on speaks for it; a tenant's key cannot claim to.
    assert_eq!(as_workload(&key_b, "GET", &format!("/v1/instances/{id}"), None).status, 403);
    assert_eq!(as_workload(&tenant, "GET", &format!("/v1/instances/{id}"), None).status, 403);
    let untouched = s.get(&tenant, &format!("/v1/instances/{other}")).body;
    assert!(!["stopping", "terminated"].contains(&untouched["state"].as_str().unwrap()), "{untouched}");
    // An agent fenced off by a newer registration is told so, but not the current epoch.
    let r = beat(&key_a, &node_a, &json!(epoch_a.as_i64().unwrap() + 7), json!([]));
    assert_eq!((r.status, r.body["code"].as_str()), (409, Some("fenced")), "{:?}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.starts_with("fenced") && !detail.contains("epoch"), "{detail}");
}

/// A node has one agent. One an operator added by hand beats through an in-process agent until
/// a real agent registers it; from then on an epoch-less (in-process) beat is refused, so the two
/// never both run its workloads (a workload run twice, once without its port, showed no endpoint).
#[test]
fn a_registered_node_hears_no_in_process_agent() {
    use gpucloud_server::app::AppError;
    let s = TestServer::start();
    let region = gpucloud_model::Region::parse("eu-1").unwrap();
    let by_hand = s.block_on(s.app.add_node(None, "by-hand", region, &[(gpucloud_model::GpuModel::L4, 1)])).unwrap();
    assert!(s.in_process_beat(by_hand.id.clone()).is_ok(), "a node added by hand has its in-process agent");
    let register = |name: &str, uuid: &str| {
        let body = json!({"name": name, "region": "eu-1", "gpus": [{"index": 0, "model": "L4", "uuid": uuid}]});
        let r = s.post(&s.operator_key, "/v1/agent/register", Some(&body));
        assert_eq!(r.status, 201, "{:?}", r.body);
        gpucloud_model::NodeId::parse(r.body["node_id"].as_str().unwrap()).unwrap()
    };
    let taken_over = register("by-hand", &by_hand.gpus[0].uuid);
    assert_eq!(taken_over, by_hand.id);
    let fresh = register("agent-only", "GPU-agent-only-0");
    for node in [taken_over, fresh] {
        match s.in_process_beat(node.clone()) {
            Err(AppError::Fenced(why)) => assert!(why.contains("registered agent"), "{why}"),
            other => panic!("{node}: an in-process beat for an agent's node was {other:?}"),
        }
    }
}

/// An operator who rents to strangers refuses agents that run workloads as plain processes.
#[test]
fn a_cloud_that_requires_containers_refuses_process_agents() {
    let s = TestServer::start_with(|c| c.require_containers = true);
    let register = |runtime: Option<&str>| {
        let body = json!({"name": "shared-1", "region": "eu-1", "runtime": runtime,
            "gpus": [{"index": 0, "model": "T4", "uuid": "GPU-shared-1-0"}]});
        s.post(&s.operator_key, "/v1/agent/register", Some(&body))
    };
    for runtime in [None, Some("process"), Some("fake")] {
        let r = register(runtime);
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some("runtime")), "{runtime:?}: {:?}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains("--runtime docker"), "{:?}", r.body);
    }
    let r = register(Some("vm"));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("runtime")), "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("docker"), "the allowed values are named: {:?}", r.body);
    assert_eq!(register(Some("docker")).status, 201);
}

/// The role matrix, read from the OpenAPI document so a new route is judged the day it is
/// added: every mutating route with a member, a billing, a read-only and a project's admin key.
/// What each may change is written here, apart from the server's rule.
#[test]
fn every_mutating_route_answers_each_role_as_the_matrix_says() {
    let s = TestServer::start_with(|c| c.rate_limit = None);
    let admin = s.tenant("lab");
    let key = |by: &str, body: serde_json::Value| {
        let r = s.post(by, "/v1/keys", Some(&body));
        assert_eq!(r.status, 201, "{body}: {:?}", r.body);
        r.body["api_key"].as_str().unwrap().to_string()
    };
    let member = key(&admin, json!({"name": "dev", "scope": "member"}));
    let billing = key(&admin, json!({"name": "finance", "scope": "billing"}));
    let viewer = key(&admin, json!({"name": "grafana", "scope": "read-only"}));
    assert_eq!(s.post(&admin, "/v1/projects", Some(&json!({"name": "ml"}))).status, 201);
    let project_admin = key(&admin, json!({"name": "ml-lead", "project": "ml"}));

    let doc = s.get(&admin, "/v1/openapi.json").body;
    let mut judged = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path.starts_with("/v1/agent/") {
            continue; // agent keys only: access.rs's agent test
        }
        for method in ["post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let concrete: String = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "zz-none" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
            let harmless = path == "/v1/session" || path == "/v1/instances/quote";
            let settings =
                ["/v1/keys", "/v1/projects", "/v1/billing", "/v1/idle-policy", "/v1/tenants"].iter().any(|p| under(p));
            let expect = [
                (&member, "member", settings && !harmless),
                (&billing, "billing", !(under("/v1/billing") || harmless)),
                (&project_admin, "project admin", under("/v1/billing") || under("/v1/idle-policy")),
            ];
            let body = serde_json::to_vec(&json!({})).unwrap();
            let m = method.to_uppercase();
            for (k, who, refused) in expect {
                let r = s.raw(&m, &concrete, Some(k), &[("Content-Type", "application/json")], Some(&body));
                let by_role = r.status == 403 && r.body["code"] == "key_role";
                assert_eq!(by_role, refused, "{who} {m} {path}: {} {:?}", r.status, r.body);
                if by_role {
                    let detail = r.body["detail"].as_str().unwrap();
                    assert!(detail.contains(&format!("cannot {m} {concrete}")), "{detail}");
                }
            }
            if path != "/v1/session" {
                let r = s.raw(&m, &concrete, Some(&viewer), &[("Content-Type", "application/json")], Some(&body));
                assert_eq!((r.status, r.body["code"].as_str()), (403, Some("read_only_key")), "viewer {m} {path}");
            }
            judged += 1;
        }
    }
    assert!(judged > 50, "only {judged} mutating routes judged");

    // What the roles are for, end to end: a member runs work, a billing key sets the budget.
    let r = s.post(&member, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "sleep 60"})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = s.post(&billing, "/v1/billing/budget", Some(&json!({"monthly_limit": "100.00"})));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s.post(&billing, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "sleep 60"})));
    assert_eq!((r.status, r.body["code"].as_str()), (403, Some("key_role")), "{:?}", r.body);
    assert_eq!(s.get(&billing, "/v1/instances").status, 200, "a billing key reads");
    let listed = s.get(&admin, "/v1/keys").body;
    let scopes: Vec<&str> = listed["keys"].as_array().unwrap().iter().map(|k| k["scope"].as_str().unwrap()).collect();
    assert_eq!(scopes, ["admin", "member", "billing", "read-only", "admin"]);
}

/// Two replicas on one store: a key's rate limit is one bucket between them, not one each.
#[test]
fn replicas_share_a_keys_rate_limit() {
    use gpucloud_server::app::{Config, ratelimit::RateLimit};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = std::env::temp_dir().join(format!("gpucloud-replicas-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b, key) = rt.block_on(async {
        let store = gpucloud_store::open(&format!("sqlite://{}/db.sqlite", dir.display())).await.unwrap();
        let config = |name: &str| Config {
            replica: Some(name.to_string()),
            // Slow enough that the test's own duration refills almost nothing.
            rate_limit: Some(RateLimit { per_second: 0.2, burst: 10.0 }),
            ..Config::default()
        };
        let a = gpucloud_server::start(store.clone(), config("a"), "127.0.0.1:0").await.unwrap();
        let b = gpucloud_server::start(store, config("b"), "127.0.0.1:0").await.unwrap();
        let key = a.app.create_tenant(None, "lab", gpucloud_model::Role::Tenant).await.unwrap().secret;
        (a, b, key)
    });
    let agent = gpucloud_client::local_agent(std::time::Duration::from_secs(10));
    let mut ok = 0;
    for i in 0..30 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let r = agent.get(format!("http://{addr}/v1/whoami")).header("Authorization", format!("Bearer {key}")).call();
        match r.map(|r| r.status().as_u16()) {
            Ok(200) => ok += 1,
            Ok(429) => {}
            other => panic!("{other:?}"),
        }
    }
    // A bucket each would have let 20 through; the shared one lets its burst (and perhaps a
    // token refilled meanwhile).
    assert!((10..=11).contains(&ok), "{ok} of 30 went through");
    drop((a, b));
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}
