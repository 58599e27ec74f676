//! Tenants' SSH public keys: add, list, remove. Any key of the tenant that may act (the guard
//! refuses read-only and agent keys for changes) manages them; they open sessions in the
//! tenant's own instances only.

use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gpucloud_api::{AddSshKeyRequest, Problem, SshKey, SshKeyList, rfc3339};
use std::sync::Arc;

fn info(r: gpucloud_store::SshKeyRow) -> SshKey {
    SshKey {
        name: r.name,
        algorithm: r.algorithm,
        fingerprint: r.fingerprint,
        public_key: r.public_key,
        comment: r.comment,
        created_at: rfc3339(r.created_at),
    }
}

/// Adds a public key to the caller's tenant: from the nodes' next heartbeat it opens SSH
/// sessions in the tenant's running instances (`ssh -p PORT INSTANCE@NODE`, as `instance show`
/// prints it).
#[utoipa::path(post, path = "/v1/ssh-keys", tag = "ssh", request_body = AddSshKeyRequest,
    responses((status = 201, body = SshKey), (status = 409, body = Problem, description = "name or key already added"),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn add(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<AddSshKeyRequest>,
) -> Result<(StatusCode, Json<SshKey>), ApiError> {
    let row = app.add_ssh_key(&p, req.name.as_deref(), &req.public_key).await?;
    Ok((StatusCode::CREATED, Json(info(row))))
}

/// The caller's tenant's SSH keys, by name.
#[utoipa::path(get, path = "/v1/ssh-keys", tag = "ssh",
    responses((status = 200, body = SshKeyList)), security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<SshKeyList>, ApiError> {
    Ok(Json(SshKeyList { ssh_keys: app.list_ssh_keys(&p).await?.into_iter().map(info).collect() }))
}

/// Removes a key (by name or `SHA256:` fingerprint): new sessions with it are refused from the
/// nodes' next heartbeat.
#[utoipa::path(delete, path = "/v1/ssh-keys/{name}", tag = "ssh", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_ssh_key(&p, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
