//! Instance templates: the built-in ones and the caller's tenant's own. Keys that may act create
//! and delete them (the guard refuses read-only and agent keys); each tenant sees only its own.

use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gpucloud_api::{CreateTemplateRequest, Problem, Template, TemplateList};
use std::sync::Arc;

/// Saves a template for `instance create --template NAME`.
#[utoipa::path(post, path = "/v1/templates", tag = "instances", request_body = CreateTemplateRequest,
    responses((status = 201, body = Template), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateTemplateRequest>,
) -> Result<(StatusCode, Json<Template>), ApiError> {
    Ok((StatusCode::CREATED, Json(app.create_template(&p, req).await?)))
}

/// The built-in templates, then the caller's own.
#[utoipa::path(get, path = "/v1/templates", tag = "instances",
    responses((status = 200, body = TemplateList)), security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<TemplateList>, ApiError> {
    Ok(Json(TemplateList { templates: app.list_templates(&p).await? }))
}

#[utoipa::path(get, path = "/v1/templates/{name}", tag = "instances", params(("name" = String, Path)),
    responses((status = 200, body = Template), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> Result<Json<Template>, ApiError> {
    Ok(Json(app.get_template(&p, &name).await?))
}

#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "instances", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_template(&p, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
