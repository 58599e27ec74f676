use super::convert;
use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use super::idempotency;
use crate::app::App;
use crate::app::instances::CreateInstance;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use gpucloud_api::{CreateInstanceRequest, Instance, InstanceList, Problem};
use gpucloud_model::UserAction;
use std::sync::Arc;

/// Create an instance: it starts pending and runs once a node with the GPUs is found.
#[utoipa::path(post, path = "/v1/instances", tag = "instances", request_body = CreateInstanceRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe creation")),
    responses((status = 201, body = Instance), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateInstanceRequest>,
) -> Result<(StatusCode, Json<Instance>), ApiError> {
    let req = CreateInstance {
        model: req.gpu,
        count: req.count,
        region: req.region,
        command: req.command,
        name: req.name,
        gpu_share: req.gpu_share,
        gpu_memory_mib: req.gpu_memory_mib,
        mig: req.mig,
        tier: tier_or_on_demand(req.tier),
        max_price: req.max_price_per_gpu_hour,
        image: req.image,
        env: req.env,
        secrets: req.secrets,
        ports: req.ports,
        template: req.template,
        volume: req.volume,
        project: req.project,
        on_quota: req.on_quota.map(Into::into).unwrap_or_default(),
        priority: req.priority.map(Into::into).unwrap_or_default(),
    };
    let (inst, _) = app.create_instance(&p, req, idempotency::key_of(&headers)).await?;
    Ok((StatusCode::CREATED, Json(convert::instance(inst, &app.config.public_url))))
}

/// List the caller's instances, oldest first, a page at a time (`limit`, `after`; follow `next`).
#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(super::page::PageQuery),
    responses((status = 200, body = InstanceList), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    q: Result<axum::extract::Query<super::page::PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<InstanceList>, ApiError> {
    let axum::extract::Query(q) = q.map_err(super::page::bad_query)?;
    // The page and one more (to know whether a next page exists), read from the store alone.
    let limit = q.limit.unwrap_or(super::page::DEFAULT_LIMIT).clamp(1, super::page::MAX_LIMIT);
    let after = q.after.as_deref().map(super::page::parse_key).transpose()?;
    let rows = app.instances_page(&p, after.as_ref().map(|(at, id)| (*at, id.as_str())), limit + 1).await?;
    let key = |i: &gpucloud_store::Instance| super::page::key(i.created_at.0, i.id.as_str());
    let (page, next) = super::page::page(rows, key, &q, super::page::MAX_LIMIT, false, "/v1/instances", &[])?;
    let nodes = app.ssh_nodes(&page).await?;
    let instances = page.into_iter().map(|i| with_ssh_line(&app, i, &nodes)).collect();
    Ok(Json(InstanceList { instances, next }))
}

/// One instance, with why it is pending if it is.
#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances", params(("id" = String, Path)),
    responses((status = 200, body = Instance), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(with_ssh(&app, app.get_instance(&p, &id).await?).await?))
}

/// The instance as its tenant sees it, with how to reach it over SSH while it runs.
async fn with_ssh(app: &App, i: gpucloud_store::Instance) -> Result<Instance, ApiError> {
    let nodes = app.ssh_nodes(std::slice::from_ref(&i)).await?;
    Ok(with_ssh_line(app, i, &nodes))
}

/// The instance as the API shows it, with its `ssh` line where its node serves SSH.
fn with_ssh_line(app: &App, i: gpucloud_store::Instance, nodes: &crate::app::SshNodes) -> Instance {
    let ssh = crate::app::ssh::ssh_line(&i, nodes);
    let mut out = convert::instance(i, &app.config.public_url);
    if let Some((command, known)) = ssh {
        out.ssh = Some(command);
        out.ssh_host_key = Some(known);
    }
    out
}

async fn act(app: &App, p: &crate::app::Principal, id: &str, action: UserAction) -> Result<Json<Instance>, ApiError> {
    Ok(Json(convert::instance(app.instance_action(p, id, action).await?, &app.config.public_url)))
}

/// Stop: the workload is stopped and the GPUs released; nothing is billed while stopped.
#[utoipa::path(post, path = "/v1/instances/{id}/stop", tag = "instances", params(("id" = String, Path)),
    responses((status = 200, body = Instance), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn stop(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    act(&app, &p, &id, UserAction::Stop).await
}

/// Start a stopped or failed instance again: it goes back to pending.
#[utoipa::path(post, path = "/v1/instances/{id}/start", tag = "instances", params(("id" = String, Path)),
    responses((status = 200, body = Instance), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn start(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    act(&app, &p, &id, UserAction::Start).await
}

/// Terminate for good.
#[utoipa::path(post, path = "/v1/instances/{id}/terminate", tag = "instances", params(("id" = String, Path)),
    responses((status = 200, body = Instance), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn terminate(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    act(&app, &p, &id, UserAction::Terminate).await
}

/// Every state change of the instance, oldest first (what billing is computed from).
#[utoipa::path(get, path = "/v1/instances/{id}/events", tag = "instances", params(("id" = String, Path)),
    responses((status = 200, body = gpucloud_api::InstanceHistory), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn events(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    q: Result<axum::extract::Query<super::page::PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<gpucloud_api::InstanceHistory>, ApiError> {
    let axum::extract::Query(q) = q.map_err(super::page::bad_query)?;
    let all = app.instance_events(&p, &id).await?;
    let key = |e: &gpucloud_store::InstanceEvent| format!("{:015}", e.generation.max(0));
    let path = format!("/v1/instances/{id}/events");
    let (page, next) = super::page::page(all, key, &q, super::page::MAX_LIMIT, false, &path, &[])?;
    let events = page
        .into_iter()
        .map(|e| gpucloud_api::InstanceEvent {
            at: gpucloud_api::rfc3339(e.at),
            from: e.from.map(|s| s.to_string()),
            to: e.to.to_string(),
        })
        .collect();
    Ok(Json(gpucloud_api::InstanceHistory { events, next }))
}

/// The tier asked for, on-demand when none is named (serde has refused any other text).
pub(super) fn tier_or_on_demand(tier: Option<gpucloud_api::Tier>) -> gpucloud_model::Tier {
    tier.map_or(gpucloud_model::Tier::OnDemand, Into::into)
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// One metric (loss, samples_per_s...); all when omitted.
    name: Option<String>,
    /// The latest this many points (default 1000).
    limit: Option<u32>,
}

/// What the instance's workload pushed through its metadata endpoint (the SDK's log_metrics).
#[utoipa::path(get, path = "/v1/instances/{id}/metrics", tag = "instances", params(("id" = String, Path), MetricsQuery),
    responses((status = 200, body = gpucloud_api::InstanceMetrics), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn metrics(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    q: Result<axum::extract::Query<MetricsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<gpucloud_api::InstanceMetrics>, ApiError> {
    let axum::extract::Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text()))?;
    let points = app
        .instance_metrics(&p, &id, q.name.as_deref(), q.limit.unwrap_or(1000))
        .await?
        .into_iter()
        .map(|m| gpucloud_api::MetricPoint {
            at: gpucloud_api::rfc3339(m.at),
            step: m.step,
            name: m.name,
            value: m.value,
        })
        .collect();
    Ok(Json(gpucloud_api::InstanceMetrics { points }))
}
