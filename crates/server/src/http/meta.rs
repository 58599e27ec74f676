use super::convert;
use super::error::ApiError;
use super::extract::Auth;
use crate::app::App;
use axum::Json;
use axum::extract::State;
use gpucloud_api::{Capacity, GpuModelInfo, GpuModelList, MigProfileInfo, ModelCapacity, RegionCapacity, WhoAmI};
use gpucloud_model::GpuModel;
use std::sync::Arc;

/// The caller's tenant and key.
#[utoipa::path(get, path = "/v1/whoami", tag = "meta", responses((status = 200, body = WhoAmI)), security(("bearer" = [])))]
pub async fn whoami(Auth(p): Auth) -> Json<WhoAmI> {
    Json(WhoAmI { tenant: convert::tenant(p.tenant), key_prefix: p.key_prefix })
}

/// The GPU models gpucloud sells.
#[utoipa::path(get, path = "/v1/gpu-models", tag = "meta", responses((status = 200, body = GpuModelList)))]
pub async fn gpu_models() -> Json<GpuModelList> {
    let models = GpuModel::ALL
        .iter()
        .map(|m| GpuModelInfo {
            name: m.name().into(),
            memory_mib: m.memory_mib(),
            sliceable: m.sliceable(),
            mig_profiles: m
                .mig_profiles()
                .iter()
                .map(|p| MigProfileInfo { name: p.name.into(), compute_sevenths: p.compute, memory_mib: p.memory_mib })
                .collect(),
        })
        .collect();
    Json(GpuModelList { models })
}

/// Total and free GPUs per region and model.
#[utoipa::path(get, path = "/v1/capacity", tag = "meta", responses((status = 200, body = Capacity)), security(("bearer" = [])))]
pub async fn capacity(State(app): State<Arc<App>>, Auth(_): Auth) -> Result<Json<Capacity>, ApiError> {
    let mut regions: Vec<RegionCapacity> = Vec::new();
    for pool in app.capacity().await? {
        let m = ModelCapacity { model: pool.model.to_string(), nodes: pool.nodes, total: pool.total, free: pool.free };
        match regions.last_mut() {
            Some(r) if r.region == pool.region.as_str() => r.models.push(m),
            _ => regions.push(RegionCapacity { region: pool.region.to_string(), models: vec![m] }),
        }
    }
    Ok(Json(Capacity { regions }))
}

/// The document, built once from the router at start-up.
pub static OPENAPI: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// This OpenAPI 3.1 document, generated from the routes themselves.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi() -> impl axum::response::IntoResponse {
    let body = OPENAPI.get().cloned().unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
}

/// Liveness: 200 while the server runs.
#[utoipa::path(get, path = "/v1/health", tag = "meta", responses((status = 200, body = String)))]
pub async fn health() -> &'static str {
    "ok"
}

/// Which replica answered, and whether it leads the reconcilers (load balancers and the HA test
/// read it; no key needed, it tells nothing about tenants).
#[utoipa::path(get, path = "/v1/replica", tag = "meta", responses((status = 200, body = gpucloud_api::Replica)))]
pub async fn replica(
    axum::extract::State(app): axum::extract::State<std::sync::Arc<crate::app::App>>,
) -> axum::Json<gpucloud_api::Replica> {
    let r = app.replica_status();
    axum::Json(gpucloud_api::Replica {
        replica: r.replica,
        leader: r.leader,
        leader_since: r.since.map(gpucloud_api::rfc3339),
        lease_epoch: r.epoch,
    })
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecommendQuery {
    /// inference-small, training-medium, training-large or rendering.
    workload: String,
    /// The model's parameters: 7B, 70B, 0.5B or a number of billions.
    params: Option<String>,
    /// How long it runs on an A100-40GB (default 1).
    hours: Option<f64>,
}

/// What to rent for a workload: GPU model, count, tier and estimated cost, with the reasoning.
#[utoipa::path(get, path = "/v1/recommend", tag = "meta", params(RecommendQuery),
    responses((status = 200, body = gpucloud_api::Recommendation), (status = 422, body = gpucloud_api::Problem)),
    security(("bearer" = [])))]
pub async fn recommend(
    axum::extract::State(app): axum::extract::State<std::sync::Arc<crate::app::App>>,
    super::extract::Auth(p): super::extract::Auth,
    q: Result<axum::extract::Query<RecommendQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<gpucloud_api::Recommendation>, super::error::ApiError> {
    let invalid = |field: &str, detail: String| {
        super::error::ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            gpucloud_api::ProblemCode::InvalidRequest,
            detail,
        )
        .field(field)
    };
    let axum::extract::Query(q) = q.map_err(|e| {
        super::error::ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            gpucloud_api::ProblemCode::InvalidQuery,
            e.body_text(),
        )
    })?;
    let workload = q.workload.parse().map_err(|e: String| invalid("workload", e))?;
    let params = match q.params.as_deref() {
        None => 1.0,
        Some(p) => p
            .trim()
            .trim_end_matches(['B', 'b'])
            .parse::<f64>()
            .map_err(|_| invalid("params", format!("params '{p}': expected a size such as 7B")))?,
    };
    let r = app.recommend(&p, workload, params, q.hours.unwrap_or(1.0)).await?;
    let choice = |c: gpucloud_billing::recommend::Choice| gpucloud_api::RecommendedChoice {
        gpu: c.gpu,
        region: c.region,
        count: c.count,
        tier: c.tier.into(),
        per_hour: c.per_hour,
        hours: c.hours,
        estimated_cost: c.estimated_cost,
        available: c.available,
    };
    Ok(axum::Json(gpucloud_api::Recommendation {
        workload: q.workload,
        memory_need_gib: r.memory_need_gib,
        best: choice(r.best),
        alternatives: r.alternatives.into_iter().map(choice).collect(),
        reasoning: r.reasoning,
    }))
}
