//! The authenticated proxy to instances' web ports: `/i/{id}/{port}/...` on this server reaches
//! HTTP port `port` of instance `id` (exposed with `--port PORT/http`) through its node's agent.
//! A caller shows a key of the instance's tenant: `Authorization: Bearer` (scripts) or the
//! `gpucloud_key` cookie that `POST /v1/session` sets (a browser, after the dashboard login).
//! Neither is passed on to the workload. The path is passed on whole, so a server that knows its
//! base path (Jupyter's `--ServerApp.base_url`, from `GPUCLOUD_PROXY_PATH`) serves links and
//! websockets that work through it; upgrades (websockets) are spliced both ways.

use super::error::ApiError;
use crate::app::App;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// The cookie a browser shows the proxy: the key itself, sent only to `/i/` paths, never
/// readable by scripts.
pub const COOKIE: &str = "gpucloud_key";

pub fn routes(app: Arc<App>) -> Router {
    Router::new().route("/i/{*rest}", any(proxy)).with_state(app)
}

/// `/i/ID/PORT/REST`: (ID, PORT, whether a `/` follows the port).
fn target(path: &str) -> Option<(&str, u16, bool)> {
    let rest = path.strip_prefix("/i/")?;
    let (id, rest) = rest.split_once('/')?;
    let (port, slash) = match rest.split_once('/') {
        Some((p, _)) => (p, true),
        None => (rest, false),
    };
    Some((id, port.parse().ok().filter(|p| *p > 0)?, slash))
}

/// The key in `Authorization: Bearer`, or else in the proxy's cookie.
fn key_of(req: &Request) -> Option<String> {
    if let Some(a) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return Some(a.to_string());
    }
    req.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|cookies| {
        cookies.split(';').find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(|k| format!("Bearer {k}")))
    })
}

/// The request as the workload gets it: no credential of the caller's, the rest as sent.
fn strip_credentials(req: &mut Request) {
    let h = req.headers_mut();
    h.remove(header::AUTHORIZATION);
    let kept: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with(&format!("{COOKIE}=")))
        .map(str::to_string)
        .collect();
    h.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        h.insert(header::COOKIE, v);
    }
}

async fn proxy(State(app): State<Arc<App>>, mut req: Request) -> Response {
    let path = req.uri().path().to_string();
    let Some((id, port, slash)) = target(&path) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            gpucloud_api::ProblemCode::RouteNotFound,
            "a proxied port is /i/ID/PORT/",
        )
        .into_response();
    };
    let principal = match app.authenticate(key_of(&req).as_deref()).await {
        Ok(p) => p,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if !slash {
        // Relative links resolve under the port's path only with its trailing slash.
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        let to = format!("{path}/{query}");
        return (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, to)]).into_response();
    }
    let conn = match app.open_port(&principal, id, port).await {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    strip_credentials(&mut req);
    let prefix = format!("/i/{id}/{port}");
    if let Ok(v) = HeaderValue::from_str(&prefix) {
        req.headers_mut().insert("x-forwarded-prefix", v);
    }
    // Ours to take before the request moves on: the caller's side of an upgrade.
    let caller_upgrade = req.headers().contains_key(header::UPGRADE).then(|| hyper::upgrade::on(&mut req));
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(conn)).await {
        Ok(pair) => pair,
        Err(e) => return bad_gateway(id, port, &e.to_string()),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "proxied connection");
        }
    });
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return bad_gateway(id, port, &e.to_string()),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(caller) = caller_upgrade
    {
        let workload = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match (caller.await, workload.await) {
                (Ok(a), Ok(b)) => {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
                }
                (a, b) => tracing::debug!(caller = a.is_ok(), workload = b.is_ok(), "upgrade not completed"),
            }
        });
    }
    // A workload cannot set or replace the proxy's own cookie in its tenant's browser.
    let theirs: Vec<HeaderValue> = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !v.to_str().unwrap_or("").trim_start().starts_with(&format!("{COOKIE}=")))
        .cloned()
        .collect();
    resp.headers_mut().remove(header::SET_COOKIE);
    for v in theirs {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.map(Body::new)
}

/// Lets this browser open the caller's instances' web ports: sets the `gpucloud_key` cookie
/// (HttpOnly, SameSite=Lax, sent to `/i/` paths only, a day long) to the key the call is made
/// with. The dashboard calls it at login.
#[utoipa::path(post, path = "/v1/session", tag = "instances",
    responses((status = 204, description = "cookie set"), (status = 401, body = gpucloud_api::Problem)),
    security(("bearer" = [])))]
pub async fn login(
    State(app): State<Arc<App>>,
    super::extract::Auth(_p): super::extract::Auth,
    req: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !body.is_empty() {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            gpucloud_api::ProblemCode::InvalidRequest,
            "this call takes no body",
        )
        .into_response();
    }
    let key = req
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")))
        .map(str::trim)
        .unwrap_or_default();
    let secure = if app.config.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={key}; Path=/i/; HttpOnly; SameSite=Lax; Max-Age=86400{secure}");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

/// Forgets the proxy's cookie in this browser (the dashboard calls it at logout).
#[utoipa::path(delete, path = "/v1/session", tag = "instances", responses((status = 204, description = "cookie cleared")))]
pub async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/i/; HttpOnly; SameSite=Lax; Max-Age=0");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

fn bad_gateway(id: &str, port: u16, why: &str) -> Response {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        gpucloud_api::ProblemCode::BadGateway,
        format!("port {port} of instance {id}: {why}"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_an_instance_and_a_port() {
        assert_eq!(target("/i/i-abc/8888/lab/tree"), Some(("i-abc", 8888, true)));
        assert_eq!(target("/i/i-abc/8888/"), Some(("i-abc", 8888, true)));
        assert_eq!(target("/i/i-abc/8888"), Some(("i-abc", 8888, false)));
        for bad in ["/i/i-abc", "/i/i-abc/0/", "/i/i-abc/x/", "/i/", "/v1/i/a/1/"] {
            assert_eq!(target(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_callers_credentials_stay_here() {
        let mut req = Request::builder()
            .uri("/i/a/1/")
            .header(header::AUTHORIZATION, "Bearer gpc_x")
            .header(header::COOKIE, "a=1; gpucloud_key=gpc_y; _xsrf=2")
            .body(Body::empty())
            .unwrap();
        assert_eq!(key_of(&req).as_deref(), Some("Bearer gpc_x"));
        strip_credentials(&mut req);
        assert!(req.headers().get(header::AUTHORIZATION).is_none());
        assert_eq!(req.headers()[header::COOKIE], "a=1; _xsrf=2");
        let req = Request::builder().header(header::COOKIE, "gpucloud_key=gpc_y").body(Body::empty()).unwrap();
        assert_eq!(key_of(&req).as_deref(), Some("Bearer gpc_y"));
    }
}
