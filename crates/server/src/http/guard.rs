//! In front of every route: resolves the caller's key once (handlers and the idempotency layer
//! reuse it), refuses mutating calls from read-only keys (403) and callers over their rate
//! (429 with Retry-After), and writes each authenticated mutating call to the audit log.

use super::error::ApiError;
use crate::app::App;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gpucloud_store::{AuditEntry, KeyScope};
use std::net::SocketAddr;
use std::sync::Arc;

pub async fn layer(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    // The agent protocol beats every few seconds per node: neither limited nor audited, except
    // registration.
    let agent_beat = path.starts_with("/v1/agent/") && path != "/v1/agent/register";
    let authz = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    // A missing or bad key is the handler's to refuse (401): public routes need none.
    let principal = match authz {
        Some(a) => app.authenticate(Some(&a)).await.ok(),
        None => None,
    };
    // A node's agent calling for one of its workloads (through the workload's metadata endpoint).
    let for_workload = req.headers().get("gpucloud-workload").and_then(|v| v.to_str().ok()).map(str::to_string);
    let principal = match (principal, for_workload) {
        (Some(p), Some(w)) if !path.starts_with("/v1/agent/") => match app.act_for_workload(&p, &w).await {
            Ok(wp) => Some(wp),
            Err(e) => return ApiError::from(e).into_response(),
        },
        (p, _) => p,
    };
    let remote = remote_of(&req);
    let audited = mutating && !agent_beat && path.starts_with("/v1/");
    let entry = |p: &crate::app::Principal, status: u16| AuditEntry {
        // Calls within one millisecond keep their order: the id sorts by a per-process sequence.
        id: format!(
            "au-{:012x}{:016x}",
            AUDIT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            crate::app::random_bits() as u64
        ),
        at: app.now(),
        tenant_id: p.tenant.id.clone(),
        key_prefix: p.key_prefix.clone(),
        method: method.to_string(),
        path: path.clone(),
        status,
        remote: remote.clone(),
    };
    let refused = match &principal {
        // Refused here, and still audited: a read-only key trying to change something is news.
        Some(p) if mutating && p.scope == KeyScope::ReadOnly => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            gpucloud_api::ProblemCode::ReadOnlyKey,
            format!("key {} is read-only: it cannot {method} {path}", p.key_prefix),
        )),
        Some(p) if mutating && !role_may_change(p.scope, p.project.is_some(), &path) => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            gpucloud_api::ProblemCode::KeyRole,
            format!(
                "key {} is a {} key: it cannot {method} {path} ({})",
                p.key_prefix,
                p.scope.as_str(),
                match (p.scope, &p.project) {
                    (KeyScope::Billing, _) => "a billing key changes the billing settings only".to_string(),
                    (KeyScope::Admin, Some(project)) => format!(
                        "it is scoped to project {project}; the organization's billing settings need an \
                         organization-wide key"
                    ),
                    _ => "keys, projects, quotas and billing settings need an admin key".to_string(),
                }
            ),
        )),
        Some(p) if p.workload.is_some() && !workload_may(&app, p, &method, &path).await => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            gpucloud_api::ProblemCode::WorkloadScope,
            format!(
                "a workload reaches only its own instance, cluster and job through its metadata endpoint, not {method} {path}"
            ),
        )),
        Some(p) if p.scope == KeyScope::Agent && !path.starts_with("/v1/agent/") => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            gpucloud_api::ProblemCode::AgentKey,
            format!("key {} is a node agent's: it can only call /v1/agent/..., not {method} {path}", p.key_prefix),
        )),
        _ => None,
    };
    let Some(p) = principal else { return next.run(req).await };
    if let Some(refusal) = refused {
        let resp = refusal.into_response();
        if audited {
            let row = entry(&p, resp.status().as_u16());
            // Nothing changed: a lost row for a refusal is logged, and the refusal stands.
            if let Err(e) = app.store().insert_audit(&row).await {
                tracing::error!(error = %e, method = %row.method, path = %row.path, "audit log write failed");
            }
        }
        return resp;
    }
    if !agent_beat && let Err(wait) = app.take_rate_token(&p.key_id).await {
        // Not audited: a runaway client would otherwise write a row per refusal.
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            gpucloud_api::ProblemCode::RateLimited,
            format!("key {} is over its rate limit; retry in {secs} s", p.key_prefix),
        )
        .into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    // Written ahead: the row exists before the call can change anything, so a crash mid-call
    // leaves a row whose outcome is unknown (status 0), never a change with no row. A call
    // whose row cannot be written is not run.
    let row = audited.then(|| entry(&p, 0));
    if let Some(row) = &row
        && let Err(e) = app.store().insert_audit(row).await
    {
        tracing::error!(error = %e, method = %row.method, path = %row.path, "audit log write failed: call refused");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            gpucloud_api::ProblemCode::AuditUnavailable,
            format!("the audit log cannot be written, so {method} {path} was not run; retry shortly"),
        )
        .into_response();
    }
    req.extensions_mut().insert(p);
    let Some(row) = row else { return next.run(req).await };
    // Its own task: a client that hangs up mid-call neither cuts the change short nor leaves
    // its row unfinished.
    let finish = tokio::spawn(async move {
        let resp = next.run(req).await;
        if let Err(e) = app.store().finish_audit(&row.id, resp.status().as_u16()).await {
            // The row stays, saying the outcome is unknown.
            tracing::error!(error = %e, method = %row.method, path = %row.path, "audit log: recording the answer failed");
        }
        resp
    });
    match finish.await {
        Ok(resp) => resp,
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            gpucloud_api::ProblemCode::Internal,
            format!("the call failed: {e}"),
        )
        .into_response(),
    }
}

/// What a workload may call: its instance, its cluster (read, resize) and its job, by id or name.
/// What a member or billing key may change; every key of a tenant reads what its tenant may
/// read, and an admin key changes everything its tenant may, except that a project's admin key
/// leaves the organization's billing settings alone. (Read-only and agent keys have their own
/// refusals; what a project key reaches of keys and projects is the app's to decide.)
fn role_may_change(scope: KeyScope, project_scoped: bool, path: &str) -> bool {
    let under = |prefix: &str| path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    // Signing in the dashboard and pricing a request change nothing.
    if under("/v1/session") || path == "/v1/instances/quote" {
        return true;
    }
    let settings = ["/v1/keys", "/v1/projects", "/v1/billing", "/v1/idle-policy", "/v1/tenants"];
    match scope {
        KeyScope::Member => !settings.iter().any(|s| under(s)),
        KeyScope::Billing => under("/v1/billing"),
        KeyScope::Admin => !(project_scoped && (under("/v1/billing") || under("/v1/idle-policy"))),
        KeyScope::ReadOnly | KeyScope::Agent => true,
    }
}

async fn workload_may(app: &App, p: &crate::app::Principal, method: &Method, path: &str) -> bool {
    let Some(id) = &p.workload else { return false };
    let Ok(Some(inst)) = app.store().get_instance(None, id).await else { return false };
    let seg: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let cluster = match &inst.sale.cluster {
        Some((c, _)) => app.store().find_cluster(Some(&p.tenant.id), c.as_str()).await.ok().flatten(),
        None => None,
    };
    let is_cluster = |c: &str| cluster.as_ref().is_some_and(|k| k.id.as_str() == c || k.name == c);
    let is_job = |j: &str| inst.sale.job.as_ref().is_some_and(|(job, _)| job.as_str() == j);
    match (method.as_str(), seg.as_slice()) {
        ("GET", ["v1", "whoami"]) => true,
        ("GET", ["v1", "instances", i]) => *i == inst.id.as_str() || *i == inst.name,
        ("GET", ["v1", "clusters", c]) | ("POST", ["v1", "clusters", c, "resize"]) => is_cluster(c),
        ("GET", ["v1", "jobs", j]) => is_job(j),
        _ => false,
    }
}

static AUDIT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The peer address, with what a proxy in front said about the client (X-Forwarded-For).
fn remote_of(req: &Request) -> String {
    let peer =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string()).unwrap_or_else(|| "unknown".into());
    match req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(xff) => format!("{peer} (x-forwarded-for: {})", xff.chars().take(200).collect::<String>()),
        None => peer,
    }
}
