use super::convert;
use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gpucloud_api::{CreateNodeRequest, GpuFaultRequest, Node, NodeList, Problem};
use gpucloud_model::NodeState;
use std::sync::Arc;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NodeQuery {
    /// Only nodes with this label, as `key=value` (or `key` for any value).
    pub label: Option<String>,
}

/// All nodes with their GPUs and what holds each (operator).
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(NodeQuery),
    responses((status = 200, body = NodeList), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    q: Result<Query<NodeQuery>, QueryRejection>,
) -> Result<Json<NodeList>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text()))?;
    let readings = app.fleet_readings().await?;
    let nodes = app.list_nodes(&p).await?;
    let wanted = q.label.as_deref().map(|l| l.split_once('=').map_or((l, None), |(k, v)| (k, Some(v))));
    let nodes = nodes
        .into_iter()
        .filter(|n| wanted.is_none_or(|(k, v)| n.labels.get(k).is_some_and(|have| v.is_none_or(|v| have == v))))
        .map(|n| {
            let r = readings.get(&n.id).map(|(_, g)| g.as_slice());
            convert::node_with(n, r)
        })
        .collect();
    Ok(Json(NodeList { nodes }))
}

/// Register a node (operator). Its GPUs take work once its agent heartbeats.
#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", request_body = CreateNodeRequest,
    responses((status = 201, body = Node), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn add(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateNodeRequest>,
) -> Result<(StatusCode, Json<Node>), ApiError> {
    let gpus: Vec<_> = req.gpus.iter().map(|g| (g.model, g.count)).collect();
    let node = app.add_node(Some(&p), &req.name, req.region, &gpus).await?;
    Ok((StatusCode::CREATED, Json(convert::node(node))))
}

#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = Node), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show(State(app): State<Arc<App>>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<Node>, ApiError> {
    let n = app.get_node(&p, &id).await?;
    let readings = app.fleet_readings().await?;
    let r = readings.get(&n.id).map(|(_, g)| g.as_slice());
    Ok(Json(convert::node_with(n, r)))
}

async fn set(app: &App, p: &crate::app::Principal, id: &str, state: NodeState) -> Result<Json<Node>, ApiError> {
    Ok(Json(convert::node(app.set_node_state(p, id, state).await?)))
}

/// Cordon: keep what runs, place nothing new.
#[utoipa::path(post, path = "/v1/nodes/{id}/cordon", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = Node), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn cordon(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    set(&app, &p, &id, NodeState::Cordoned).await
}

/// Uncordon: accept new instances again.
#[utoipa::path(post, path = "/v1/nodes/{id}/uncordon", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = Node), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn uncordon(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    set(&app, &p, &id, NodeState::Ready).await
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DrainQuery {
    /// Stop every instance now (each waits pending for room elsewhere) rather than moving each
    /// once another node has room for it.
    force: Option<bool>,
    /// Move each instance once there is room, but stop what is still there this many seconds
    /// from now (1 to 2592000, 30 days), as `force` would.
    deadline_seconds: Option<u64>,
}

/// Drain: place nothing new, and move each instance elsewhere once another node has room for it
/// (one that must wait says so in its `reason`); `force=true` stops them all now, and
/// `deadline_seconds=N` stops what is still there N seconds from now.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "nodes", params(("id" = String, Path), DrainQuery),
    responses((status = 200, body = Node), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn drain(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    q: Result<Query<DrainQuery>, QueryRejection>,
) -> Result<Json<Node>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text()))?;
    let force = q.force.unwrap_or(false);
    let deadline = match q.deadline_seconds {
        Some(_) if force => {
            return Err(crate::app::AppError::invalid(
                "deadline_seconds",
                "a forced drain stops everything now: give force or deadline_seconds, not both",
            )
            .into());
        }
        Some(s) if !(1..=2_592_000).contains(&s) => {
            return Err(crate::app::AppError::invalid(
                "deadline_seconds",
                format!("deadline_seconds is 1 to 2592000 (30 days), got {s}"),
            )
            .into());
        }
        s => s.map(std::time::Duration::from_secs),
    };
    Ok(Json(convert::node(app.set_node_state_with(&p, &id, NodeState::Draining, force, deadline).await?)))
}

fn gpu_index(index: &str) -> Result<u32, ApiError> {
    index.parse().map_err(|_| {
        ApiError::from(crate::app::AppError::invalid("index", format!("'{index}' is not a GPU index (0, 1, ...)")))
    })
}

/// Put a failed GPU back in service (operator): refused (409) unless the node's agent is
/// heartbeating and its latest reading of the GPU shows no fault.
#[utoipa::path(post, path = "/v1/nodes/{id}/gpus/{index}/return", tag = "nodes",
    params(("id" = String, Path), ("index" = u32, Path)),
    responses((status = 200, body = Node), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn return_gpu(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path((id, index)): Path<(String, String)>,
) -> Result<Json<Node>, ApiError> {
    let index = gpu_index(&index)?;
    let n = app.return_gpu(&p, &id, index).await?;
    let readings = app.fleet_readings().await?;
    Ok(Json(convert::node_with(n.clone(), readings.get(&n.id).map(|(_, g)| g.as_slice()))))
}

/// Make a GPU fail as if its agent had reported a fatal XID (operator; for testing): it leaves
/// service and what runs on it gets a notice and is stopped at the deadline.
#[utoipa::path(post, path = "/v1/admin/nodes/{id}/gpus/{index}/fault", tag = "nodes",
    params(("id" = String, Path), ("index" = u32, Path)), request_body = GpuFaultRequest,
    responses((status = 200, body = Node), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn simulate_gpu_fault(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path((id, index)): Path<(String, String)>,
    ApiJson(req): ApiJson<GpuFaultRequest>,
) -> Result<Json<Node>, ApiError> {
    let index = gpu_index(&index)?;
    Ok(Json(convert::node(app.simulate_gpu_fault(&p, &id, index, req.xid.unwrap_or(79)).await?)))
}
