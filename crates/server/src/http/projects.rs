//! Projects and their GPU quotas. Who may do what: any key of the organization lists projects
//! and reads quotas (a project key: its own project only); an organization-wide admin key makes
//! projects, sets or removes quotas and sets budgets; an operator does the same for any tenant
//! (`?tenant=`).

use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gpucloud_api::{
    CreateProjectRequest, Problem, ProjectBudgetRequest, ProjectInfo, ProjectList, QuotaInfo, QuotaList,
    SetQuotaRequest, rfc3339,
};
use std::sync::Arc;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    /// Operators: another tenant's projects (its id or name).
    tenant: Option<String>,
}

fn tenant_of(q: Result<Query<TenantQuery>, QueryRejection>) -> Result<Option<String>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text()))?;
    Ok(q.tenant)
}

fn info(p: gpucloud_store::Project, spend: &std::collections::HashMap<String, gpucloud_model::Money>) -> ProjectInfo {
    ProjectInfo {
        month_spend: spend.get(p.name.as_str()).copied().unwrap_or(gpucloud_model::Money::ZERO),
        name: p.name.to_string(),
        max_priority: p.max_priority.into(),
        created_at: rfc3339(p.created_at),
        monthly_budget: p.monthly_budget,
    }
}

fn gpus(milli: u64) -> f64 {
    milli as f64 / 1000.0
}

fn quota_info(u: gpucloud_store::QuotaUse) -> QuotaInfo {
    let limit = u.quota.as_ref().map(|q| q.limit_milli);
    QuotaInfo {
        project: u.project.to_string(),
        gpu: u.model.to_string(),
        limit: limit.map(gpus),
        guaranteed: u.quota.as_ref().map(|q| gpus(q.guaranteed_milli)),
        used: gpus(u.used_milli),
        headroom: limit.map(|l| gpus(l.saturating_sub(u.used_milli))),
        waiting: u.waiting,
        waiting_gpus: gpus(u.waiting_milli),
    }
}

/// Make a project (an organization-wide admin key).
#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = CreateProjectRequest,
    responses((status = 201, body = ProjectInfo), (status = 403, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateProjectRequest>,
) -> Result<(StatusCode, Json<ProjectInfo>), ApiError> {
    let made = app.create_project(&p, &req.name, req.max_priority.map(Into::into)).await?;
    Ok((StatusCode::CREATED, Json(info(made, &Default::default()))))
}

/// The organization's projects, `default` first (a project key: its own).
#[utoipa::path(get, path = "/v1/projects", tag = "projects", params(TenantQuery),
    responses((status = 200, body = ProjectList), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    q: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Json<ProjectList>, ApiError> {
    let tenant = tenant_of(q)?;
    let spend = app.month_spend(&p, tenant.as_deref()).await?;
    let projects = app.list_projects(&p, tenant.as_deref()).await?.into_iter().map(|x| info(x, &spend)).collect();
    Ok(Json(ProjectList { projects }))
}

/// A project's GPUs per model: limit, guarantee, use, headroom, and requests waiting for room.
#[utoipa::path(get, path = "/v1/projects/{name}/quotas", tag = "projects", params(("name" = String, Path), TenantQuery),
    responses((status = 200, body = QuotaList), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn quotas(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
    q: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Json<QuotaList>, ApiError> {
    let tenant = tenant_of(q)?;
    let quotas = app.show_quota(&p, tenant.as_deref(), &name).await?.into_iter().map(quota_info).collect();
    Ok(Json(QuotaList { quotas }))
}

/// Set a project's quota on one GPU model (an organization-wide admin key, or an operator).
/// Checked at every create: what would take the project past `limit` is refused, or waits.
#[utoipa::path(put, path = "/v1/projects/{name}/quotas/{gpu}", tag = "projects",
    params(("name" = String, Path), ("gpu" = String, Path), TenantQuery), request_body = SetQuotaRequest,
    responses((status = 200, body = QuotaInfo), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_quota(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path((name, gpu)): Path<(String, String)>,
    q: Result<Query<TenantQuery>, QueryRejection>,
    ApiJson(req): ApiJson<SetQuotaRequest>,
) -> Result<Json<QuotaInfo>, ApiError> {
    let tenant = tenant_of(q)?;
    let u = app.set_quota(&p, tenant.as_deref(), &name, &gpu, req.limit, req.guaranteed).await?;
    Ok(Json(quota_info(u)))
}

/// Set or remove a project's monthly budget (an organization-wide admin key, or an operator).
/// Once the project's usage this month reaches it, its creates are refused with 402.
#[utoipa::path(put, path = "/v1/projects/{name}/budget", tag = "projects",
    params(("name" = String, Path), TenantQuery), request_body = ProjectBudgetRequest,
    responses((status = 200, body = ProjectInfo), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_budget(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
    q: Result<Query<TenantQuery>, QueryRejection>,
    ApiJson(req): ApiJson<ProjectBudgetRequest>,
) -> Result<Json<ProjectInfo>, ApiError> {
    let tenant = tenant_of(q)?;
    let project = app.set_project_budget(&p, tenant.as_deref(), &name, req.monthly_limit).await?;
    let spend = app.month_spend(&p, tenant.as_deref()).await?;
    Ok(Json(info(project, &spend)))
}

/// Remove a project's quota on one GPU model: its work of that model is no longer limited.
#[utoipa::path(delete, path = "/v1/projects/{name}/quotas/{gpu}", tag = "projects",
    params(("name" = String, Path), ("gpu" = String, Path), TenantQuery),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_quota(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path((name, gpu)): Path<(String, String)>,
    q: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_of(q)?;
    app.delete_quota(&p, tenant.as_deref(), &name, &gpu).await?;
    Ok(StatusCode::NO_CONTENT)
}
