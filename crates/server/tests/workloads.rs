//! What a workload runs with: its image, environment, secrets and ports, over HTTP as a tenant
//! and as an agent would use them.

mod common;

use common::TestServer;
use serde_json::{Value, json};

fn put_secret(s: &TestServer, key: &str, name: &str, value: &str) -> common::Resp {
    let body = serde_json::to_vec(&json!({ "value": value })).unwrap();
    s.raw("PUT", &format!("/v1/secrets/{name}"), Some(key), &[("Content-Type", "application/json")], Some(&body))
}

fn with_key() -> TestServer {
    TestServer::start_with(|c| c.secrets_key = Some(gpucloud_server::app::secrets::SecretsKey::generate()))
}

/// An agent node of its own (the only L4 node), registered with the operator's key.
fn l4_node(s: &TestServer) -> (String, Value) {
    let body = json!({"name": "l4-host", "region": "eu-1",
        "gpus": [{"index": 0, "model": "L4", "uuid": "GPU-l4-host-0"}]});
    let r = s.post(&s.operator_key, "/v1/agent/register", Some(&body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    (r.body["node_id"].as_str().unwrap().to_string(), r.body["epoch"].clone())
}

fn beat(s: &TestServer, node: &str, epoch: &Value, instances: Value) -> Value {
    let body = json!({"node_id": node, "epoch": epoch, "instances": instances, "gpus": []});
    let r = s.post(&s.operator_key, "/v1/agent/heartbeat", Some(&body));
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// Beats until the node is asked to run `id`; its workload as the agent gets it.
fn desired(s: &TestServer, node: &str, epoch: &Value, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let b = beat(s, node, epoch, json!([]));
        if let Some(w) = b["instances"].as_array().unwrap().iter().find(|w| w["id"] == id) {
            return w.clone();
        }
        assert!(std::time::Instant::now() < deadline, "never placed: {b}");
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
}

#[test]
fn secrets_are_stored_sealed_listed_by_name_and_kept_per_tenant() {
    let s = with_key();
    let a = s.tenant("alice");
    let b = s.tenant("bob");
    let value = "hf_VERY-secret-value-4242";
    let r = put_secret(&s, &a, "HF_TOKEN", value);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["name"], "HF_TOKEN");
    assert_eq!(put_secret(&s, &a, "HF_TOKEN", value).status, 200, "replaced");
    for (name, v, field) in [("9lives", "x", "name"), ("a b", "x", "name"), ("NUL", "a\0b", "value")] {
        let r = put_secret(&s, &a, &name.replace(' ', "%20"), v);
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{name}: {:?}", r.body);
    }
    let big = "x".repeat(32 * 1024 + 1);
    assert_eq!(put_secret(&s, &a, "BIG", &big).status, 422);
    let list = s.get(&a, "/v1/secrets");
    assert_eq!(list.status, 200);
    assert_eq!(list.body["secrets"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["secrets"][0]["name"], "HF_TOKEN");
    // Another tenant sees none of it and cannot delete it.
    assert_eq!(s.get(&b, "/v1/secrets").body["secrets"], json!([]));
    assert_eq!(s.raw("DELETE", "/v1/secrets/HF_TOKEN", Some(&b), &[], None).status, 404);
    // A read-only key cannot set one; no key at all is 401.
    let ro = s.post(&a, "/v1/keys", Some(&json!({"name": "viewer", "scope": "read-only"})));
    let ro = ro.body["api_key"].as_str().unwrap().to_string();
    assert_eq!(put_secret(&s, &ro, "OTHER", "x").status, 403);
    assert_eq!(s.raw("GET", "/v1/secrets", None, &[], None).status, 401);

    // An instance that takes it, by --secret and by --env KEY=secret:NAME.
    let body = json!({"gpu": "T4", "count": 1, "command": "sleep 1000",
        "env": {"MODE": "train", "TOKEN2": "secret:HF_TOKEN"}, "secrets": ["HF_TOKEN"]});
    let r = s.post(&a, "/v1/instances", Some(&body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["env"], json!({"HF_TOKEN": "secret:HF_TOKEN", "MODE": "train", "TOKEN2": "secret:HF_TOKEN"}));
    let id = r.body["id"].as_str().unwrap().to_string();
    s.wait_state(&a, &id, "running");
    // Bob cannot use Alice's secret.
    let r =
        s.post(&b, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "x", "secrets": ["HF_TOKEN"]})));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("env")), "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("no secret named 'HF_TOKEN'"), "{:?}", r.body);

    // The value is in no answer the API gives: not the instance, its list, its events, the
    // secrets list, nor the operator's audit log and usage.
    for (key, path) in [
        (&a, format!("/v1/instances/{id}")),
        (&a, "/v1/instances".to_string()),
        (&a, format!("/v1/instances/{id}/events")),
        (&a, "/v1/secrets".to_string()),
        (&s.operator_key, "/v1/audit".to_string()),
        (&s.operator_key, "/v1/nodes".to_string()),
        (&a, "/v1/openapi.json".to_string()),
    ] {
        let r = s.get(key, &path);
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert!(!r.body.to_string().contains(value), "{path} shows the secret's value");
    }
    // Nor the database: it is stored sealed.
    let rows = s.block_on(async {
        let tenant = s.app.store().list_tenants().await.unwrap().into_iter().find(|t| t.name == "alice").unwrap();
        s.app.store().list_secrets(&tenant.id).await.unwrap()
    });
    assert!(rows[0].sealed.starts_with("v1:") && !rows[0].sealed.contains(value));

    // The node running it gets the value, and only while it is to run.
    let node = s.block_on(async {
        let inst = s.app.store().get_instance(None, &gpucloud_model::InstanceId::parse(&id).unwrap()).await.unwrap();
        inst.unwrap().node_id.unwrap()
    });
    let d = s.in_process_beat(node).unwrap();
    let w = d.into_iter().find(|w| w.id.as_str() == id).unwrap();
    let env: std::collections::HashMap<String, String> = w.env.into_iter().collect();
    assert_eq!((env["HF_TOKEN"].as_str(), env["TOKEN2"].as_str(), env["MODE"].as_str()), (value, value, "train"));

    assert_eq!(s.raw("DELETE", "/v1/secrets/HF_TOKEN", Some(&a), &[], None).status, 204);
    assert_eq!(s.raw("DELETE", "/v1/secrets/HF_TOKEN", Some(&a), &[], None).status, 404);
}

#[test]
fn a_server_without_a_key_keeps_no_secrets() {
    let s = TestServer::start();
    let a = s.tenant("alice");
    let r = put_secret(&s, &a, "HF_TOKEN", "x");
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("--secrets-key-file"), "{:?}", r.body);
}

#[test]
fn image_env_and_ports_are_checked_kept_and_sent_to_the_node() {
    let s = with_key();
    let a = s.tenant("alice");
    let create = |extra: Value| {
        let mut body = json!({"gpu": "L4", "count": 1, "command": "sleep 1000"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        s.post(&a, "/v1/instances", Some(&body))
    };
    for (extra, field, needle) in [
        (json!({"image": "Ubuntu:24.04"}), "image", "lower-case"),
        (json!({"image": "ubuntu:"}), "image", "tag"),
        (json!({"image": ""}), "image", "1 to 255"),
        (json!({"env": {"1BAD": "x"}}), "env", "letters, digits"),
        (json!({"env": {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}}), "env", "set by gpucloud"),
        (json!({"env": {"NVIDIA_VISIBLE_DEVICES": "all"}}), "env", "set by gpucloud"),
        (json!({"env": {"GPUCLOUD_PORT": "1"}}), "env", "set by gpucloud"),
        (json!({"env": {"A": "x\ny"}}), "env", "line break"),
        (json!({"env": {"A": "secret:NOPE"}}), "env", "no secret named 'NOPE'"),
        (json!({"secrets": ["A-B"]}), "secrets", "letters, digits"),
        (json!({"env": {"A": "1"}, "secrets": ["A"]}), "secrets", "twice"),
        (json!({"ports": ["8888/udp"]}), "ports", "PORT/http or PORT/tcp"),
        (json!({"ports": ["0/http"]}), "ports", "PORT/http"),
        (json!({"ports": ["80", "80/tcp"]}), "ports", "twice"),
    ] {
        let r = create(extra.clone());
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{extra}: {:?}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains(needle), "{extra}: {:?}", r.body);
    }
    let r = create(json!({"image": "nvcr.io/nvidia/pytorch:24.05-py3", "env": {"MODE": "eval"},
        "ports": ["8888/http", "2222/tcp"]}));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["image"], "nvcr.io/nvidia/pytorch:24.05-py3");
    assert_eq!(
        r.body["ports"],
        json!([{"port": 8888, "protocol": "http", "url": null}, {"port": 2222, "protocol": "tcp", "url": null}])
    );

    // The node gets the image and ports; while it pulls, the instance says so and is not billed.
    let (node, epoch) = l4_node(&s);
    let w = desired(&s, &node, &epoch, &id);
    assert_eq!(w["image"], "nvcr.io/nvidia/pytorch:24.05-py3");
    assert_eq!(w["ports"], json!(["8888/http", "2222/tcp"]));
    assert_eq!(w["env"]["MODE"], "eval");
    let pulling = "pulling image nvcr.io/nvidia/pytorch:24.05-py3: 45% of 8000 MB";
    beat(&s, &node, &epoch, json!([{"id": id, "state": "preparing", "progress": pulling}]));
    let shown = s.wait_for(&a, &id, "pulling", |b| b["progress"] == pulling);
    assert_eq!(shown["state"], "provisioning");
    // Running: the progress goes, the ports get their addresses.
    beat(
        &s,
        &node,
        &epoch,
        json!([{"id": id, "state": "running", "port": 41000, "published": [{"port": 2222, "host_port": 31022}]}]),
    );
    let shown = s.wait_state(&a, &id, "running");
    assert!(shown.get("progress").is_none(), "{shown}");
    assert_eq!(shown["ports"][0]["url"], format!("{}/i/{id}/8888/", s.url));
    let tcp = shown["ports"][1]["url"].as_str().unwrap();
    assert!(tcp.starts_with("tcp://") && tcp.ends_with(":31022"), "{shown}");
    // Nothing was billed for the pull: billing starts with the run.
    let events = s.get(&a, &format!("/v1/instances/{id}/events")).body;
    assert!(events.to_string().contains("running"), "{events}");

    // Agents' reports are checked too.
    let r = s.post(
        &s.operator_key,
        "/v1/agent/heartbeat",
        Some(&json!({"node_id": node, "epoch": epoch, "gpus": [],
            "instances": [{"id": id, "state": "running", "published": [{"port": 0, "host_port": 1}]}]})),
    );
    assert_eq!(r.status, 422, "{:?}", r.body);
}

#[test]
fn clusters_and_pools_run_every_member_in_their_image_with_their_env_secrets_and_ports() {
    let s = with_key();
    let a = s.tenant("alice");
    let b = s.tenant("bob");
    assert_eq!(put_secret(&s, &a, "HF_TOKEN", "hf_member-secret-77").status, 201);
    let spec = json!({"image": "ghcr.io/acme/trainer:3", "env": {"MODE": "train", "TOKEN": "secret:HF_TOKEN"},
        "secrets": ["HF_TOKEN"], "ports": ["8888/http"]});
    let with = |base: Value, extra: &Value| {
        let mut body = base;
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let cluster = json!({"name": "train", "gpu": "L4", "gpus_per_node": 1, "nodes": 1, "command": "sleep 1000"});
    let pool = json!({"name": "warm", "gpu": "L4", "count": 1, "size": 1, "command": "sleep 1000"});
    // Checked as an instance's are, and another tenant's secret is not there to take.
    for (extra, field) in [
        (json!({"image": "Ubuntu:24.04"}), "image"),
        (json!({"ports": ["8888/udp"]}), "ports"),
        (json!({"env": {"CUDA_VISIBLE_DEVICES": "0"}}), "env"),
    ] {
        for (path, base) in [("/v1/clusters", &cluster), ("/v1/pools", &pool)] {
            let r = s.post(&a, path, Some(&with(base.clone(), &extra)));
            assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{path} {extra}: {:?}", r.body);
        }
    }
    let r = s.post(&b, "/v1/clusters", Some(&with(cluster.clone(), &json!({"env": {"T": "secret:HF_TOKEN"}}))));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("env")), "{:?}", r.body);

    let r = s.post(&a, "/v1/clusters", Some(&with(cluster.clone(), &spec)));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["image"], "ghcr.io/acme/trainer:3");
    assert_eq!(r.body["ports"], json!(["8888/http"]));
    assert_eq!(r.body["env"], json!({"HF_TOKEN": "secret:HF_TOKEN", "MODE": "train", "TOKEN": "secret:HF_TOKEN"}));
    let member = r.body["members"][0]["instance"].as_str().unwrap().to_string();
    let shown = s.get(&a, &format!("/v1/clusters/{}", "train")).body;
    assert_eq!(shown["image"], "ghcr.io/acme/trainer:3", "{shown}");
    let inst = s.get(&a, &format!("/v1/instances/{member}")).body;
    assert_eq!(inst["image"], "ghcr.io/acme/trainer:3", "{inst}");
    assert_eq!(inst["env"]["MODE"], "train", "{inst}");
    assert_eq!(inst["ports"][0]["port"], 8888, "{inst}");

    // The node gets the member with its image, ports and the secret's value, nothing else does.
    let (node, epoch) = l4_node(&s);
    let w = desired(&s, &node, &epoch, &member);
    assert_eq!(w["image"], "ghcr.io/acme/trainer:3");
    assert_eq!(w["ports"], json!(["8888/http"]));
    assert_eq!((w["env"]["MODE"].as_str(), w["env"]["TOKEN"].as_str()), (Some("train"), Some("hf_member-secret-77")));
    for path in ["/v1/clusters/train", "/v1/clusters", &format!("/v1/instances/{member}")] {
        assert!(!s.get(&a, path).body.to_string().contains("hf_member-secret-77"), "{path}");
    }
    assert_eq!(s.raw("DELETE", "/v1/clusters/train", Some(&a), &[], None).status, 204);

    // A warm pool's members, and a cold claim when none is ready, run the same way.
    let r = s.post(&a, "/v1/pools", Some(&with(pool.clone(), &spec)));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        (r.body["image"].as_str(), r.body["ports"].clone()),
        (Some("ghcr.io/acme/trainer:3"), json!(["8888/http"]))
    );
    let warm = r.body["members"][0]["instance"].as_str().unwrap().to_string();
    let inst = s.get(&a, &format!("/v1/instances/{warm}")).body;
    assert_eq!((inst["image"].as_str(), inst["env"]["MODE"].as_str()), (Some("ghcr.io/acme/trainer:3"), Some("train")));
    let r = s.post(&a, "/v1/pools/warm/claim", Some(&json!({})));
    assert_eq!((r.status, r.body["warm"].as_bool()), (201, Some(false)), "{:?}", r.body);
    let cold = &r.body["instance"];
    assert_eq!(
        (cold["image"].as_str(), cold["env"]["TOKEN"].as_str()),
        (Some("ghcr.io/acme/trainer:3"), Some("secret:HF_TOKEN"))
    );
    assert_eq!(cold["ports"][0]["port"], 8888, "{cold}");
}

/// A stand-in workload on a local port: answers each request with what it received (path and
/// headers), and a websocket upgrade with 101 and then an echo of every byte.
fn workload_server() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line.trim_end().to_string());
                    }
                    let upgrade = head.iter().any(|h| h.to_ascii_lowercase().starts_with("upgrade: websocket"));
                    if upgrade {
                        let _ = conn.write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                        );
                        let mut buf = [0u8; 1024];
                        loop {
                            match reader.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    let _ = conn.write_all(&buf[..n]);
                                }
                            }
                        }
                    }
                    let body = head.join("\n");
                    let _ = conn.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nSet-Cookie: _xsrf=1\r\n\
                             Set-Cookie: gpucloud_key=gpc_planted; Path=/i/\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                }
            });
        }
    });
    addr
}

#[test]
fn web_ports_are_reached_through_the_proxy_by_their_tenant_only() {
    use std::io::{Read, Write};
    let s = with_key();
    let a = s.tenant("alice");
    let b = s.tenant("bob");
    let ingress = gpucloud_node::ingress::Ingress::start(0).unwrap();
    let body = json!({"name": "l4-web", "region": "eu-1", "address": "127.0.0.1", "ingress_port": ingress.port(),
        "gpus": [{"index": 0, "model": "L4", "uuid": "GPU-l4-web-0"}]});
    let r = s.post(&s.operator_key, "/v1/agent/register", Some(&body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    ingress.set_secret(r.body["ingress_secret"].as_str().expect("a secret for the ingress"));
    let nodes = s.get(&s.operator_key, "/v1/nodes").body.to_string();
    assert!(!nodes.contains(r.body["ingress_secret"].as_str().unwrap()), "the node list does not show it");
    let (node, epoch) = (r.body["node_id"].as_str().unwrap().to_string(), r.body["epoch"].clone());

    let r = s.post(
        &a,
        "/v1/instances",
        Some(&json!({"gpu": "L4", "count": 1, "command": "serve", "ports": ["8888/http"]})),
    );
    let id = r.body["id"].as_str().unwrap().to_string();
    desired(&s, &node, &epoch, &id);
    let path = format!("/i/{id}/8888/hello?x=1");
    // Not running yet: nothing to reach.
    assert_eq!(s.get(&a, &path).status, 409);
    beat(&s, &node, &epoch, json!([{"id": id, "state": "running"}]));
    s.wait_state(&a, &id, "running");
    let r = s.get(&a, &path);
    assert_eq!(r.status, 502, "the agent knows no such workload port yet: {:?}", r.body);
    ingress.set_targets([((id.clone(), 8888), workload_server())].into());

    // The tenant's key: the workload answers, and never sees the key.
    let r = s.raw("GET", &path, Some(&a), &[("Cookie", &format!("gpucloud_key={a}; theirs=1"))], None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let planted = ureq::get(format!("{}{path}", s.url)).header("Authorization", format!("Bearer {a}")).call().unwrap();
    let cookies: Vec<&str> = planted.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(cookies, ["_xsrf=1"], "the workload's own cookies pass, the proxy's cannot be planted");
    let seen = r.body.as_str().unwrap().to_string();
    assert!(seen.starts_with(&format!("GET /i/{id}/8888/hello?x=1 HTTP/1.1")), "{seen}");
    assert!(seen.contains("theirs=1") && !seen.contains(&a), "credentials stay with the proxy: {seen}");
    assert!(seen.to_ascii_lowercase().contains(&format!("x-forwarded-prefix: /i/{id}/8888")), "{seen}");
    // Nobody else: no key, another tenant (as if there were no such instance), a read-only key,
    // a port it does not expose.
    assert_eq!(s.raw("GET", &path, None, &[], None).status, 401);
    assert_eq!(s.raw("GET", &path, None, &[("Cookie", "gpucloud_key=gpc_forged")], None).status, 401);
    assert_eq!(s.get(&b, &path).status, 404);
    let ro = s.post(&a, "/v1/keys", Some(&json!({"name": "viewer", "scope": "read-only"})));
    assert_eq!(s.get(ro.body["api_key"].as_str().unwrap(), &path).status, 403);
    assert_eq!(s.get(&a, &format!("/i/{id}/9999/")).status, 404);
    assert_eq!(s.get(&s.operator_key, &path).status, 404, "not even the operator's key");
    // The ingress itself refuses anyone without the server's signature.
    let mut direct = std::net::TcpStream::connect(("127.0.0.1", ingress.port())).unwrap();
    direct.write_all(format!("GPUCLOUD-INGRESS/1 {id} 8888 99999999999999 {}\n", "0".repeat(64)).as_bytes()).unwrap();
    let mut answer = String::new();
    direct.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("ERR"), "{answer}");

    // A browser: the session call sets the cookie, which then suffices.
    let r = s.raw("POST", "/v1/session", Some(&a), &[], None);
    assert_eq!(r.status, 204);
    let url = format!("{}/v1/session", s.url);
    let resp = ureq::post(&url).header("Authorization", format!("Bearer {a}")).send_empty().unwrap();
    let cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("Path=/i/") && cookie.contains("SameSite=Lax"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    assert_eq!(s.raw("GET", &path, None, &[("Cookie", &pair)], None).status, 200);
    // The port's own path without its slash is redirected to it.
    let no_follow: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let r = no_follow.get(format!("{}/i/{id}/8888?x=1", s.url)).header("Authorization", format!("Bearer {a}")).call();
    let r = r.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], format!("/i/{id}/8888/?x=1").as_str());

    // A websocket: the upgrade goes through and bytes flow both ways.
    let addr = s.url.strip_prefix("http://").unwrap().to_string();
    let mut ws = std::net::TcpStream::connect(&addr).unwrap();
    ws.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    ws.write_all(
        format!(
            "GET /i/{id}/8888/api/kernels/k1/channels HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {a}\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.write_all(b"kernel message").unwrap();
    let mut echo = [0u8; 14];
    ws.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"kernel message");

    // Stopped: the port is gone with it.
    assert_eq!(s.post(&a, &format!("/v1/instances/{id}/stop"), None).status, 200);
    assert_eq!(s.get(&a, &path).status, 409);
}

#[test]
fn templates_fill_what_a_create_leaves_out_and_stay_with_their_tenant() {
    let s = with_key();
    let a = s.tenant("alice");
    let b = s.tenant("bob");
    assert_eq!(put_secret(&s, &a, "HF_TOKEN", "hf_x").status, 201);
    let tpl = |key: &str, body: Value| s.post(key, "/v1/templates", Some(&body));
    for (body, status, field) in [
        (json!({"name": "Bad Name"}), 422, Some("name")),
        (json!({"name": "shell"}), 409, None),
        (json!({"name": "t", "ports": ["1/udp"]}), 422, Some("ports")),
        (json!({"name": "t", "image": "UPPER"}), 422, Some("image")),
        (json!({"name": "t", "env": {"CUDA_VISIBLE_DEVICES": "0"}}), 422, Some("env")),
        (json!({"name": "t", "command": ""}), 422, Some("command")),
    ] {
        let r = tpl(&a, body.clone());
        assert_eq!((r.status, r.body["field"].as_str()), (status, field), "{body}: {:?}", r.body);
    }
    let r = tpl(
        &a,
        json!({"name": "train", "image": "nvcr.io/nvidia/pytorch:24.05-py3", "command": "python train.py",
            "env": {"EPOCHS": "3", "MODE": "tpl"}, "secrets": ["HF_TOKEN"], "ports": ["6006/http"]}),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(tpl(&a, json!({"name": "train"})).status, 409, "a name is taken once per tenant");
    assert_eq!(tpl(&b, json!({"name": "train"})).status, 201, "another tenant's own");
    let names: Vec<String> = s.get(&a, "/v1/templates").body["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["shell", "http", "jupyter", "train"]);
    assert_eq!(s.get(&b, "/v1/templates/train").body["image"], Value::Null, "bob sees his own");

    // From the template, with the request's own settings winning.
    let r = s.post(
        &a,
        "/v1/instances",
        Some(&json!({"gpu": "T4", "count": 1, "template": "train", "env": {"MODE": "override"}})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["image"], "nvcr.io/nvidia/pytorch:24.05-py3");
    assert_eq!(r.body["command"], "python train.py");
    assert_eq!(r.body["env"], json!({"EPOCHS": "3", "HF_TOKEN": "secret:HF_TOKEN", "MODE": "override"}));
    assert_eq!(r.body["ports"][0]["port"], 6006);
    let r = s.post(&a, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "template": "http"})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["ports"][0]["port"], 8000);
    // Bob's "train" has no secret HF_TOKEN: his own template, his own secrets.
    let r = s.post(&b, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "template": "train", "command": "x"})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = s.post(&a, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "template": "nope"})));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("template")), "{:?}", r.body);
    let r = s.post(&a, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1})));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("command")), "{:?}", r.body);

    assert_eq!(s.raw("DELETE", "/v1/templates/shell", Some(&a), &[], None).status, 409);
    assert_eq!(s.raw("DELETE", "/v1/templates/train", Some(&b), &[], None).status, 204);
    assert_eq!(s.get(&a, "/v1/templates/train").status, 200, "alice's is untouched");
    assert_eq!(s.get(&b, "/v1/templates/train").status, 404);
}

#[test]
fn registry_credentials_go_only_to_the_node_pulling_that_registrys_image() {
    let s = with_key();
    let a = s.tenant("alice");
    let b = s.tenant("bob");
    let put = |key: &str, registry: &str, body: Value| {
        let bytes = serde_json::to_vec(&body).unwrap();
        s.raw(
            "PUT",
            &format!("/v1/registry-auths/{registry}"),
            Some(key),
            &[("Content-Type", "application/json")],
            Some(&bytes),
        )
    };
    let password = "nvapi-registry-password-123";
    for (registry, body, field) in [
        ("bad%20host", json!({"username": "u", "password": "p"}), "registry"),
        ("nvcr.io:0", json!({"username": "u", "password": "p"}), "registry"),
        ("nvcr.io", json!({"username": "", "password": "p"}), "username"),
        ("nvcr.io", json!({"username": "u", "password": ""}), "password"),
    ] {
        let r = put(&a, registry, body);
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{registry}: {:?}", r.body);
    }
    let r = put(&a, "nvcr.io", json!({"username": "$oauthtoken", "password": password}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let list = s.get(&a, "/v1/registry-auths").body;
    assert_eq!(list["registry_auths"][0]["registry"], "nvcr.io");
    assert!(!list.to_string().contains(password));
    assert_eq!(s.get(&b, "/v1/registry-auths").body["registry_auths"], json!([]));

    let (node, epoch) = l4_node(&s);
    let create = |key: &str, image: &str| {
        let r = s.post(key, "/v1/instances", Some(&json!({"gpu": "L4", "count": 1, "command": "x", "image": image})));
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    };
    let ngc = create(&a, "nvcr.io/nvidia/pytorch:24.05-py3");
    let w = desired(&s, &node, &epoch, &ngc);
    assert_eq!(w["registry_auth"], json!({"username": "$oauthtoken", "password": password}));
    assert_eq!(s.post(&a, &format!("/v1/instances/{ngc}/terminate"), None).status, 200);
    beat(&s, &node, &epoch, json!([{"id": ngc, "state": "stopped"}]));
    s.wait_state(&a, &ngc, "terminated");
    // Another registry's image gets none; nor does another tenant's image from nvcr.io.
    let hub = create(&a, "ubuntu:24.04");
    assert!(desired(&s, &node, &epoch, &hub).get("registry_auth").is_none());
    assert_eq!(s.post(&a, &format!("/v1/instances/{hub}/terminate"), None).status, 200);
    beat(&s, &node, &epoch, json!([{"id": hub, "state": "stopped"}]));
    s.wait_state(&a, &hub, "terminated");
    let bobs = create(&b, "nvcr.io/nvidia/pytorch:24.05-py3");
    assert!(desired(&s, &node, &epoch, &bobs).get("registry_auth").is_none());
    assert_eq!(s.raw("DELETE", "/v1/registry-auths/nvcr.io", Some(&b), &[], None).status, 404);
    assert_eq!(s.raw("DELETE", "/v1/registry-auths/nvcr.io", Some(&a), &[], None).status, 204);
}

/// An agent node of its own with one L4, registered with the operator's key.
fn l4_named(s: &TestServer, name: &str) -> (String, Value) {
    let body = json!({"name": name, "region": "eu-1",
        "gpus": [{"index": 0, "model": "L4", "uuid": format!("GPU-{name}-0")}]});
    let r = s.post(&s.operator_key, "/v1/agent/register", Some(&body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    (r.body["node_id"].as_str().unwrap().to_string(), r.body["epoch"].clone())
}

#[test]
fn a_node_that_holds_the_image_is_preferred_among_equals_and_the_instance_says_why() {
    let s = with_key();
    let a = s.tenant("alice");
    let nodes = [l4_named(&s, "l4-one"), l4_named(&s, "l4-two")];
    let image = "ghcr.io/acme/trainer:3";
    let create = |image: Option<&str>| {
        let mut body = json!({"gpu": "L4", "count": 1, "command": "sleep 1000"});
        if let Some(i) = image {
            body["image"] = json!(i);
        }
        let r = s.post(&a, "/v1/instances", Some(&body));
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    };
    let placed_on = |id: &str| {
        common::poll("placement", || {
            // A node is placed on once its agent beats.
            for (n, e) in &nodes {
                beat(&s, n, e, json!([]));
            }
            let i = s.get(&a, &format!("/v1/instances/{id}")).body;
            i["node"].is_string().then_some(i)
        })
    };
    let end = |id: &str, node: &(String, Value)| {
        assert_eq!(s.post(&a, &format!("/v1/instances/{id}/terminate"), None).status, 200);
        beat(&s, &node.0, &node.1, json!([{"id": id, "state": "stopped"}]));
        s.wait_state(&a, id, "terminated");
    };
    // Where the policy puts it with no image anywhere: the other node gets the image.
    let first = create(Some(image));
    let shown = placed_on(&first);
    assert!(shown.get("placed").is_none(), "{shown}");
    let chosen = nodes.iter().position(|(id, _)| {
        s.get(&s.operator_key, &format!("/v1/nodes/{id}")).body["gpus"].to_string().contains(&first)
    });
    let chosen = chosen.expect("placed on one of the two nodes");
    end(&first, &nodes[chosen]);
    let other = &nodes[1 - chosen];
    // An agent's list is checked, and kept only when it is sound.
    let r = s.post(
        &s.operator_key,
        "/v1/agent/heartbeat",
        Some(&json!({"node_id": other.0, "epoch": other.1, "instances": [], "images": ["Not An Image"]})),
    );
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("images")), "{:?}", r.body);
    let r = s.post(
        &s.operator_key,
        "/v1/agent/heartbeat",
        Some(&json!({"node_id": other.0, "epoch": other.1, "instances": [], "images": [image, "ubuntu:24.04"]})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let second = create(Some(image));
    let shown = placed_on(&second);
    let w = desired(&s, &other.0, &other.1, &second);
    assert_eq!(w["image"], image);
    assert_eq!(shown["placed"], format!("image {image} was already on the node (no pull)"), "{shown}");
    // Another image (or none) is placed as before, with nothing to say.
    let third = create(Some("ghcr.io/acme/other:1"));
    let shown = placed_on(&third);
    assert!(shown.get("placed").is_none(), "{shown}");
    let w = desired(&s, &nodes[chosen].0, &nodes[chosen].1, &third);
    assert_eq!(w["image"], "ghcr.io/acme/other:1");
}

#[test]
fn a_volume_outlives_its_instances_pins_them_to_its_node_and_is_billed_per_gib_second() {
    let s = with_key();
    let (a, b) = (s.tenant("alice"), s.tenant("bob"));
    // 0.36 per GiB-hour: 10 GiB cost exactly 0.001 (1000 micro-units) a second.
    let r = s.raw(
        "PUT",
        "/v1/prices/storage/eu-1",
        Some(&a),
        &[("Content-Type", "application/json")],
        Some(br#"{"price_per_gib_hour": "0.36"}"#),
    );
    assert_eq!(r.status, 403, "only an operator sets prices: {:?}", r.body);
    let r = s.raw(
        "PUT",
        "/v1/prices/storage/eu-1",
        Some(&s.operator_key),
        &[("Content-Type", "application/json")],
        Some(br#"{"price_per_gib_hour": "0.36"}"#),
    );
    assert_eq!((r.status, r.body["price_per_gib_hour"].as_str()), (200, Some("0.360000")), "{:?}", r.body);

    for (body, field) in [
        (json!({"name": "Data", "size": "10GiB", "region": "eu-1"}), "name"),
        (json!({"name": "data", "size": "10MB", "region": "eu-1"}), "size"),
        (json!({"name": "data", "size": "0", "region": "eu-1"}), "size"),
        (json!({"name": "data", "size": "10GiB", "region": "mars-1"}), "region"),
    ] {
        let r = s.post(&a, "/v1/volumes", Some(&body));
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{body}: {:?}", r.body);
    }
    let r = s.post(&a, "/v1/volumes", Some(&json!({"name": "data", "size": "10GiB", "region": "eu-1"})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let vid = r.body["id"].as_str().unwrap().to_string();
    assert_eq!((r.body["size_gib"].as_u64(), r.body["state"].as_str()), (Some(10), Some("available")));
    assert_eq!(r.body["price_per_hour"], "3.600000");
    let r = s.post(&a, "/v1/volumes", Some(&json!({"name": "data", "size": "1", "region": "eu-1"})));
    assert_eq!(r.status, 409, "a name is taken: {:?}", r.body);
    // Another tenant neither sees nor touches it, and may use the name.
    assert_eq!(s.get(&b, "/v1/volumes/data").status, 404);
    assert_eq!(s.get(&b, &format!("/v1/volumes/{vid}")).status, 404);
    assert_eq!(s.raw("DELETE", &format!("/v1/volumes/{vid}"), Some(&b), &[], None).status, 404);
    assert_eq!(s.post(&b, "/v1/volumes", Some(&json!({"name": "data", "size": "1", "region": "eu-1"}))).status, 201);
    assert!(s.get(&b, "/v1/volumes").body["volumes"].as_array().unwrap().iter().all(|v| v["id"] != vid.as_str()));

    let create = |key: &str, volume: &str| {
        s.post(key, "/v1/instances", Some(&json!({"gpu": "L4", "count": 1, "command": "sleep 1000", "volume": volume})))
    };
    for (volume, needle) in
        [("data", "NAME:/path"), ("data:/etc", "/etc"), ("nope:/w", "no volume named nope"), ("data:rel", "absolute")]
    {
        let r = create(&a, volume);
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some("volume")), "{volume}: {:?}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains(needle), "{volume}: {:?}", r.body);
    }
    let r = s.post(
        &a,
        "/v1/instances",
        Some(&json!({"gpu": "L4", "count": 1, "command": "x", "volume": "data:/w", "region": "us-1"})),
    );
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("volume")), "{:?}", r.body);

    // Two nodes could take it; its first placement decides where the volume lives.
    let (n1, e1) = l4_named(&s, "l4-one");
    let (n2, e2) = l4_named(&s, "l4-two");
    let r = create(&a, "data:/workspace");
    assert_eq!(r.status, 201, "{:?}", r.body);
    let first = r.body["id"].as_str().unwrap().to_string();
    assert_eq!((r.body["volume"].as_str(), r.body["region"].as_str()), (Some("data:/workspace"), Some("eu-1")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let placed = loop {
        beat(&s, &n1, &e1, json!([]));
        beat(&s, &n2, &e2, json!([]));
        let i = s.get(&a, &format!("/v1/instances/{first}")).body;
        if i["node"].is_string() {
            break i;
        }
        assert!(std::time::Instant::now() < deadline, "never placed: {i}");
        std::thread::sleep(std::time::Duration::from_millis(30));
    };
    let (home, home_epoch, other, other_epoch) =
        if placed["node"] == n1.as_str() { (&n1, &e1, &n2, &e2) } else { (&n2, &e2, &n1, &e1) };
    let w = desired(&s, home, home_epoch, &first);
    assert_eq!(w["volume"], json!({"id": vid, "size_gib": 10, "path": "/workspace"}));
    beat(&s, home, home_epoch, json!([{"id": first, "state": "running"}]));
    s.wait_state(&a, &first, "running");
    let shown = s.get(&a, "/v1/volumes/data").body;
    assert_eq!((shown["state"].as_str(), shown["attached_to"].as_str()), (Some("in-use"), Some(first.as_str())));
    assert_eq!(shown["placed"], true);

    // One instance at a time; in use, it cannot be deleted.
    let r = create(&a, "data:/workspace");
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains(&first), "{:?}", r.body);
    let r = s.raw("DELETE", "/v1/volumes/data", Some(&a), &[], None);
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("in use"), "{:?}", r.body);

    // Terminated, it lets go; the next instance waits for the volume's node, not the free one.
    assert_eq!(s.post(&a, &format!("/v1/instances/{first}/terminate"), None).status, 200);
    beat(&s, home, home_epoch, json!([{"id": first, "state": "stopped"}]));
    s.wait_state(&a, &first, "terminated");
    assert_eq!(s.get(&a, "/v1/volumes/data").body["state"], "available");
    assert_eq!(s.post(&s.operator_key, &format!("/v1/nodes/{home}/cordon"), None).status, 200);
    let r = create(&a, "data:/workspace");
    assert_eq!(r.status, 201, "{:?}", r.body);
    let second = r.body["id"].as_str().unwrap().to_string();
    let why = s.wait_for(&a, &second, "a pending reason", |i| i["pending_reason"].is_string());
    let why = why["pending_reason"].as_str().unwrap().to_string();
    assert!(
        why.contains(&format!("waiting for node {home}, where volume data is")) && why.contains("cordoned"),
        "{why}"
    );
    beat(&s, other, other_epoch, json!([]));
    assert_eq!(s.get(&a, &format!("/v1/instances/{second}")).body["state"], "pending", "not on the free node");
    assert_eq!(s.post(&s.operator_key, &format!("/v1/nodes/{home}/uncordon"), None).status, 200);
    let w = desired(&s, home, home_epoch, &second);
    assert_eq!(w["volume"]["id"], vid.as_str());
    assert_eq!(s.post(&a, &format!("/v1/instances/{second}/terminate"), None).status, 200);
    beat(&s, home, home_epoch, json!([{"id": second, "state": "stopped"}]));
    s.wait_state(&a, &second, "terminated");

    // Deleted: the name is free again, and its node is told once to remove the data.
    let r = s.raw("DELETE", "/v1/volumes/data", Some(&a), &[], None);
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(s.get(&a, "/v1/volumes/data").status, 404);
    let answer = beat(&s, home, home_epoch, json!([]));
    assert_eq!(answer["purge_volumes"], json!([vid]));
    assert!(beat(&s, other, other_epoch, json!([])).get("purge_volumes").is_none(), "only its node");
    let body = json!({"node_id": home, "epoch": home_epoch, "instances": [], "gpus": [], "purged_volumes": [vid]});
    assert_eq!(s.post(&s.operator_key, "/v1/agent/heartbeat", Some(&body)).status, 200);
    assert!(beat(&s, home, home_epoch, json!([])).get("purge_volumes").is_none());

    // Billed for every second it existed, at exactly 1000 micro-units a second, once settled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (seconds, amount) = loop {
        let ledger = s.get(&a, "/v1/billing/ledger").body;
        let lines: Vec<&Value> = ledger["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["memo"] == "volume data (10 GiB) in eu-1")
            .collect();
        let seconds: i64 = lines.iter().map(|l| l["seconds"].as_i64().unwrap()).sum();
        let amount: i64 =
            lines.iter().map(|l| (l["amount"].as_str().unwrap().parse::<f64>().unwrap() * 1e6).round() as i64).sum();
        let settled = s.block_on(async {
            let v: gpucloud_model::VolumeId = vid.parse().unwrap();
            !s.app.store().unsettled_volumes().await.unwrap().iter().any(|u| u.id == v)
        });
        if settled {
            break (seconds, amount);
        }
        assert!(std::time::Instant::now() < deadline, "never settled: {ledger}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(seconds >= 1, "{seconds}");
    assert_eq!(amount, -seconds * 1000, "{seconds} s at 0.001/s");
    let v = s.block_on(async { s.app.store().get_volume(&vid.parse().unwrap()).await.unwrap().unwrap() });
    let lived_ms = v.deleted_at.unwrap().millis_since(v.created_at);
    assert_eq!(seconds, (lived_ms + 999) / 1000, "every started second, none after the deletion");
}

const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDBh7NsIURREmBoWHY68roPmpE3RQAwaKIruIXDI6kgb renter@laptop";

#[test]
fn ssh_keys_are_the_tenants_own_and_reach_only_the_nodes_of_its_instances() {
    let s = with_key();
    let (a, b) = (s.tenant("alice"), s.tenant("bob"));
    let r = s.post(&a, "/v1/ssh-keys", Some(&json!({"public_key": SSH_KEY})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["name"], "renter@laptop");
    assert_eq!(r.body["fingerprint"], "SHA256:SaKGsp2lkMJpZyTnnUn3WAjfy9aB83Vsx2/oIER705Q");
    assert!(!r.body["public_key"].as_str().unwrap().contains("renter"), "{:?}", r.body);
    // The same key again, a name taken, and what is not a public key.
    for (body, status, field) in [
        (json!({"public_key": SSH_KEY, "name": "again"}), 409, None),
        (json!({"public_key": "ssh-ed25519 AAAAnope"}), 422, Some("public_key")),
        (json!({"public_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}), 422, Some("public_key")),
        (json!({"public_key": SSH_KEY, "name": "bad name"}), 422, Some("name")),
    ] {
        let r = s.post(&a, "/v1/ssh-keys", Some(&body));
        assert_eq!((r.status, r.body["field"].as_str()), (status, field), "{body}: {:?}", r.body);
    }
    // Bob sees none of Alice's keys and cannot remove them; a read-only key cannot add one.
    assert_eq!(s.get(&b, "/v1/ssh-keys").body["ssh_keys"], json!([]));
    assert_eq!(s.raw("DELETE", "/v1/ssh-keys/renter@laptop", Some(&b), &[], None).status, 404);
    let ro = s.post(&a, "/v1/keys", Some(&json!({"name": "viewer", "scope": "read-only"})));
    let ro = ro.body["api_key"].as_str().unwrap().to_string();
    assert_eq!(s.post(&ro, "/v1/ssh-keys", Some(&json!({"public_key": SSH_KEY, "name": "x"}))).status, 403);
    assert_eq!(s.get(&ro, "/v1/ssh-keys").body["ssh_keys"].as_array().unwrap().len(), 1);
    assert_eq!(s.raw("GET", "/v1/ssh-keys", None, &[], None).status, 401);
    // The node running Alice's instance is given her keys with it; Bob's instance has none.
    let (node, epoch) = l4_node(&s);
    let mine = s.post(&a, "/v1/instances", Some(&json!({"gpu": "L4", "count": 1, "command": "sleep 100"})));
    let id = mine.body["id"].as_str().unwrap().to_string();
    let w = desired(&s, &node, &epoch, &id);
    assert_eq!(w["ssh_keys"], json!([SSH_KEY.trim_end_matches(" renter@laptop")]), "{w}");
    assert_eq!(s.post(&a, &format!("/v1/instances/{id}/terminate"), None).status, 200);
    beat(&s, &node, &epoch, json!([{"id": id, "state": "stopped"}]));
    s.wait_state(&a, &id, "terminated");
    let theirs = s.post(&b, "/v1/instances", Some(&json!({"gpu": "L4", "count": 1, "command": "sleep 100"})));
    let other = theirs.body["id"].as_str().unwrap().to_string();
    let w = desired(&s, &node, &epoch, &other);
    assert!(w.get("ssh_keys").is_none(), "{w}");
    // Removed (by fingerprint), it is not given any more.
    let path = "/v1/ssh-keys/SHA256:SaKGsp2lkMJpZyTnnUn3WAjfy9aB83Vsx2%2FoIER705Q";
    assert_eq!(s.raw("DELETE", path, Some(&a), &[], None).status, 204);
    assert_eq!(s.get(&a, "/v1/ssh-keys").body["ssh_keys"], json!([]));
}

#[test]
fn a_restarted_workloads_output_follows_the_last_runs_and_large_chunks_are_taken() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let (node, epoch) = l4_node(&s);
    let id = s.create(&key, "L4", 1, None)["id"].as_str().unwrap().to_string();
    let log = |seq: i64, data: &str| {
        let body = json!({"node_id": node, "epoch": epoch, "instance": id, "chunks": [{"seq": seq, "data": data}]});
        s.post(&s.operator_key, "/v1/agent/logs", Some(&body))
    };
    let text = || -> String {
        let logs = s.get(&key, &format!("/v1/instances/{id}/logs")).body;
        logs["chunks"].as_array().unwrap().iter().map(|c| c["data"].as_str().unwrap()).collect()
    };
    desired(&s, &node, &epoch, &id);
    beat(&s, &node, &epoch, json!([{"id": id, "state": "running"}]));
    assert_eq!(log(1, "first run\n").status, 204);
    // A chunk of 64 KiB of control characters is six times that as JSON: still taken.
    let escaped = "\u{1}".repeat(64 * 1024);
    let r = log(2, &escaped);
    assert_eq!(r.status, 204, "{:?}", r.body);
    // Too large: refused with 413 by its Content-Length, often before the client has sent it
    // all, so the client may see its connection closed while still writing instead.
    let huge = "x".repeat(2 << 20);
    let body = json!({"node_id": node, "epoch": epoch, "instance": id, "chunks": [{"seq": 3, "data": huge}]});
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    match agent
        .post(format!("{}/v1/agent/logs", s.url))
        .header("Authorization", format!("Bearer {}", s.operator_key))
        .header("Content-Type", "application/json")
        .send(serde_json::to_vec(&body).unwrap())
    {
        Ok(mut r) => {
            let text = r.body_mut().read_to_string().unwrap_or_default();
            assert_eq!(r.status().as_u16(), 413, "{text}");
            assert!(text.contains("payload_too_large"), "{text}");
        }
        Err(ureq::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => {}
        Err(e) => panic!("{e}"),
    }

    s.post(&key, &format!("/v1/instances/{id}/stop"), None);
    beat(&s, &node, &epoch, json!([{"id": id, "state": "stopped"}]));
    s.wait_state(&key, &id, "stopped");
    s.post(&key, &format!("/v1/instances/{id}/start"), None);
    desired(&s, &node, &epoch, &id);
    beat(&s, &node, &epoch, json!([{"id": id, "state": "running"}]));
    // The new run numbers its chunks from 1 again; a resent chunk is kept once.
    assert_eq!(log(1, "second run\n").status, 204);
    assert_eq!(log(1, "second run\n").status, 204);
    assert_eq!(text(), format!("first run\n{escaped}second run\n"));
}

/// Found by `sim chaos`: what happens to billing and to the user's intent when a node goes
/// silent or its host restarts (or goes down while an instance on it is stopping). Virtual time: the test moves the clock past the grace.
#[test]
fn silent_and_rebooted_nodes_keep_the_users_intent_and_bill_only_what_ran() {
    let s = TestServer::start_virtual();
    let key = s.tenant("acme");
    let reg = |name: &str| {
        let body = json!({"name": name, "region": "eu-1",
            "gpus": [{"index": 0, "model": "L4", "uuid": format!("GPU-{name}-0")}]});
        let r = s.post(&s.operator_key, "/v1/agent/register", Some(&body));
        assert_eq!(r.status, 201, "{:?}", r.body);
        (r.body["node_id"].as_str().unwrap().to_string(), r.body["epoch"].clone())
    };
    let intervals = |id: &str| {
        let store = s.app.store().clone();
        let all = s.block_on(async move { store.list_tenants().await.unwrap() });
        let t = all.into_iter().find(|t| t.name == "acme").unwrap();
        let store = s.app.store().clone();
        let mine = s.block_on(async move { store.intervals_of_tenant(&t.id).await.unwrap() });
        mine.into_iter().filter(|u| u.instance_id.as_str() == id).collect::<Vec<_>>()
    };
    let create = || s.create(&key, "L4", 1, None)["id"].as_str().unwrap().to_string();

    // Stopped while still provisioning: it never ran, so nothing is billed.
    let (n1, e1) = reg("host-1");
    let a = create();
    desired(&s, &n1, &e1, &a);
    assert_eq!(s.post(&key, &format!("/v1/instances/{a}/stop"), None).status, 200);
    s.advance(std::time::Duration::from_secs(3));
    beat(&s, &n1, &e1, json!([{"id": a, "state": "stopped"}]));
    s.wait_state(&key, &a, "stopped");
    assert!(intervals(&a).is_empty(), "{:?}", intervals(&a));

    // A workload its agent no longer mentions vanished with its host: billing ends at the last
    // beat that reported it, and it runs (and bills) again once the agent says so.
    let b = create();
    desired(&s, &n1, &e1, &b);
    beat(&s, &n1, &e1, json!([{"id": b, "state": "running"}]));
    s.wait_state(&key, &b, "running");
    s.advance(std::time::Duration::from_secs(5));
    let answer = beat(&s, &n1, &e1, json!([]));
    let v = s.wait_state(&key, &b, "provisioning");
    assert!(v["reason"].as_str().unwrap_or_default().contains("vanished"), "{v}");
    assert!(answer["instances"].as_array().unwrap().iter().any(|w| w["id"] == b), "told to run it again: {answer}");
    let u = intervals(&b);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].ended_at, Some(u[0].started_at), "billed until the last beat that saw it: {u:?}");

    // Terminated while its node goes silent: terminated, not lost (nor startable).
    beat(&s, &n1, &e1, json!([{"id": b, "state": "running"}]));
    s.wait_state(&key, &b, "running");
    assert_eq!(s.post(&key, &format!("/v1/instances/{b}/terminate"), None).status, 200);
    s.advance(std::time::Duration::from_secs(11));
    s.wait_state(&key, &b, "terminated");

    // Lost while running: its cut-off agent may run it for agent_stop_after after its last
    // beat, so starting it again before then is refused, saying when it may.
    let (n2, e2) = reg("host-2");
    let c = create();
    desired(&s, &n2, &e2, &c);
    beat(&s, &n2, &e2, json!([{"id": c, "state": "running"}]));
    s.wait_state(&key, &c, "running");
    s.advance(std::time::Duration::from_secs(11));
    s.wait_state(&key, &c, "lost");
    let r = s.post(&key, &format!("/v1/instances/{c}/start"), None);
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("start it after that, in 29 s"), "{:?}", r.body);
    // Stopping it first is no way around that.
    let r = s.post(&key, &format!("/v1/instances/{c}/stop"), None);
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("stopped")), "{:?}", r.body);
    let r = s.post(&key, &format!("/v1/instances/{c}/start"), None);
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("start it after that, in 29 s"), "{:?}", r.body);
    s.advance(std::time::Duration::from_secs(29));
    let r = s.post(&key, &format!("/v1/instances/{c}/start"), None);
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("pending")), "{:?}", r.body);

    // Stopping when its host went down (its agent had not heard of the stop): the first beat
    // that no longer mentions it completes the stop, billed until the last beat that saw it
    // run, not until some later "stopped" that its agent can no longer send.
    assert_eq!(s.post(&key, &format!("/v1/instances/{c}/terminate"), None).status, 200);
    let (n3, e3) = reg("host-3");
    let d = create();
    desired(&s, &n3, &e3, &d);
    beat(&s, &n3, &e3, json!([{"id": d, "state": "running"}]));
    s.wait_state(&key, &d, "running");
    s.advance(std::time::Duration::from_secs(2));
    beat(&s, &n3, &e3, json!([{"id": d, "state": "running"}]));
    assert_eq!(s.post(&key, &format!("/v1/instances/{d}/stop"), None).status, 200);
    s.wait_state(&key, &d, "stopping");
    s.advance(std::time::Duration::from_secs(4));
    let answer = beat(&s, &n3, &e3, json!([]));
    s.wait_state(&key, &d, "stopped");
    assert!(answer["instances"].as_array().unwrap().iter().all(|w| w["id"] != d), "{answer}");
    let u = intervals(&d);
    assert_eq!(u.len(), 1);
    assert_eq!(
        u[0].ended_at,
        Some(u[0].started_at.plus_millis(2_000)),
        "billed until the last beat that saw it: {u:?}"
    );

    // Stopped while its node is silent, then the node declared lost: the stop completes, but
    // its cut-off agent, never told, may run it for agent_stop_after after its last beat, so a
    // start before then is refused as a lost one's is (sim chaos seed 102 of 10 minutes: it
    // ran on a new node and the old at once).
    // host-3 goes silent first (lost), so that the next instance lands on the new node.
    s.advance(std::time::Duration::from_secs(11));
    common::poll("host-3 lost", || {
        let r = s.get(&s.operator_key, &format!("/v1/nodes/{n3}"));
        (r.body["health"] == "lost").then_some(())
    });
    let (n4, e4) = reg("host-4");
    let f = create();
    desired(&s, &n4, &e4, &f);
    beat(&s, &n4, &e4, json!([{"id": f, "state": "running"}]));
    s.wait_state(&key, &f, "running");
    s.advance(std::time::Duration::from_secs(3));
    assert_eq!(s.post(&key, &format!("/v1/instances/{f}/stop"), None).status, 200);
    s.advance(std::time::Duration::from_secs(8));
    s.wait_state(&key, &f, "stopped");
    let r = s.post(&key, &format!("/v1/instances/{f}/start"), None);
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("start it after that, in 29 s"), "{:?}", r.body);
    s.advance(std::time::Duration::from_secs(29));
    let r = s.post(&key, &format!("/v1/instances/{f}/start"), None);
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("pending")), "{:?}", r.body);
    // A stop the agent reported is not held up, even with the node silent since.
    assert_eq!(s.post(&key, &format!("/v1/instances/{f}/terminate"), None).status, 200);
    let r = s.get(&s.operator_key, &format!("/v1/nodes/{n4}"));
    assert_eq!(r.body["health"], "lost", "{:?}", r.body);
    let (n5, e5) = reg("host-5");
    let g = create();
    desired(&s, &n5, &e5, &g);
    beat(&s, &n5, &e5, json!([{"id": g, "state": "running"}]));
    s.wait_state(&key, &g, "running");
    assert_eq!(s.post(&key, &format!("/v1/instances/{g}/stop"), None).status, 200);
    s.advance(std::time::Duration::from_secs(1));
    beat(&s, &n5, &e5, json!([{"id": g, "state": "stopped"}]));
    s.wait_state(&key, &g, "stopped");
    let r = s.post(&key, &format!("/v1/instances/{g}/start"), None);
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("pending")), "{:?}", r.body);
}

/// A replica set's member lost with its node may still run on the cut-off agent until that agent
/// fences itself (agent_stop_after after its last beat): the rank is replaced only then, so it
/// never runs twice. Virtual time: the test moves the clock.
#[test]
fn a_replica_set_replaces_a_lost_member_only_once_its_agent_has_stopped_it() {
    let s = TestServer::start_virtual();
    let key = s.tenant("acme");
    let reg = |name: &str, region: &str| {
        let body = json!({"name": name, "region": region,
            "gpus": [{"index": 0, "model": "L4", "uuid": format!("GPU-{name}-0")}]});
        let r = s.post(&s.operator_key, "/v1/agent/register", Some(&body));
        assert_eq!(r.status, 201, "{:?}", r.body);
        (r.body["node_id"].as_str().unwrap().to_string(), r.body["epoch"].clone())
    };
    let (eu, eu_epoch) = reg("eu-host", "eu-1");
    let (us, us_epoch) = reg("us-host", "us-1");
    let body = json!({"name": "pricer", "gpu": "L4", "gpus_per_node": 1, "nodes": 2, "command": "sleep 1000",
        "replicas_in": ["eu-1", "us-1"]});
    let r = s.post(&key, "/v1/clusters", Some(&body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let members = |s: &TestServer| s.get(&key, "/v1/clusters/pricer").body["members"].as_array().unwrap().clone();
    let member = |rank: u64| {
        common::poll("a member of each rank", || {
            members(&s).iter().find(|m| m["rank"] == rank).and_then(|m| m["instance"].as_str().map(str::to_string))
        })
    };
    let (first, other) = (member(0), member(1));
    desired(&s, &eu, &eu_epoch, &first);
    desired(&s, &us, &us_epoch, &other);
    beat(&s, &eu, &eu_epoch, json!([{"id": first, "state": "running"}]));
    beat(&s, &us, &us_epoch, json!([{"id": other, "state": "running"}]));
    s.wait_state(&key, &first, "running");

    // eu-host goes silent; us-host keeps beating. Past the grace, rank 0 is lost.
    for _ in 0..11 {
        s.advance(std::time::Duration::from_secs(1));
        beat(&s, &us, &us_epoch, json!([{"id": other, "state": "running"}]));
    }
    s.wait_state(&key, &first, "lost");
    // Its agent may run it for 40 s after its last beat (grace 10 s + 30 s): no replacement yet,
    // however many cluster passes run meanwhile.
    for _ in 0..25 {
        s.advance(std::time::Duration::from_secs(1));
        beat(&s, &us, &us_epoch, json!([{"id": other, "state": "running"}]));
    }
    // One more cluster pass, run now and waited for.
    let runs = |s: &TestServer| {
        let tasks = s.get(&s.operator_key, "/v1/admin/tasks").body;
        tasks["tasks"].as_array().unwrap().iter().find(|t| t["name"] == "clusters").unwrap()["runs"].as_u64().unwrap()
    };
    let before = runs(&s);
    let kicked = s.post(&s.operator_key, "/v1/admin/tasks/clusters/run", None);
    assert_eq!(kicked.status, 202, "{:?}", kicked.body);
    common::poll("the kicked cluster pass", || (runs(&s) > before).then_some(()));
    let ranks: Vec<Value> =
        members(&s).iter().filter(|m| m["rank"] == 0 && m["instance"] != first.as_str()).cloned().collect();
    assert!(ranks.is_empty(), "rank 0 replaced while its cut-off agent may still run it: {ranks:?}");

    // Once the agent has surely stopped it, rank 0 is replaced in its region.
    s.advance(std::time::Duration::from_secs(6));
    let replacement = common::poll("rank 0 replaced", || {
        members(&s)
            .iter()
            .find(|m| m["rank"] == 0 && m["instance"] != first.as_str())
            .and_then(|m| m["instance"].as_str().map(str::to_string))
    });
    assert_eq!(s.get(&key, &format!("/v1/instances/{replacement}")).body["requested_region"], "eu-1");
}
