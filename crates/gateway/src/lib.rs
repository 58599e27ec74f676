//! `gpucloud gateway`: an HTTP front for a service that runs in two places (two regions, two
//! pools). It keeps pooled connections to every backend warm with active health checks (down to
//! a few milliseconds apart) and fails over passively at once: a refused or reset connection or
//! a timeout marks that backend down and, when the request is safe to repeat (GET, HEAD,
//! OPTIONS, PUT, DELETE, or any request with an Idempotency-Key), sends it to the next backend.
//! Requests go to the first healthy backend in the order given. With `--cluster NAME` the
//! backends are a replica set's running members (their endpoints, in rank order), followed as
//! members come and go.

use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use gpucloud_client::not_sent;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Largest request body the gateway buffers (it must hold a request to send it again).
const MAX_BODY: usize = 8 << 20;

pub struct Backend {
    pub url: String,
    healthy: AtomicBool,
    /// Requests this backend answered (for the bench and the log).
    pub served: AtomicU64,
    /// Dropped by discovery: its health checks end.
    retired: AtomicBool,
}

pub struct Gateway {
    /// In order of preference. Replaced whole by discovery; a request works on the snapshot it
    /// took, so a change never cuts one short.
    backends: RwLock<Vec<Arc<Backend>>>,
    agent: ureq::Agent,
    health_path: String,
    health_interval: Duration,
    checking: AtomicBool,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub backends: Vec<String>,
    pub health_path: String,
    pub health_interval: Duration,
    /// A backend that does not answer a request within this is treated as down.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// How https:// backends' certificates are checked.
    pub tls: ureq::tls::TlsConfig,
}

fn check_url(b: &str) -> Result<(), String> {
    if !b.starts_with("http://") && !b.starts_with("https://") {
        return Err(format!("backend '{b}' must be an http:// or https:// URL"));
    }
    Ok(())
}

impl Gateway {
    /// A gateway over `c.backends` (none yet when a cluster's members are to be discovered).
    pub fn new(c: &GatewayConfig) -> Result<Arc<Gateway>, String> {
        for b in &c.backends {
            check_url(b)?;
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(c.tls.clone())
            .http_status_as_error(false)
            .timeout_global(Some(c.request_timeout))
            .timeout_connect(Some(c.connect_timeout))
            // Keep-alive connections to every backend, kept open by the health checks.
            .max_idle_connections_per_host(64)
            .build()
            .into();
        let gw = Arc::new(Gateway {
            backends: RwLock::new(Vec::new()),
            agent,
            health_path: c.health_path.clone(),
            health_interval: c.health_interval,
            checking: AtomicBool::new(false),
        });
        // Named by the operator: trusted until a check or a request says otherwise.
        gw.set_backends(&c.backends, true);
        Ok(gw)
    }

    /// The backends now, in order of preference.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.backends.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `urls` the backends, in that order. One already known keeps its health and its
    /// connections; a new one starts `healthy` (discovered ones start down, so traffic moves to
    /// them once a health check passes); one dropped stops being checked.
    pub fn set_backends(self: &Arc<Self>, urls: &[String], healthy: bool) {
        let mut added = Vec::new();
        {
            let mut list = self.backends.write().unwrap_or_else(|e| e.into_inner());
            let next: Vec<Arc<Backend>> = urls
                .iter()
                .map(|u| u.trim_end_matches('/'))
                .map(|u| {
                    list.iter().find(|b| b.url == u).cloned().unwrap_or_else(|| {
                        let b = Arc::new(Backend {
                            url: u.to_string(),
                            healthy: AtomicBool::new(healthy),
                            served: AtomicU64::new(0),
                            retired: AtomicBool::new(false),
                        });
                        added.push(b.clone());
                        b
                    })
                })
                .collect();
            for gone in list.iter().filter(|b| !next.iter().any(|n| Arc::ptr_eq(n, b))) {
                tracing::info!(backend = %gone.url, "backend removed");
                gone.retired.store(true, Ordering::Relaxed);
            }
            *list = next;
        }
        for b in added {
            tracing::info!(backend = %b.url, "backend added");
            if self.checking.load(Ordering::Relaxed) {
                self.spawn_check(b);
            }
        }
    }

    fn mark(&self, b: &Backend, up: bool, why: &str) {
        let was = b.healthy.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!(backend = %b.url, "backend healthy");
            } else {
                tracing::warn!(backend = %b.url, why, "backend down: failing over");
            }
        }
    }

    /// Active health checks: each backend every `health_interval`, on its own thread (a check
    /// is a blocking request on a warm connection).
    pub fn spawn_health_checks(self: &Arc<Self>) {
        if !self.checking.swap(true, Ordering::Relaxed) {
            for b in self.backends() {
                self.spawn_check(b);
            }
        }
    }

    fn spawn_check(self: &Arc<Self>, b: Arc<Backend>) {
        let gw = self.clone();
        std::thread::spawn(move || {
            let url = format!("{}{}", b.url, gw.health_path);
            while !b.retired.load(Ordering::Relaxed) {
                let started = Instant::now();
                match gw.agent.get(&url).call() {
                    Ok(mut r) if r.status().is_success() => {
                        let _ = r.body_mut().read_to_vec();
                        gw.mark(&b, true, "");
                    }
                    Ok(r) => gw.mark(&b, false, &format!("health check answered {}", r.status())),
                    Err(e) => gw.mark(&b, false, &e.to_string()),
                }
                std::thread::sleep(gw.health_interval.saturating_sub(started.elapsed()));
            }
        });
    }

    /// The backends to try, healthy ones first, each group in order of preference.
    fn order(&self) -> Vec<Arc<Backend>> {
        let all = self.backends();
        let (mut up, down): (Vec<_>, Vec<_>) = all.into_iter().partition(|b| b.healthy.load(Ordering::Relaxed));
        up.extend(down);
        up
    }

    /// Follows cluster `name`'s members: every `every`, its running members' endpoints, by
    /// rank, become the backends. When the control plane cannot be reached the gateway keeps
    /// the members it knows and goes on routing: serving must not depend on it.
    pub fn follow_cluster(self: &Arc<Self>, client: gpucloud_client::Client, name: String, every: Duration) {
        let gw = self.clone();
        std::thread::spawn(move || {
            let mut last_error = String::new();
            loop {
                std::thread::sleep(every);
                match client.get::<gpucloud_api::Cluster>(&format!("/v1/clusters/{name}")) {
                    Ok(c) => {
                        gw.set_backends(&member_urls(&c), false);
                        last_error.clear();
                    }
                    Err(e) => {
                        let e = e.to_string();
                        if e != last_error {
                            tracing::warn!(cluster = %name, error = %e, "cannot read the cluster: keeping its last members");
                            last_error = e;
                        }
                    }
                }
            }
        });
    }
}

/// The members of a cluster that serve now, as backend URLs in rank order.
pub fn member_urls(c: &gpucloud_api::Cluster) -> Vec<String> {
    let mut serving: Vec<(u32, &str)> = c
        .members
        .iter()
        .filter(|m| m.state == gpucloud_api::InstanceState::Running)
        .filter_map(|m| Some((m.rank, m.endpoint.as_deref()?)))
        .collect();
    serving.sort();
    serving.into_iter().map(|(_, e)| format!("http://{e}")).collect()
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

fn problem(status: StatusCode, detail: String) -> Response {
    let body = gpucloud_api::Problem {
        kind: "/problems/gateway".into(),
        title: status.canonical_reason().unwrap_or("error").into(),
        status: status.as_u16(),
        detail,
        code: gpucloud_api::ProblemCode::Gateway,
        field: None,
        current_state: None,
    };
    (status, [("content-type", "application/problem+json")], serde_json::to_string(&body).unwrap_or_default())
        .into_response()
}

pub async fn proxy(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return problem(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {MAX_BODY} bytes")),
    };
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
        || parts.headers.contains_key("idempotency-key");
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let mut headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()) && k.as_str() != "x-forwarded-for")
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    // The client's address, after any the client's own proxies reported: the backend's audit
    // log shows who called (README, "TLS and proxies").
    let forwarded: Vec<&str> =
        parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    let mut chain = forwarded.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer.ip().to_string());
    headers.push(("x-forwarded-for".into(), chain.into_bytes()));
    let method = parts.method.clone();
    let gw2 = gw.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut last = String::from("no backend serves now (a followed cluster has no running member)");
        for b in gw2.order() {
            let url = format!("{}{path}", b.url);
            let mut builder = ureq::http::Request::builder().method(method.clone()).uri(&url);
            for (k, v) in &headers {
                builder = builder.header(k.as_str(), v.as_slice());
            }
            let sent = match builder.body(bytes.to_vec()) {
                Ok(r) => gw2.agent.run(r),
                Err(e) => return Err((StatusCode::BAD_REQUEST, format!("cannot forward this request: {e}"))),
            };
            match sent {
                Ok(mut resp) => match resp.body_mut().read_to_vec() {
                    Ok(body) => {
                        b.served.fetch_add(1, Ordering::Relaxed);
                        return Ok((b.url.clone(), resp.status(), resp.headers().clone(), body));
                    }
                    Err(e) => {
                        gw2.mark(&b, false, &e.to_string());
                        if !safe {
                            return Err((StatusCode::BAD_GATEWAY, format!("{url} failed mid-answer: {e}")));
                        }
                        last = e.to_string();
                    }
                },
                Err(e) => {
                    gw2.mark(&b, false, &e.to_string());
                    if !safe && !not_sent(&e) {
                        // It may have run there: only the client can decide to repeat it.
                        return Err((StatusCode::BAD_GATEWAY, format!("{url} failed after the request was sent: {e}")));
                    }
                    last = format!("{url}: {e}");
                }
            }
        }
        Err((StatusCode::SERVICE_UNAVAILABLE, format!("no backend answered: {last}")))
    })
    .await;
    match answer {
        Ok(Ok((backend, status, headers, body))) => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = status;
            for (k, v) in headers.iter().filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str())) {
                resp.headers_mut().append(k.clone(), v.clone());
            }
            if let Ok(v) = HeaderValue::from_str(&backend) {
                resp.headers_mut().insert(HeaderName::from_static("x-gpucloud-backend"), v);
            }
            resp
        }
        Ok(Err((status, detail))) => problem(status, detail),
        Err(e) => problem(StatusCode::BAD_GATEWAY, format!("the gateway failed: {e}")),
    }
}

/// Serves the gateway on `listener` until the process ends.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    tls: Option<gpucloud_tls::TlsAcceptor>,
) -> Result<(), String> {
    gw.spawn_health_checks();
    let app = axum::Router::new().fallback(proxy).with_state(gw);
    gpucloud_tls::serve(listener, tls, app).await.map_err(|e| e.to_string())
}

/// A backend for the failover benchmark and tests: `GET /health` answers ok, anything else its
/// name. Run as its own process, so it can be killed.
pub async fn echo(listener: tokio::net::TcpListener, name: String) -> Result<(), String> {
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" })).fallback(move || {
        let name = name.clone();
        async move { name }
    });
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(backends: &[&str]) -> Arc<Gateway> {
        Gateway::new(&GatewayConfig {
            backends: backends.iter().map(|b| b.to_string()).collect(),
            health_path: "/health".into(),
            health_interval: Duration::from_millis(5),
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(100),
            tls: Default::default(),
        })
        .unwrap()
    }

    fn urls(gw: &Gateway) -> Vec<String> {
        gw.backends().iter().map(|b| b.url.clone()).collect()
    }

    #[test]
    fn followed_members_keep_their_state_and_new_ones_start_down() {
        let gw = gateway(&["http://a:1", "http://b:2/"]);
        assert_eq!(urls(&gw), ["http://a:1", "http://b:2"], "named backends, trailing slash dropped");
        assert!(gw.backends().iter().all(|b| b.healthy.load(Ordering::Relaxed)), "named ones are trusted");
        let b = gw.backends()[1].clone();
        b.served.store(7, Ordering::Relaxed);

        // b moves to the front, a leaves, c arrives.
        gw.set_backends(&["http://b:2".into(), "http://c:3".into()], false);
        let now = gw.backends();
        assert_eq!(urls(&gw), ["http://b:2", "http://c:3"]);
        assert!(Arc::ptr_eq(&now[0], &b), "a known backend is the same one: its health and counters stay");
        assert_eq!(now[0].served.load(Ordering::Relaxed), 7);
        assert!(!now[1].healthy.load(Ordering::Relaxed), "a discovered one waits for its first check");
        assert_eq!(gw.order().iter().map(|b| b.url.as_str()).collect::<Vec<_>>(), ["http://b:2", "http://c:3"]);

        // Down ones go last, in their order.
        gw.mark(&now[0], false, "test");
        assert_eq!(gw.order().iter().map(|b| b.url.as_str()).collect::<Vec<_>>(), ["http://b:2", "http://c:3"]);
        gw.mark(&now[1], true, "");
        assert_eq!(gw.order().iter().map(|b| b.url.as_str()).collect::<Vec<_>>(), ["http://c:3", "http://b:2"]);
        gw.set_backends(&[], false);
        assert!(gw.order().is_empty());
    }

    #[test]
    fn a_cluster_serves_from_its_running_members_with_endpoints_by_rank() {
        use gpucloud_api::InstanceState::{Pending, Running};
        let member = |rank: u32, state, endpoint: Option<&str>| gpucloud_api::ClusterMember {
            rank,
            instance: format!("i-{rank}"),
            state,
            node: None,
            pending_reason: None,
            leaving_at: None,
            endpoint: endpoint.map(str::to_string),
        };
        let c = gpucloud_api::Cluster {
            project: "default".into(),
            id: "c-1".into(),
            name: "quant".into(),
            gpu: "A100-40GB".into(),
            region: None,
            gpus_per_node: 1,
            min_nodes: 3,
            max_nodes: 3,
            nodes: 3,
            tier: gpucloud_api::Tier::OnDemand,
            state: gpucloud_api::ClusterState::Degraded,
            reason: None,
            master_port: 29500,
            members: vec![
                member(2, Running, Some("10.0.0.3:4000")),
                member(1, Pending, None),
                member(0, Running, Some("10.0.0.1:4000")),
                member(1, Running, None),
            ],
            replicas_in: vec!["eu-1".into(), "eu-2".into(), "us-1".into()],
            command: "serve".into(),
            created_at: "2026-11-27T00:00:00Z".into(),
            schedule: None,
            autoscale: None,
            image: None,
            env: Default::default(),
            ports: Vec::new(),
        };
        assert_eq!(member_urls(&c), ["http://10.0.0.1:4000", "http://10.0.0.3:4000"]);
    }
}
