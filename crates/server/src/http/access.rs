//! Members' keys (create, list, revoke) and the audit log (operator).

use super::convert;
use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gpucloud_api::{ApiKeyCreated, KeyScope, Problem, rfc3339};
use std::sync::Arc;

fn info(k: gpucloud_store::ApiKey) -> gpucloud_api::ApiKeyInfo {
    gpucloud_api::ApiKeyInfo {
        id: k.id.to_string(),
        prefix: k.prefix,
        name: k.name,
        scope: match k.scope {
            gpucloud_store::KeyScope::Admin => KeyScope::Admin,
            gpucloud_store::KeyScope::Member => KeyScope::Member,
            gpucloud_store::KeyScope::Billing => KeyScope::Billing,
            gpucloud_store::KeyScope::ReadOnly => KeyScope::ReadOnly,
            gpucloud_store::KeyScope::Agent => KeyScope::Agent,
        },
        created_at: rfc3339(k.created_at),
        revoked_at: k.revoked_at.map(rfc3339),
        node: k.node,
        project: k.project.map(|p| p.to_string()),
    }
}

/// A new key for the caller's tenant (a member's), shown once. Needs an admin key.
#[utoipa::path(post, path = "/v1/keys", tag = "tenants", request_body = gpucloud_api::CreateKeyRequest,
    responses((status = 201, body = ApiKeyCreated), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<gpucloud_api::CreateKeyRequest>,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ApiError> {
    let key = app
        .create_member_key(
            &p,
            &req.name,
            req.scope.unwrap_or(KeyScope::Admin).as_str(),
            req.node.as_deref(),
            req.project.as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(convert::new_key(key))))
}

/// The caller's tenant's keys, revoked ones included; never their secrets.
#[utoipa::path(get, path = "/v1/keys", tag = "tenants",
    responses((status = 200, body = gpucloud_api::ApiKeyList)), security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<gpucloud_api::ApiKeyList>, ApiError> {
    Ok(Json(gpucloud_api::ApiKeyList { keys: app.list_keys(&p).await?.into_iter().map(info).collect() }))
}

/// Revokes a key of the caller's tenant (an operator: any key). Every replica refuses it from the
/// next request.
#[utoipa::path(post, path = "/v1/keys/{id}/revoke", tag = "tenants", params(("id" = String, Path)),
    responses((status = 200, body = gpucloud_api::ApiKeyInfo), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<gpucloud_api::ApiKeyInfo>, ApiError> {
    Ok(Json(info(app.revoke_key(&p, &id).await?)))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// One tenant's calls (its id); all when omitted.
    tenant: Option<String>,
    /// How far back, in seconds (default 86400).
    since: Option<i64>,
    /// Entries per page, newest first (default 200, at most 10000).
    limit: Option<u32>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
}

/// Operator: the audit log of mutating calls, newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "tenants", params(AuditQuery),
    responses((status = 200, body = gpucloud_api::AuditLog), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn audit(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<gpucloud_api::AuditLog>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text()))?;
    let all = app.audit_log(&p, q.tenant.as_deref(), q.since.unwrap_or(86_400), 10_000).await?;
    let mut again = vec![("since", q.since.unwrap_or(86_400).to_string())];
    if let Some(t) = &q.tenant {
        again.push(("tenant", t.clone()));
    }
    let page = super::page::PageQuery { limit: Some(q.limit.unwrap_or(200)), after: q.after };
    let key = |e: &gpucloud_store::AuditEntry| super::page::key(e.at.0, &e.id);
    let (page, next) = super::page::page(all, key, &page, 10_000, true, "/v1/audit", &again)?;
    let entries = page
        .into_iter()
        .map(|e| gpucloud_api::AuditEntry {
            id: e.id,
            at: rfc3339(e.at),
            tenant: e.tenant_id.to_string(),
            key_prefix: e.key_prefix,
            method: e.method,
            path: e.path,
            status: e.status,
            remote: e.remote,
        })
        .collect();
    Ok(Json(gpucloud_api::AuditLog { entries, next }))
}
