//! Warm pools: create, list, delete, and claim an instance from one.

use super::convert;
use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use crate::app::pools::NewPool;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gpucloud_api::{ClaimRequest, Claimed, CreatePoolRequest, PoolList, PoolMember, Problem, WarmPool};
use std::sync::Arc;

fn view(p: gpucloud_store::WarmPool, members: Vec<gpucloud_store::Instance>) -> WarmPool {
    WarmPool {
        image: p.workload.image.clone(),
        env: p.workload.env.iter().cloned().collect(),
        ports: p.workload.ports.iter().map(|p| p.to_string()).collect(),
        id: p.id.to_string(),
        project: p.project.to_string(),
        name: p.name,
        gpu: p.model.to_string(),
        region: p.region.map(|r| r.to_string()),
        count: p.count,
        command: p.command,
        size: p.size,
        ready: members.iter().filter(|m| m.state == gpucloud_model::InstanceState::Running).count() as u32,
        members: members
            .into_iter()
            .map(|m| PoolMember { instance: m.id.to_string(), state: m.state.into() })
            .collect(),
        schedule: p.schedule,
    }
}

/// Create a warm pool: `size` instances of the template kept started, billed at the warm rate.
#[utoipa::path(post, path = "/v1/pools", tag = "pools", request_body = CreatePoolRequest,
    responses((status = 201, body = WarmPool), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreatePoolRequest>,
) -> Result<(StatusCode, Json<WarmPool>), ApiError> {
    let (pool, members) = app
        .create_pool(
            &p,
            NewPool {
                name: req.name,
                model: req.gpu,
                region: req.region,
                count: req.count,
                command: req.command,
                size: req.size,
                image: req.image,
                env: req.env,
                secrets: req.secrets,
                ports: req.ports,
                project: req.project,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view(pool, members))))
}

/// The caller's warm pools.
#[utoipa::path(get, path = "/v1/pools", tag = "pools", responses((status = 200, body = PoolList)), security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<PoolList>, ApiError> {
    let pools = app.list_pools(&p).await?.into_iter().map(|(p, m)| view(p, m)).collect();
    Ok(Json(PoolList { pools }))
}

/// Delete a pool: what it holds is terminated.
#[utoipa::path(delete, path = "/v1/pools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_pool(&p, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take an instance from the pool: one already running when there is one (billed on-demand from
/// now; the pool refills), else a cold one of the template.
#[utoipa::path(post, path = "/v1/pools/{name}/claim", tag = "pools", params(("name" = String, Path)),
    request_body = ClaimRequest,
    responses((status = 201, body = Claimed), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn claim(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<(StatusCode, Json<Claimed>), ApiError> {
    let (inst, warm) = app.claim_from_pool(&p, &name, req.name).await?;
    Ok((StatusCode::CREATED, Json(Claimed { warm, instance: convert::instance(inst, &app.config.public_url) })))
}

/// Set a pool's size, or its size by time of day (warm before the market opens).
#[utoipa::path(post, path = "/v1/pools/{name}/size", tag = "pools", params(("name" = String, Path)),
    request_body = gpucloud_api::PoolSizeRequest,
    responses((status = 200, body = WarmPool), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn size(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<gpucloud_api::PoolSizeRequest>,
) -> Result<Json<WarmPool>, ApiError> {
    let (pool, members) = app.set_pool_size(&p, &name, req.size, req.schedule, req.utc_offset).await?;
    Ok(Json(view(pool, members)))
}
