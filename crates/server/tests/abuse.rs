//! The API abuse suite, driven by the OpenAPI document so a new route is covered the day it is
//! added: every route with another tenant's ids (never its data: 403, 404 or a 4xx about the
//! input), every operator route with a tenant key (403), and every route with malformed,
//! oversized and boundary inputs (no 5xx, and the server stays up).

mod common;

use common::TestServer;
use serde_json::json;

/// Routes a tenant key may call and get its own answer from whatever the path says (not another
/// tenant's resource): they must still never fail with 5xx.
const OWN_ANSWER: &[&str] = &["/v1/billing/invoices/{month}"];

fn routes(s: &TestServer) -> Vec<(String, String, Vec<String>)> {
    let doc = s.get(&s.operator_key, "/v1/openapi.json").body;
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let tags: Vec<String> = op["tags"]
                .as_array()
                .map(|t| t.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            out.push((method.to_uppercase(), path.clone(), tags));
        }
    }
    assert!(out.len() > 60, "the document lists every route: {}", out.len());
    out
}

fn send(s: &TestServer, key: &str, method: &str, path: &str, body: Option<&[u8]>) -> common::Resp {
    let headers: &[(&str, &str)] = if body.is_some() { &[("Content-Type", "application/json")] } else { &[] };
    s.raw(method, path, Some(key), headers, body)
}

#[test]
fn another_tenants_ids_and_operator_routes_are_refused_everywhere() {
    let s = TestServer::start_with(|c| c.rate_limit = None);
    let a = s.tenant("owner");
    let b = s.tenant("intruder");
    // A's resources, one of each kind a path can name.
    let inst = s.create(&a, "T4", 1, Some("eu-1"));
    let iid = inst["id"].as_str().unwrap().to_string();
    s.wait_state(&a, &iid, "running");
    let cluster =
        json!({"name": "secret-cluster", "gpu": "T4", "gpus_per_node": 1, "nodes": 1, "command": "sleep 100"});
    assert_eq!(s.post(&a, "/v1/clusters", Some(&cluster)).status, 201);
    let pool = json!({"name": "secret-pool", "gpu": "T4", "count": 1, "command": "sleep 100", "size": 0});
    assert_eq!(s.post(&a, "/v1/pools", Some(&pool)).status, 201);
    let job = s.post(&a, "/v1/jobs", Some(&json!({"gpus": ["T4"], "count": 1, "command": "sleep 100"})));
    assert_eq!(job.status, 201, "{:?}", job.body);
    let jid = job.body["id"].as_str().unwrap().to_string();
    let key = s.post(&a, "/v1/keys", Some(&json!({"name": "member"})));
    let kid = key.body["id"].as_str().unwrap().to_string();
    let tenant_a = s.get(&a, "/v1/whoami").body["tenant"]["id"].as_str().unwrap().to_string();
    let node = s.get(&s.operator_key, "/v1/nodes").body["nodes"][0]["id"].as_str().unwrap().to_string();

    // Each path parameter filled with A's resource, or with a made-up one of the same shape.
    let fill = |path: &str, fake: bool| -> String {
        let pick = |real: &str, made_up: &str| if fake { made_up.to_string() } else { real.to_string() };
        let id = if path.starts_with("/v1/jobs/") {
            pick(&jid, "j-0000000000000000")
        } else if path.starts_with("/v1/keys/") {
            pick(&kid, "k-0000000000000000")
        } else if path.starts_with("/v1/nodes/") {
            pick(&node, "n-0000000000000000")
        } else if path.starts_with("/v1/tenants/") {
            pick(&tenant_a, "t-0000000000000000")
        } else {
            pick(&iid, "i-0000000000000000")
        };
        let name = match (path.starts_with("/v1/pools/"), fake) {
            (_, true) => "no-such-name",
            (true, false) => "secret-pool",
            (false, false) => "secret-cluster",
        };
        path.replace("{id}", &id).replace("{name}", name).replace("{month}", "2026-11")
    };
    // What an answer says once the ids in it are masked: A's resource and a made-up one must
    // read the same, or the answer tells B that A's exists.
    let masked = |text: &str| -> String {
        let mut t = text.to_string();
        for (real, fake) in [
            (iid.as_str(), "i-0000000000000000"),
            (jid.as_str(), "j-0000000000000000"),
            (kid.as_str(), "k-0000000000000000"),
            ("secret-cluster", "no-such-name"),
            ("secret-pool", "no-such-name"),
        ] {
            t = t.replace(real, "ID").replace(fake, "ID");
        }
        t
    };
    let mut checked = 0;
    for (method, path, tags) in routes(&s) {
        if path.starts_with("/v1/agent/") || OWN_ANSWER.contains(&path.as_str()) {
            continue;
        }
        let operator_only = tags.iter().any(|t| t == "nodes")
            || path.starts_with("/v1/tenants")
            || path.starts_with("/v1/admin/")
            || ["/v1/fleet/telemetry", "/v1/queue", "/v1/audit"].contains(&path.as_str())
            || (method != "GET"
                && ["/v1/prices", "/v1/billing/rules", "/v1/reservations", "/v1/billing/invoices/close"]
                    .contains(&path.as_str()));
        let names_a = path.contains('{');
        if !operator_only && !names_a {
            continue; // the caller's own collection: nothing of A's to leak
        }
        let url = fill(&path, false);
        let body = (method != "GET").then_some(&b"{}"[..]);
        let r = send(&s, &b, &method, &url, body);
        let text = r.body.to_string();
        assert!(r.status < 500, "{method} {url}: {} {text}", r.status);
        if operator_only {
            assert!(matches!(r.status, 403 | 422 | 400), "{method} {url} with a tenant key: {} {text}", r.status);
        } else {
            assert!(
                matches!(r.status, 404 | 403 | 422 | 400 | 405),
                "{method} {url} with another tenant's id: {} {text}",
                r.status
            );
            let fake = send(&s, &b, &method, &fill(&path, true), body);
            assert_eq!(
                (fake.status, masked(&fake.body.to_string())),
                (r.status, masked(&text)),
                "{method} {path}: A's resource and a made-up one must look the same to B"
            );
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} routes checked");
    // And A still sees its own.
    assert_eq!(s.get(&a, &format!("/v1/instances/{iid}")).status, 200);
}

#[test]
fn malformed_oversized_and_boundary_inputs_never_break_a_route() {
    // Unlimited, so every input reaches its handler instead of a 429.
    let s = TestServer::start_with(|c| c.rate_limit = None);
    let t = s.tenant("fuzzer");
    let huge_id = "i-".to_string() + &"x".repeat(10_000);
    let path_values =
        ["0", "-1", "i-", "%00", "..%2F..%2Fetc%2Fpasswd", "%F0%9F%92%A5", "2026-13", "99999999999999999999", &huge_id];
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"a string\"".to_vec(),
        br#"{"gpu": "A100-40GB", "count": 4294967296, "command": "x"}"#.to_vec(),
        br#"{"gpu": "A100-40GB", "count": -1, "command": "x", "region": "eu-1"}"#.to_vec(),
        br#"{"name": "\u0000\u0001", "nodes": 1e308, "size": null, "max_price_per_gpu_hour": "1e999"}"#.to_vec(),
        br#"{"below_percent": 18446744073709551616, "minutes": 0.5, "auto_stop": "yes"}"#.to_vec(),
        format!(r#"{{"command": "{}"}}"#, "x".repeat(70_000)).into_bytes(),
        vec![0xff, 0xfe, 0x00, 0x7b],
    ];
    let mut calls = 0;
    for (method, path, _) in routes(&s) {
        if path.starts_with("/v1/agent/") && method == "GET" {
            continue;
        }
        let urls: Vec<String> = if path.contains('{') {
            path_values.iter().map(|v| path.replace("{id}", v).replace("{name}", v).replace("{month}", v)).collect()
        } else {
            vec![path.clone(), format!("{path}?since=-5&step=0&limit=-1&from=yesterday&by=%00")]
        };
        for url in urls {
            for key in [&t, &s.operator_key] {
                if method == "GET" || method == "DELETE" {
                    let r = send(&s, key, &method, &url, None);
                    assert!(r.status < 500, "{method} {url}: {} {}", r.status, r.body);
                    calls += 1;
                    continue;
                }
                for body in &bodies {
                    let r = send(&s, key, &method, &url, Some(body));
                    assert!(
                        r.status < 500,
                        "{method} {url} {:?}: {} {}",
                        String::from_utf8_lossy(&body[..body.len().min(80)]),
                        r.status,
                        r.body
                    );
                    if body.len() > 64 * 1024 {
                        assert!(
                            matches!(r.status, 413 | 404 | 403 | 405 | 400 | 422 | 429),
                            "{method} {url}: {}",
                            r.status
                        );
                    }
                    calls += 1;
                }
            }
        }
    }
    // No key, a malformed key, a key-shaped guess: 401, never more.
    for auth in ["", "Bearer", "Bearer gpc_", "Basic Zm9vOmJhcg==", &format!("Bearer gpc_{}", "A".repeat(40))] {
        let headers: &[(&str, &str)] = if auth.is_empty() { &[] } else { &[("Authorization", auth)] };
        let r = s.raw("GET", "/v1/instances", None, headers, None);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
    }
    assert!(calls > 1_000, "{calls}");
    assert_eq!(s.get(&t, "/v1/instances").status, 200, "still serving");
}
