//! Spot prices, managed jobs and the operator's preemption switch.

use super::convert;
use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use super::idempotency;
use crate::app::App;
use crate::app::jobs::JobView;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use gpucloud_api::{
    CreateJobRequest, Instance, Job, JobAttempt, JobList, PreemptRequest, Problem, SpotPoint, SpotPriceHistory,
    parse_time, rfc3339,
};
use gpucloud_billing::CURRENCY;
use gpucloud_model::{GpuModel, Money, Region};
use serde::Deserialize;
use std::sync::Arc;

fn invalid(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, gpucloud_api::ProblemCode::InvalidRequest, detail).field(field)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SpotQuery {
    /// GPU model, e.g. A100-40GB.
    gpu: String,
    region: String,
    /// RFC 3339 or YYYY-MM-DD; default: 24 hours ago.
    since: Option<String>,
}

/// The spot price of a GPU model in a region: now, its bounds, and its history.
#[utoipa::path(get, path = "/v1/spot/prices", tag = "market", params(SpotQuery),
    responses((status = 200, body = SpotPriceHistory), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn spot_prices(
    State(app): State<Arc<App>>,
    Auth(_): Auth,
    q: Result<Query<SpotQuery>, QueryRejection>,
) -> Result<Json<SpotPriceHistory>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text()))?;
    let model: GpuModel = q.gpu.parse().map_err(|e: gpucloud_model::UnknownGpuModel| invalid("gpu", e.to_string()))?;
    let region = Region::parse(&q.region).map_err(|e| invalid("region", e.to_string()))?;
    let since = match q.since {
        Some(s) => Some(parse_time(&s).ok_or_else(|| invalid("since", "since must be RFC 3339 or YYYY-MM-DD"))?),
        None => None,
    };
    let h = app.spot_history(model, &region, since).await?;
    Ok(Json(SpotPriceHistory {
        gpu: model.to_string(),
        region: region.to_string(),
        currency: CURRENCY.into(),
        on_demand_per_gpu_hour: h.on_demand,
        floor_per_gpu_hour: h.floor,
        current_per_gpu_hour: h.current,
        points: h
            .points
            .into_iter()
            .map(|p| SpotPoint { at: rfc3339(p.effective_from), price_per_gpu_hour: p.per_gpu_hour })
            .collect(),
    }))
}

/// Preempt an instance as the market would (operator): a notice now, SIGTERM at its deadline.
#[utoipa::path(post, path = "/v1/admin/instances/{id}/preempt", tag = "market", params(("id" = String, Path)),
    request_body = PreemptRequest,
    responses((status = 200, body = Instance), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn preempt(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PreemptRequest>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(convert::instance(app.simulate_preemption(&p, &id, req.notice_seconds).await?, &app.config.public_url)))
}

pub fn job(v: JobView) -> Job {
    let restarts = v.restarts();
    let cost = v.attempts.iter().fold(Money::ZERO, |a, (_, c, _)| Money(a.0 + c.0));
    let history: Vec<JobAttempt> = v
        .attempts
        .into_iter()
        .map(|(i, cost, seconds)| JobAttempt {
            attempt: i.sale.job.as_ref().map_or(0, |(_, a)| *a),
            resumed_from: i.sale.env.iter().find(|(k, _)| k == "GPUCLOUD_RESUME_FROM").map(|(_, v)| v.clone()),
            instance: i.id.to_string(),
            tier: i.sale.tier.into(),
            gpu: i.model.to_string(),
            region: i.region.map(|r| r.to_string()),
            state: i.state.into(),
            exit_code: i.exit_code,
            reason: i
                .status_reason
                .or(i.notice.map(|n| format!("preemption notice: {}", n.reason)))
                .or(i.pending_reason.filter(|_| i.state == gpucloud_model::InstanceState::Pending)),
            created_at: rfc3339(i.created_at),
            cost,
            billed_seconds: seconds,
        })
        .collect();
    // A running job whose current attempt waits for GPUs is pending, and says why.
    let latest = history.iter().max_by_key(|a| a.attempt);
    let waiting = v.job.state == gpucloud_store::JobState::Running
        && latest.is_some_and(|a| a.state == gpucloud_api::InstanceState::Pending);
    let (state, reason) = match latest {
        Some(a) if waiting => (
            gpucloud_api::JobState::Pending,
            Some(format!("attempt {} waits for GPUs: {}", a.attempt, a.reason.as_deref().unwrap_or("not placed yet"))),
        ),
        _ => (
            match v.job.state {
                gpucloud_store::JobState::Running => gpucloud_api::JobState::Running,
                gpucloud_store::JobState::Succeeded => gpucloud_api::JobState::Succeeded,
                gpucloud_store::JobState::Failed => gpucloud_api::JobState::Failed,
                gpucloud_store::JobState::Cancelled => gpucloud_api::JobState::Cancelled,
            },
            v.job.reason,
        ),
    };
    Job {
        id: v.job.id.to_string(),
        name: v.job.name,
        state,
        attempts: v.job.attempts,
        restarts,
        checkpoint: v.job.checkpoint,
        reason,
        spec: v.spec,
        history,
        cost,
        created_at: rfc3339(v.job.created_at),
        updated_at: rfc3339(v.job.updated_at),
    }
}

/// Run a managed job: relaunched after each preemption or node loss from its latest checkpoint.
#[utoipa::path(post, path = "/v1/jobs", tag = "market", request_body = CreateJobRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe creation")),
    responses((status = 201, body = Job), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn create_job(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateJobRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let created = app.create_job(&p, req, idempotency::key_of(&headers)).await?;
    let view = app.job_view(created).await?;
    Ok((StatusCode::CREATED, Json(job(view))))
}

/// The caller's jobs, oldest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "market", responses((status = 200, body = JobList)), security(("bearer" = [])))]
pub async fn list_jobs(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<JobList>, ApiError> {
    Ok(Json(JobList { jobs: app.list_jobs(&p).await?.into_iter().map(job).collect() }))
}

/// One job with each attempt and its cost.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "market", params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show_job(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(job(app.get_job(&p, &id).await?)))
}

/// Cancel a job: its running attempt is terminated.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "market", params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn cancel_job(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(job(app.cancel_job(&p, &id).await?)))
}

fn reservation(r: gpucloud_store::Reservation, now: gpucloud_model::Timestamp) -> gpucloud_api::Reservation {
    gpucloud_api::Reservation {
        id: r.id.to_string(),
        tenant: r.tenant_id.to_string(),
        gpu: r.model.to_string(),
        region: r.region.to_string(),
        gpus: r.gpus,
        starts_at: rfc3339(r.starts_at),
        ends_at: rfc3339(r.ends_at),
        active: r.active_at(now),
        price_per_gpu_hour: r.price,
        lend_share_percent: r.lend_share_pct,
        lent_gpu_hours: r.lent_gpu_ms as f64 / 3_600_000.0,
        lending_revenue: r.lent_revenue,
        credited: r.credited,
        billed_periods: r.billed_periods,
    }
}

/// Sell a reservation (operator). Refused (409) when the pool cannot hold it at every instant.
#[utoipa::path(post, path = "/v1/reservations", tag = "market", request_body = gpucloud_api::CreateReservationRequest,
    responses((status = 201, body = gpucloud_api::Reservation), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_reservation(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<gpucloud_api::CreateReservationRequest>,
) -> Result<(StatusCode, Json<gpucloud_api::Reservation>), ApiError> {
    let time =
        |v: &str, field: &str| parse_time(v).ok_or_else(|| invalid(field, format!("{field} must be an RFC 3339 time")));
    let starts_at = req.starts_at.as_deref().map(|v| time(v, "starts_at")).transpose()?;
    let ends_at = time(&req.ends_at, "ends_at")?;
    let r = app
        .create_reservation(
            &p,
            crate::app::reservations::NewReservation {
                tenant: req.tenant,
                model: req.gpu,
                region: req.region,
                gpus: req.gpus,
                starts_at,
                ends_at,
                price: req.price_per_gpu_hour,
                lend_share_pct: req.lend_share_percent,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(reservation(r, app.now()))))
}

/// Reservations: a tenant's own, or every one for an operator.
#[utoipa::path(get, path = "/v1/reservations", tag = "market",
    responses((status = 200, body = gpucloud_api::ReservationList)), security(("bearer" = [])))]
pub async fn list_reservations(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
) -> Result<Json<gpucloud_api::ReservationList>, ApiError> {
    let now = app.now();
    let reservations = app.list_reservations(&p).await?.into_iter().map(|r| reservation(r, now)).collect();
    Ok(Json(gpucloud_api::ReservationList { reservations }))
}
