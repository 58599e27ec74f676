//! Tenants' secrets: set, list (names only), delete. Any key of the tenant but a read-only or
//! agent key may change them (the guard refuses those); no route ever returns a value.

use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gpucloud_api::{
    Problem, PutRegistryAuthRequest, PutSecretRequest, RegistryAuth, RegistryAuthList, Secret, SecretList, rfc3339,
};
use std::sync::Arc;

fn info(r: gpucloud_store::SecretRow) -> Secret {
    Secret { name: r.name, created_at: rfc3339(r.created_at), updated_at: rfc3339(r.updated_at) }
}

/// Sets a secret of the caller's tenant (201 when new, 200 when replaced). Stored encrypted;
/// workloads get it through `env` (`secret:NAME`) or `secrets` at create.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path)),
    request_body = PutSecretRequest,
    responses((status = 201, body = Secret), (status = 200, body = Secret), (status = 422, body = Problem),
        (status = 409, body = Problem, description = "the server keeps no secrets (no key)")),
    security(("bearer" = [])))]
pub async fn put(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PutSecretRequest>,
) -> Result<(StatusCode, Json<Secret>), ApiError> {
    let (row, created) = app.put_secret(&p, &name, &req.value).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(info(row))))
}

/// The caller's tenant's secrets: names and times, never values.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets",
    responses((status = 200, body = SecretList)), security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<SecretList>, ApiError> {
    Ok(Json(SecretList { secrets: app.list_secrets(&p).await?.into_iter().map(info).collect() }))
}

/// Deletes a secret. Running workloads keep the value they started with; a workload started
/// later without it says so in the server's log.
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_secret(&p, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn auth_info(r: gpucloud_store::RegistryAuthRow) -> RegistryAuth {
    RegistryAuth { registry: r.registry, username: r.username, created_at: rfc3339(r.created_at) }
}

/// Sets the caller's tenant's credentials for a private registry (`docker.io` for Docker Hub).
/// A node gets them only to pull the image of one of the tenant's workloads from there.
#[utoipa::path(put, path = "/v1/registry-auths/{registry}", tag = "secrets", params(("registry" = String, Path)),
    request_body = PutRegistryAuthRequest,
    responses((status = 200, body = RegistryAuth), (status = 422, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_registry_auth(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(registry): Path<String>,
    ApiJson(req): ApiJson<PutRegistryAuthRequest>,
) -> Result<Json<RegistryAuth>, ApiError> {
    Ok(Json(auth_info(app.put_registry_auth(&p, &registry, &req.username, &req.password).await?)))
}

/// The caller's tenant's registry credentials: registries and usernames, never passwords.
#[utoipa::path(get, path = "/v1/registry-auths", tag = "secrets",
    responses((status = 200, body = RegistryAuthList)), security(("bearer" = [])))]
pub async fn list_registry_auths(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
) -> Result<Json<RegistryAuthList>, ApiError> {
    Ok(Json(RegistryAuthList {
        registry_auths: app.list_registry_auths(&p).await?.into_iter().map(auth_info).collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/registry-auths/{registry}", tag = "secrets", params(("registry" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn delete_registry_auth(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(registry): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_registry_auth(&p, &registry).await?;
    Ok(StatusCode::NO_CONTENT)
}
