use super::convert;
use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gpucloud_api::{ApiKeyCreated, CreateTenantRequest, Problem, TenantList};
use gpucloud_model::{Role, TenantId};
use std::sync::Arc;

#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = TenantList), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<TenantList>, ApiError> {
    let mut tenants = Vec::new();
    for t in app.list_tenants(&p).await? {
        let b = app.store().tenant_billing(&t.id).await.map_err(crate::app::AppError::from)?;
        let mut t = convert::tenant(t);
        t.billing = Some(convert::billing_mode(&b));
        tenants.push(t);
    }
    Ok(Json(TenantList { tenants }))
}

/// One tenant and how it pays (operator).
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 200, body = gpucloud_api::Tenant), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<gpucloud_api::Tenant>, ApiError> {
    let (t, b) = app.tenant_with_billing(&p, &id).await?;
    let mut t = convert::tenant(t);
    t.billing = Some(convert::billing_mode(&b));
    Ok(Json(t))
}

/// Create a tenant and its first API key, shown once (operator).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenantRequest,
    responses((status = 201, body = ApiKeyCreated), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateTenantRequest>,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ApiError> {
    p.require_operator()?;
    let prepaid = crate::app::billing_mode(req.billing_mode.as_deref(), None)?;
    crate::app::check_credit_limit(prepaid, req.credit_limit)?;
    let key = app.create_tenant(Some(&p), &req.name, Role::Tenant).await?;
    let b = app.set_billing_mode(&p, &key.tenant.id.to_string(), prepaid, req.credit_limit).await?;
    let mut created = convert::new_key(key);
    created.tenant.billing = Some(convert::billing_mode(&b));
    Ok((StatusCode::CREATED, Json(created)))
}

/// Another API key for a tenant, shown once (operator).
#[utoipa::path(post, path = "/v1/tenants/{id}/keys", tag = "tenants", params(("id" = String, Path)),
    responses((status = 201, body = ApiKeyCreated), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn create_key(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ApiError> {
    p.require_operator()?;
    let tid = TenantId::parse(&id).map_err(|_| crate::app::AppError::NotFound { kind: "tenant", id: id.clone() })?;
    Ok((StatusCode::CREATED, Json(convert::new_key(app.create_key(&p, &tid).await?))))
}
