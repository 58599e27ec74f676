//! The per-instance metadata endpoint: a workload finds its identity and GPUs at
//! `GPUCLOUD_METADATA_URL` (a random token in the path keeps one workload out of another's; a
//! container's token is good only from that container's own address, so a token that leaks is
//! of no use to another workload), its
//! preemption notice (`GET .../notice`, which can long-poll with `?wait=SECONDS`), and reports
//! its checkpoints (`POST .../checkpoint {"path": ...}`), which a managed job resumes from.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A preemption notice as the workload sees it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Notice {
    /// RFC 3339: SIGTERM comes then.
    pub deadline: String,
    pub deadline_ms: i64,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct GpuRef {
    pub index: u32,
    pub uuid: String,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub node_id: String,
    pub gpus: Vec<GpuRef>,
    /// Notices for the workload, oldest first.
    pub events: Vec<serde_json::Value>,
    pub preemption: Option<Notice>,
    /// The latest checkpoint it reported.
    pub checkpoint: Option<String>,
    /// A cluster member's cluster: size, its rank, the members and the rendezvous endpoint.
    pub cluster: Option<gpucloud_api::AgentCluster>,
}

/// Where a token's requests may come from.
pub use gpucloud_node::runtime::Peer;

#[derive(Default)]
struct Shared {
    by_token: Mutex<HashMap<String, InstanceMetadata>>,
    peers: Mutex<HashMap<String, Peer>>,
    /// Wakes long-polls when a notice arrives.
    changed: tokio::sync::Notify,
    /// Business metrics pushed by workloads, waiting for the next heartbeat.
    metrics: Mutex<std::collections::VecDeque<gpucloud_api::AgentMetric>>,
    /// The server and this agent's key, for workloads' API calls made through `.../api/`.
    api: Mutex<Option<(String, String, ureq::Agent)>>,
}

/// Points held between heartbeats at most; past that the oldest go (a server away for long).
const MAX_BUFFERED_METRICS: usize = 10_000;

type Table = Arc<Shared>;

/// Longest a long-poll may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The running endpoint: publish an instance's metadata, get back the URL to hand the workload.
pub struct MetadataServer {
    addr: SocketAddr,
    /// Where containers reach it: the host's address on their network.
    container_addr: Option<SocketAddr>,
    table: Table,
    tokens: Mutex<HashMap<String, String>>,
}

impl MetadataServer {
    /// Serves on 127.0.0.1 at `port` (0: any free port) from a thread of its own.
    pub fn start(port: u16) -> Result<MetadataServer, String> {
        MetadataServer::start_on(port, None)
    }

    /// [`MetadataServer::start`], also listening on `containers` (the workloads' network's
    /// gateway), at the same port where it is free.
    pub fn start_on(port: u16, containers: Option<IpAddr>) -> Result<MetadataServer, String> {
        let bind = |ip: IpAddr, port: u16| -> Result<std::net::TcpListener, String> {
            let l = std::net::TcpListener::bind((ip, port)).map_err(|e| format!("metadata endpoint on {ip}: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(l)
        };
        let listener = bind(IpAddr::from([127, 0, 0, 1]), port)?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut listeners = vec![listener];
        if let Some(ip) = containers {
            listeners.push(bind(ip, addr.port()).or_else(|_| bind(ip, 0))?);
        }
        let container_addr = listeners.get(1).and_then(|l| l.local_addr().ok());
        let table: Table = Arc::default();
        let shared = table.clone();
        std::thread::Builder::new()
            .name("metadata".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!(error = %e, "metadata endpoint runtime"),
                };
                rt.block_on(async move {
                    let router = axum::Router::new()
                        .route("/v1/instance/{token}", axum::routing::get(get))
                        .route("/v1/instance/{token}/notice", axum::routing::get(notice))
                        .route("/v1/instance/{token}/checkpoint", axum::routing::post(checkpoint))
                        .route("/v1/instance/{token}/metrics", axum::routing::post(metrics))
                        .route("/v1/instance/{token}/api/{*rest}", axum::routing::any(api))
                        .layer(axum::middleware::from_fn_with_state(shared.clone(), from_its_workload))
                        .with_state(shared);
                    let mut served = tokio::task::JoinSet::new();
                    for l in listeners {
                        let router = router.clone();
                        served.spawn(async move {
                            let l = tokio::net::TcpListener::from_std(l)?;
                            axum::serve(l, router.into_make_service_with_connect_info::<SocketAddr>()).await
                        });
                    }
                    while let Some(done) = served.join_next().await {
                        tracing::error!(outcome = ?done, "metadata endpoint stopped");
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(MetadataServer { addr, container_addr, table, tokens: Mutex::default() })
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The port containers reach the endpoint at (the loopback one without containers).
    pub fn container_port(&self) -> u16 {
        self.container_addr.unwrap_or(self.addr).port()
    }

    /// Only requests from `peer` may use the instance's token from now on.
    pub fn restrict(&self, instance_id: &str, peer: Peer) {
        let Some(token) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(instance_id).cloned() else {
            return;
        };
        self.table.peers.lock().unwrap_or_else(|e| e.into_inner()).insert(token, peer);
    }

    /// Publishes `meta` under `token` (a new random one if `None`) for requests from `peer`, and
    /// returns the URL and token. Keeping the token (and the port) across agent restarts keeps
    /// the URL the workload has. A container's URL is on its network's gateway.
    pub fn publish(&self, meta: InstanceMetadata, token: Option<String>, peer: Peer) -> (String, String) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let token = token.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        tokens.insert(meta.instance_id.clone(), token.clone());
        self.table.peers.lock().unwrap_or_else(|e| e.into_inner()).insert(token.clone(), peer);
        let mut table = self.table.by_token.lock().unwrap_or_else(|e| e.into_inner());
        // Republishing keeps what the workload reported.
        let checkpoint = table.get(&token).and_then(|m| m.checkpoint.clone());
        table.insert(token.clone(), InstanceMetadata { checkpoint: meta.checkpoint.clone().or(checkpoint), ..meta });
        drop(table);
        self.table.changed.notify_waiters();
        let at = match peer {
            Peer::Any => self.addr,
            Peer::Pending | Peer::Only(_) => self.container_addr.unwrap_or(self.addr),
        };
        (format!("http://{at}/v1/instance/{token}"), token)
    }

    /// Where workloads' API calls go (`GPUCLOUD_METADATA_URL/api/v1/...`), and with what key.
    pub fn set_api(&self, server: &str, key: &str, tls: ureq::tls::TlsConfig) {
        let agent = gpucloud_client::http_agent(tls, Duration::from_secs(30), None);
        *self.table.api.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((server.trim_end_matches('/').to_string(), key.to_string(), agent));
    }

    pub fn is_published(&self, instance_id: &str) -> bool {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).contains_key(instance_id)
    }

    pub fn withdraw(&self, instance_id: &str) {
        if let Some(token) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).remove(instance_id) {
            self.table.by_token.lock().unwrap_or_else(|e| e.into_inner()).remove(&token);
            self.table.peers.lock().unwrap_or_else(|e| e.into_inner()).remove(&token);
        }
    }

    fn with<T>(&self, instance_id: &str, f: impl FnOnce(&mut InstanceMetadata) -> T) -> Option<T> {
        let token = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(instance_id).cloned()?;
        self.table.by_token.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&token).map(f)
    }

    /// Publishes (or withdraws) the instance's preemption notice, waking its long-polls.
    pub fn set_notice(&self, instance_id: &str, notice: Option<Notice>) {
        let changed = self
            .with(instance_id, |m| {
                let changed = m.preemption != notice;
                if changed && let Some(n) = &notice {
                    m.events
                        .push(serde_json::json!({"type": "preemption", "deadline": n.deadline, "reason": n.reason}));
                }
                m.preemption = notice;
                changed
            })
            .unwrap_or(false);
        if changed {
            self.table.changed.notify_waiters();
        }
    }

    /// Publishes the cluster's membership; a change of size is also an event (`resize`), and
    /// wakes long-polls of `.../events`.
    pub fn set_cluster(&self, instance_id: &str, cluster: Option<gpucloud_api::AgentCluster>) {
        let changed = self
            .with(instance_id, |m| {
                let before = m.cluster.as_ref().map(|c| (c.epoch, c.size));
                let after = cluster.as_ref().map(|c| (c.epoch, c.size));
                if let (Some((_, from)), Some(c)) = (before, &cluster)
                    && before != after
                    && from != c.size
                {
                    m.events.push(serde_json::json!({"type": "resize", "from": from, "to": c.size, "epoch": c.epoch}));
                }
                let changed = m.cluster != cluster;
                m.cluster = cluster;
                changed
            })
            .unwrap_or(false);
        if changed {
            self.table.changed.notify_waiters();
        }
    }

    /// Takes the buffered metrics for a heartbeat.
    pub fn drain_metrics(&self) -> Vec<gpucloud_api::AgentMetric> {
        self.table.metrics.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect()
    }

    /// Puts back metrics a failed heartbeat did not deliver.
    pub fn requeue_metrics(&self, points: Vec<gpucloud_api::AgentMetric>) {
        let mut q = self.table.metrics.lock().unwrap_or_else(|e| e.into_inner());
        for p in points.into_iter().rev() {
            q.push_front(p);
        }
        while q.len() > MAX_BUFFERED_METRICS {
            q.pop_front();
        }
    }

    /// The latest checkpoint the instance's workload reported.
    pub fn checkpoint(&self, instance_id: &str) -> Option<String> {
        self.with(instance_id, |m| m.checkpoint.clone()).flatten()
    }
}

/// A token is good only from where its workload is (see [`Peer`]); from anywhere else it is
/// unknown (404), like a made-up one. A container that asks in the instant between its start
/// and the agent learning its address waits for that, up to a second.
async fn from_its_workload(
    State(table): State<Table>,
    axum::extract::ConnectInfo(from): axum::extract::ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = req.uri().path().strip_prefix("/v1/instance/").and_then(|r| r.split('/').next()).unwrap_or("");
    for _ in 0..20 {
        let peer = table.peers.lock().unwrap_or_else(|e| e.into_inner()).get(token).copied();
        match peer {
            Some(Peer::Pending) => tokio::time::sleep(Duration::from_millis(50)).await,
            Some(Peer::Only(ip)) if ip != from.ip() => break,
            _ => return next.run(req).await,
        }
    }
    StatusCode::NOT_FOUND.into_response()
}

async fn get(State(table): State<Table>, Path(token): Path<String>) -> Result<Json<InstanceMetadata>, StatusCode> {
    let table = table.by_token.lock().unwrap_or_else(|e| e.into_inner());
    table.get(&token).cloned().map(Json).ok_or(StatusCode::NOT_FOUND)
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    wait: Option<f64>,
}

/// The notice, or 204 when there is none (after waiting up to `wait` seconds for one).
async fn notice(State(table): State<Table>, Path(token): Path<String>, Query(q): Query<WaitQuery>) -> Response {
    let wait = Duration::from_secs_f64(q.wait.unwrap_or(0.0).clamp(0.0, MAX_WAIT.as_secs_f64()));
    let until = tokio::time::Instant::now() + wait;
    loop {
        // Registered before the check, so a notice published in between still wakes us.
        let changed = table.changed.notified();
        match table.by_token.lock().unwrap_or_else(|e| e.into_inner()).get(&token) {
            None => return StatusCode::NOT_FOUND.into_response(),
            Some(m) => {
                if let Some(n) = &m.preemption {
                    return Json(n.clone()).into_response();
                }
            }
        }
        if tokio::time::timeout_at(until, changed).await.is_err() {
            return StatusCode::NO_CONTENT.into_response();
        }
    }
}

async fn checkpoint(
    State(table): State<Table>,
    Path(token): Path<String>,
    body: Result<Json<gpucloud_api::ReportCheckpointRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return (StatusCode::BAD_REQUEST, "expected a JSON body {\"path\": \"...\"}\n").into_response();
    };
    if body.path.is_empty() || body.path.len() > 4096 || body.path.chars().any(char::is_control) {
        return (StatusCode::UNPROCESSABLE_ENTITY, "path must be 1 to 4096 printable characters\n").into_response();
    }
    match table.by_token.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&token) {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(m) => {
            m.checkpoint = Some(body.path);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsBody {
    #[serde(default)]
    step: Option<i64>,
    values: std::collections::BTreeMap<String, f64>,
}

async fn metrics(
    State(table): State<Table>,
    Path(token): Path<String>,
    body: Result<Json<MetricsBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return (StatusCode::BAD_REQUEST, "expected a JSON body {\"step\": 10, \"values\": {\"loss\": 0.5}}\n")
            .into_response();
    };
    if body.values.is_empty() || body.values.len() > 64 {
        return (StatusCode::UNPROCESSABLE_ENTITY, "values holds 1 to 64 metrics\n").into_response();
    }
    for (name, v) in &body.values {
        let ok_name = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'/');
        if !ok_name || !v.is_finite() {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("metric '{name}': names are 1 to 64 of [A-Za-z0-9_./], values finite\n"),
            )
                .into_response();
        }
    }
    let Some(instance) =
        table.by_token.lock().unwrap_or_else(|e| e.into_inner()).get(&token).map(|m| m.instance_id.clone())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let at_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let mut q = table.metrics.lock().unwrap_or_else(|e| e.into_inner());
    for (name, value) in body.values {
        q.push_back(gpucloud_api::AgentMetric { instance: instance.clone(), at_ms, step: body.step, name, value });
    }
    while q.len() > MAX_BUFFERED_METRICS {
        q.pop_front();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Largest request body a workload may send through the API path.
const MAX_API_BODY: usize = 64 * 1024;

/// A workload's call to the gpucloud API, made for it with this agent's key and the workload's
/// instance id (`Gpucloud-Workload`): the server lets it reach its own instance, cluster and
/// job and nothing else, so no key ever sits in a workload's environment or command line.
async fn api(
    State(table): State<Table>,
    Path((token, rest)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    let Some(instance) =
        table.by_token.lock().unwrap_or_else(|e| e.into_inner()).get(&token).map(|m| m.instance_id.clone())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some((server, key, agent)) = table.api.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "this node's agent has no server to call").into_response();
    };
    if !rest.starts_with("v1/") || rest.starts_with("v1/agent/") {
        return (StatusCode::NOT_FOUND, "only /v1/ API calls go through here").into_response();
    }
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("{server}/{rest}{query}");
    let method = req.method().clone();
    let content_type =
        req.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let idempotency = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_API_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than 64 KiB").into_response();
    };
    let call = tokio::task::spawn_blocking(move || {
        let mut r = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(&url)
            .header("Authorization", format!("Bearer {key}"))
            .header("Gpucloud-Workload", &instance);
        if let Some(ct) = content_type {
            r = r.header("Content-Type", ct);
        }
        if let Some(k) = idempotency {
            r = r.header("Idempotency-Key", k);
        }
        let request = r.body(body.to_vec()).map_err(|e| e.to_string())?;
        let mut resp = agent.run(request).map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let ct =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string();
        let bytes = resp.body_mut().read_to_vec().map_err(|e| e.to_string())?;
        Ok::<_, String>((status, ct, bytes))
    });
    match call.await {
        Ok(Ok((status, ct, bytes))) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, [(axum::http::header::CONTENT_TYPE, ct)], bytes).into_response()
        }
        Ok(Err(e)) => (StatusCode::BAD_GATEWAY, format!("the gpucloud server did not answer: {e}")).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(size: u32, epoch: i64) -> gpucloud_api::AgentCluster {
        gpucloud_api::AgentCluster {
            id: "c-1".into(),
            name: "train".into(),
            epoch,
            size,
            rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            members: Vec::new(),
        }
    }

    fn meta(id: &str) -> InstanceMetadata {
        InstanceMetadata {
            instance_id: id.into(),
            node_id: "n-1".into(),
            gpus: Vec::new(),
            events: Vec::new(),
            preemption: None,
            checkpoint: None,
            cluster: None,
        }
    }

    #[test]
    fn a_resize_is_an_event_and_notices_wake_long_polls() {
        let server = MetadataServer::start(0).unwrap();
        let (url, _) = server.publish(meta("i-1"), None, Peer::Any);
        server.set_cluster("i-1", Some(cluster(2, 1)));
        server.set_cluster("i-1", Some(cluster(2, 1)));
        server.set_cluster("i-1", Some(cluster(4, 2)));
        let events = server.with("i-1", |m| m.events.clone()).unwrap();
        assert_eq!(events, vec![serde_json::json!({"type": "resize", "from": 2, "to": 4, "epoch": 2})]);

        // A long-poll returns as soon as the notice is published.
        let poll = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let started = std::time::Instant::now();
            let mut r = agent.get(format!("{url}/notice?wait=30")).call().unwrap();
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap(), started.elapsed())
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        let notice = Notice { deadline: "2026-11-27T10:00:00Z".into(), deadline_ms: 1, reason: "test".into() };
        server.set_notice("i-1", Some(notice));
        let (status, body, took) = poll.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"reason\":\"test\""), "{body}");
        assert!(took < std::time::Duration::from_secs(5), "woken by the notice, not the timeout: {took:?}");
    }

    #[test]
    fn a_containers_token_is_good_from_its_own_address_only() {
        let server = MetadataServer::start(0).unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let status = |url: &str| agent.get(url).call().unwrap().status().as_u16();
        let (mine, _) = server.publish(meta("i-1"), None, Peer::Only("127.0.0.1".parse().unwrap()));
        let (elsewhere, _) = server.publish(meta("i-2"), None, Peer::Only("10.9.9.9".parse().unwrap()));
        assert_eq!(status(&mine), 200);
        assert_eq!(status(&elsewhere), 404, "asked from 127.0.0.1, not the container's address");
        assert_eq!(status(&format!("{elsewhere}/notice")), 404);
        let checkpoint = agent
            .post(format!("{elsewhere}/checkpoint"))
            .header("Content-Type", "application/json")
            .send(&br#"{"path": "/x"}"#[..]);
        assert_eq!(checkpoint.unwrap().status().as_u16(), 404);
        assert_eq!(server.checkpoint("i-2"), None, "nothing written");
        // A container not started yet is answered once its address is known.
        let (pending, _) = server.publish(meta("i-3"), None, Peer::Pending);
        std::thread::scope(|s| {
            let asked = s.spawn(|| status(&pending));
            std::thread::sleep(std::time::Duration::from_millis(200));
            server.restrict("i-3", Peer::Only("127.0.0.1".parse().unwrap()));
            assert_eq!(asked.join().unwrap(), 200);
        });
    }
}
