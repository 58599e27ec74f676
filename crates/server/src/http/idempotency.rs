//! `Idempotency-Key` on every mutating POST: the first response is stored and a retry with the
//! same key and the same request gets it back, without running anything again. A different
//! request under a used key is refused. Creation is also deduplicated inside the store, so even a
//! crash between committing and recording the response cannot create twice.

use super::MAX_BODY;
use super::error::ApiError;
use crate::app::{App, hash_key};
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gpucloud_store::IdempotencyBegin;
use std::sync::Arc;

pub const HEADER: &str = "idempotency-key";
/// A key whose first request has not finished after this long is presumed dead and retried.
const STALE_AFTER_MS: i64 = 30_000;

pub fn key_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(HEADER).and_then(|v| v.to_str().ok())
}

pub async fn layer(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !req.headers().contains_key(HEADER) {
        return next.run(req).await;
    }
    match run(app, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(app: Arc<App>, req: Request, next: Next) -> Result<Response, ApiError> {
    let key = req.headers().get(HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            gpucloud_api::ProblemCode::InvalidIdempotencyKey,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
        .field("Idempotency-Key"));
    }
    let principal = match req.extensions().get::<crate::app::Principal>() {
        Some(p) => p.clone(),
        None => app.authenticate(req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())).await?,
    };
    let (mut parts, body) = req.into_parts();
    let bytes = to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            gpucloud_api::ProblemCode::PayloadTooLarge,
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    })?;
    let mut material = format!("{} {}\n", parts.method, parts.uri.path()).into_bytes();
    material.extend_from_slice(&bytes);
    let fingerprint = hash_key(&String::from_utf8_lossy(&material));
    let scope = principal.tenant.id.to_string();
    let store = app.store();
    // SQLite is one server process's file: a key held by another process belongs to one that died.
    let foreign_ms = if store.backend() == gpucloud_store::Backend::Sqlite { 0 } else { STALE_AFTER_MS };
    let staleness = gpucloud_store::Staleness { own_ms: STALE_AFTER_MS, foreign_ms };
    let claim = store.idempotency_begin(&scope, &key, &fingerprint, &app.process_id, app.now(), staleness);
    match claim.await.map_err(app_err)? {
        IdempotencyBegin::Started => {}
        IdempotencyBegin::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = (status, body).into_response();
            let ct = if status.is_success() { "application/json" } else { "application/problem+json" };
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(resp);
        }
        IdempotencyBegin::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                gpucloud_api::ProblemCode::IdempotencyKeyReused,
                "this Idempotency-Key was already used with a different request",
            )
            .field("Idempotency-Key"));
        }
        IdempotencyBegin::InProgress => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                gpucloud_api::ProblemCode::IdempotencyInProgress,
                "a request with this Idempotency-Key is still running; retry shortly",
            ));
        }
    }
    parts.extensions.insert(principal);
    // The request runs to its end and its answer is kept even when the client hangs up first
    // (the server drops a connection's future then): a retry gets the answer at once instead of
    // "in progress" until the key goes stale, and a request that committed is never run twice.
    let request = Request::from_parts(parts, Body::from(bytes));
    let task = {
        let (store, scope, key) = (store.clone(), scope.clone(), key.clone());
        tokio::spawn(async move {
            let resp = next.run(request).await;
            let (parts, body) = resp.into_parts();
            let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
            if parts.status.is_server_error() {
                store.idempotency_abandon(&scope, &key).await.map_err(app_err)?;
            } else {
                let text = redact_secrets(&String::from_utf8_lossy(&body));
                store.idempotency_finish(&scope, &key, parts.status.as_u16(), &text).await.map_err(app_err)?;
            }
            Ok::<Response, ApiError>(Response::from_parts(parts, Body::from(body)))
        })
    };
    match task.await {
        Ok(answer) => answer,
        Err(e) => {
            // The handler panicked: the key is free for a retry.
            tracing::error!(error = %e, "a request under an Idempotency-Key failed");
            store.idempotency_abandon(&scope, &key).await.map_err(app_err)?;
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, gpucloud_api::ProblemCode::Internal, "internal error"))
        }
    }
}

fn app_err(e: gpucloud_store::StoreError) -> ApiError {
    crate::app::AppError::from(e).into()
}

/// A new API key is shown once and stored only as a hash, so a stored response never keeps it: a
/// replay answers with everything but the key.
fn redact_secrets(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(mut v) if v.get("api_key").is_some_and(|k| k.is_string()) => {
            v["api_key"] = serde_json::Value::String("(shown once; not kept)".into());
            v.to_string()
        }
        _ => body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::post;
    use std::time::Duration;
    use tower::ServiceExt;

    /// Held shut until the test opens it: the handler ends when the test says, not after a sleep.
    fn gate() -> &'static tokio::sync::Semaphore {
        static GATE: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
        GATE.get_or_init(|| tokio::sync::Semaphore::new(0))
    }

    async fn slow() -> (StatusCode, &'static str) {
        let _ = gate().acquire().await;
        (StatusCode::CREATED, "{\"done\":true}")
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_does_not_hold_its_key() {
        let dir = std::env::temp_dir().join(format!("gpucloud-idem-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = gpucloud_store::open(&format!("sqlite://{}/db.sqlite", dir.display())).await.unwrap();
        let app = Arc::new(App::new(store, crate::app::Config::default()));
        let key = app.create_tenant(None, "t", gpucloud_model::Role::Tenant).await.unwrap();
        let router: Router = Router::new()
            .route("/slow", post(slow))
            .layer(axum::middleware::from_fn_with_state(app.clone(), layer))
            .with_state(app.clone());
        let request = || {
            Request::builder()
                .method(Method::POST)
                .uri("/slow")
                .header(header::AUTHORIZATION, format!("Bearer {}", key.secret))
                .header(HEADER, "k-1")
                .body(Body::from("{}"))
                .unwrap()
        };
        // The client gives up long before the handler ends: its future is dropped.
        let gone = tokio::time::timeout(Duration::from_millis(50), router.clone().oneshot(request())).await;
        assert!(gone.is_err(), "the first call was cut off");
        let r = router.clone().oneshot(request()).await.unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT, "in progress, while it still runs");
        gate().add_permits(1);
        // A retry gets the first request's answer once it ends, not 409 for the next 30 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r = router.clone().oneshot(request()).await.unwrap();
            if r.status() == StatusCode::CREATED {
                assert_eq!(r.headers()["idempotent-replayed"], "true");
                break;
            }
            assert_eq!(r.status(), StatusCode::CONFLICT, "in progress, while it still runs");
            assert!(tokio::time::Instant::now() < deadline, "the key was never released");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
