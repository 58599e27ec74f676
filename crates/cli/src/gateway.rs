//! `gpucloud gateway`: an HTTP front for a service that runs in two places (two regions, two
//! pools). It keeps pooled connections to every backend warm with active health checks (down to
//! a few milliseconds apart) and fails over passively at once: a refused or reset connection or
//! a timeout marks that backend down and, when the request is safe to repeat (GET, HEAD,
//! OPTIONS, PUT, DELETE, or any request with an Idempotency-Key), sends it to the next backend.
//! Requests go to the first healthy backend in the order given.

use crate::client::not_sent;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest request body the gateway buffers (it must hold a request to send it again).
const MAX_BODY: usize = 8 << 20;

pub struct Backend {
    pub url: String,
    healthy: AtomicBool,
    /// Requests this backend answered (for the bench and the log).
    pub served: AtomicU64,
}

pub struct Gateway {
    pub backends: Vec<Backend>,
    agent: ureq::Agent,
    health_path: String,
    health_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub backends: Vec<String>,
    pub health_path: String,
    pub health_interval: Duration,
    /// A backend that does not answer a request within this is treated as down.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Gateway {
    pub fn new(c: &GatewayConfig) -> Result<Arc<Gateway>, String> {
        if c.backends.is_empty() {
            return Err("a gateway needs at least one --backend URL".into());
        }
        for b in &c.backends {
            if !b.starts_with("http://") {
                return Err(format!("backend '{b}' must be an http:// URL"));
            }
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(c.request_timeout))
            .timeout_connect(Some(c.connect_timeout))
            // Keep-alive connections to every backend, kept open by the health checks.
            .max_idle_connections_per_host(64)
            .build()
            .into();
        Ok(Arc::new(Gateway {
            backends: c
                .backends
                .iter()
                .map(|u| Backend {
                    url: u.trim_end_matches('/').to_string(),
                    healthy: AtomicBool::new(true),
                    served: AtomicU64::new(0),
                })
                .collect(),
            agent,
            health_path: c.health_path.clone(),
            health_interval: c.health_interval,
        }))
    }

    pub fn healthy(&self, i: usize) -> bool {
        self.backends[i].healthy.load(Ordering::Relaxed)
    }

    fn mark(&self, i: usize, up: bool, why: &str) {
        let was = self.backends[i].healthy.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!(backend = %self.backends[i].url, "backend healthy again");
            } else {
                tracing::warn!(backend = %self.backends[i].url, why, "backend down: failing over");
            }
        }
    }

    /// Active health checks: each backend every `health_interval`, on its own thread (a check
    /// is a blocking request on a warm connection).
    pub fn spawn_health_checks(self: &Arc<Self>) {
        for i in 0..self.backends.len() {
            let gw = self.clone();
            std::thread::spawn(move || {
                let url = format!("{}{}", gw.backends[i].url, gw.health_path);
                loop {
                    let started = Instant::now();
                    match gw.agent.get(&url).call() {
                        Ok(mut r) if r.status().is_success() => {
                            let _ = r.body_mut().read_to_vec();
                            gw.mark(i, true, "");
                        }
                        Ok(r) => gw.mark(i, false, &format!("health check answered {}", r.status())),
                        Err(e) => gw.mark(i, false, &e.to_string()),
                    }
                    std::thread::sleep(gw.health_interval.saturating_sub(started.elapsed()));
                }
            });
        }
    }

    /// The backends to try, healthy ones first, each group in the configured order.
    fn order(&self) -> Vec<usize> {
        let mut up: Vec<usize> = (0..self.backends.len()).filter(|&i| self.healthy(i)).collect();
        up.extend((0..self.backends.len()).filter(|&i| !self.healthy(i)));
        up
    }
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
    let body = serde_json::json!({"type": "/problems/gateway", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail, "code": "gateway"});
    (status, [("content-type", "application/problem+json")], body.to_string()).into_response()
}

pub async fn proxy(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return problem(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {MAX_BODY} bytes")),
    };
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
        || parts.headers.contains_key("idempotency-key");
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()))
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    let method = parts.method.clone();
    let gw2 = gw.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut last = String::from("no backend");
        for i in gw2.order() {
            let url = format!("{}{path}", gw2.backends[i].url);
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
                        gw2.backends[i].served.fetch_add(1, Ordering::Relaxed);
                        return Ok((i, resp.status(), resp.headers().clone(), body));
                    }
                    Err(e) => {
                        gw2.mark(i, false, &e.to_string());
                        if !safe {
                            return Err((StatusCode::BAD_GATEWAY, format!("{url} failed mid-answer: {e}")));
                        }
                        last = e.to_string();
                    }
                },
                Err(e) => {
                    gw2.mark(i, false, &e.to_string());
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
        Ok(Ok((i, status, headers, body))) => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = status;
            for (k, v) in headers.iter().filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str())) {
                resp.headers_mut().append(k.clone(), v.clone());
            }
            if let Ok(v) = HeaderValue::from_str(&gw.backends[i].url) {
                resp.headers_mut().insert(HeaderName::from_static("x-gpucloud-backend"), v);
            }
            resp
        }
        Ok(Err((status, detail))) => problem(status, detail),
        Err(e) => problem(StatusCode::BAD_GATEWAY, format!("the gateway failed: {e}")),
    }
}

/// Serves the gateway on `listener` until the process ends.
pub async fn serve(gw: Arc<Gateway>, listener: tokio::net::TcpListener) -> Result<(), String> {
    gw.spawn_health_checks();
    let app = axum::Router::new().fallback(proxy).with_state(gw);
    axum::serve(listener, app).await.map_err(|e| e.to_string())
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
