//! Monitoring history: an instance's GPU telemetry, the fleet over time, the idle policy.

use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gpucloud_api::{Problem, rfc3339};
use gpucloud_model::Money;
use std::sync::Arc;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WindowQuery {
    /// How far back, in seconds (default 3600, at most 31 days).
    since: Option<i64>,
    /// Bucket width in seconds (default: about 120 buckets over the window).
    step: Option<i64>,
}

fn query(q: Result<Query<WindowQuery>, QueryRejection>) -> Result<WindowQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text()))
}

/// The GPUs an instance holds or held, over time (for a slice: its whole GPU).
#[utoipa::path(get, path = "/v1/instances/{id}/telemetry", tag = "monitoring", params(("id" = String, Path), WindowQuery),
    responses((status = 200, body = gpucloud_api::InstanceTelemetry), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn instance(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    q: Result<Query<WindowQuery>, QueryRejection>,
) -> Result<Json<gpucloud_api::InstanceTelemetry>, ApiError> {
    let q = query(q)?;
    let t = app.instance_telemetry(&p, &id, q.since, q.step).await?;
    let points = t
        .buckets
        .into_iter()
        .map(|b| gpucloud_api::GpuTelemetryPoint {
            at: rfc3339(b.at),
            node: b.node_id.to_string(),
            gpu: b.gpu_index,
            samples: b.samples,
            utilization_pct: b.utilization_pct,
            temperature_c: b.temperature_c,
            max_temperature_c: b.max_temperature_c,
            power_w: b.power_w,
            memory_used_mib: b.memory_used_mib,
        })
        .collect();
    Ok(Json(gpucloud_api::InstanceTelemetry { step_s: t.step_ms / 1000, points }))
}

/// Operator: the fleet's utilization, allocation, temperature, power and revenue over time.
#[utoipa::path(get, path = "/v1/fleet/telemetry", tag = "monitoring", params(WindowQuery),
    responses((status = 200, body = gpucloud_api::FleetTelemetry), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn fleet(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    q: Result<Query<WindowQuery>, QueryRejection>,
) -> Result<Json<gpucloud_api::FleetTelemetry>, ApiError> {
    let q = query(q)?;
    let h = app.fleet_history(&p, q.since, q.step).await?;
    Ok(Json(gpucloud_api::FleetTelemetry {
        step_s: h.step_ms / 1000,
        points: h
            .buckets
            .into_iter()
            .map(|b| gpucloud_api::FleetPoint {
                at: rfc3339(b.at),
                gpus: b.gpus,
                allocated: b.allocated,
                utilization_pct: b.utilization_pct,
                max_temperature_c: b.max_temperature_c,
                power_w: b.power_w,
            })
            .collect(),
        revenue: h
            .revenue
            .into_iter()
            .map(|(at, micros)| gpucloud_api::RevenuePoint { at: rfc3339(at), amount: Money(micros) })
            .collect(),
    }))
}

fn view(p: gpucloud_store::IdlePolicy) -> gpucloud_api::IdlePolicy {
    gpucloud_api::IdlePolicy { below_percent: p.below_percent, minutes: p.minutes, auto_stop: p.auto_stop }
}

/// The caller's idle policy.
#[utoipa::path(get, path = "/v1/idle-policy", tag = "monitoring",
    responses((status = 200, body = gpucloud_api::IdlePolicy)), security(("bearer" = [])))]
pub async fn get_idle(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<gpucloud_api::IdlePolicy>, ApiError> {
    Ok(Json(view(app.idle_policy(&p).await?)))
}

/// Sets when the caller's instances count as idle, and whether idle ones are stopped.
#[utoipa::path(put, path = "/v1/idle-policy", tag = "monitoring", request_body = gpucloud_api::IdlePolicy,
    responses((status = 200, body = gpucloud_api::IdlePolicy), (status = 400, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_idle(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<gpucloud_api::IdlePolicy>,
) -> Result<Json<gpucloud_api::IdlePolicy>, ApiError> {
    let policy =
        gpucloud_store::IdlePolicy { below_percent: req.below_percent, minutes: req.minutes, auto_stop: req.auto_stop };
    Ok(Json(view(app.set_idle_policy(&p, policy).await?)))
}

/// Operator: every tenant's pending instances, oldest first, with why each waits.
#[utoipa::path(get, path = "/v1/queue", tag = "monitoring",
    responses((status = 200, body = gpucloud_api::Queue), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn queue(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<gpucloud_api::Queue>, ApiError> {
    let pending = app
        .pending_queue(&p)
        .await?
        .into_iter()
        .map(|i| gpucloud_api::QueuedInstance {
            tenant: i.tenant_id.to_string(),
            instance: super::convert::instance(i, &app.config.public_url),
        })
        .collect();
    Ok(Json(gpucloud_api::Queue { pending }))
}
