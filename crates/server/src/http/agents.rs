//! The node agent's side of the API: register, heartbeat (report and get desired workloads), ship
//! logs. An agent key speaks for its own node only (`App::agent_node`, `App::may_register`); an
//! operator's own key for any.

use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::{AgentReport, App, AppError};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gpucloud_api::{
    AgentDesired, AgentHeartbeat, AgentLogs, AgentRegistered, InstanceLogs, LogChunk, Problem, RegisterAgentRequest,
    rfc3339,
};
use gpucloud_model::{InstanceId, NodeId};
use serde::Deserialize;
use std::sync::Arc;

fn bad(field: &str, detail: &str) -> ApiError {
    ApiError::from(AppError::Invalid { field: field.to_string(), detail: detail.to_string() })
}

fn node_id(s: &str) -> Result<NodeId, ApiError> {
    NodeId::parse(s).map_err(|_| ApiError::from(AppError::NotFound { kind: "node", id: s.to_string() }))
}

/// Register the node this agent runs on (or take it over again after a restart: next epoch).
#[utoipa::path(post, path = "/v1/agent/register", tag = "agents", request_body = RegisterAgentRequest,
    responses((status = 201, body = AgentRegistered), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn register(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<RegisterAgentRequest>,
) -> Result<(StatusCode, Json<AgentRegistered>), ApiError> {
    let gpus =
        req.gpus.into_iter().map(|g| gpucloud_store::NewGpu { index: g.index, model: g.model, uuid: g.uuid }).collect();
    app.check_agent_runtime(req.runtime)?;
    let node = app.register_agent(&p, &req.name, req.region, gpus, req.address, req.labels).await?;
    let ingress_secret = app.set_ingress(&node.id, req.ingress_port).await?;
    app.set_node_ssh(&node.id, req.ssh_port, req.ssh_host_key.as_deref()).await?;
    let interval = (app.config.heartbeat_grace / 5).as_millis() as u64;
    Ok((
        StatusCode::CREATED,
        Json(AgentRegistered {
            node_id: node.id.to_string(),
            epoch: node.epoch,
            heartbeat_interval_ms: interval,
            ingress_secret,
            stop_after_ms: Some(app.config.agent_stop_after().as_millis() as u64),
        }),
    ))
}

/// The most images an agent may say its node holds.
const MAX_NODE_IMAGES: usize = 512;

/// Report what runs and get what should: the agent's reconcile loop.
#[utoipa::path(post, path = "/v1/agent/heartbeat", tag = "agents", request_body = AgentHeartbeat,
    responses((status = 200, body = AgentDesired), (status = 409, body = Problem, description = "fenced: re-register")),
    security(("bearer" = [])))]
pub async fn heartbeat(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<AgentHeartbeat>,
) -> Result<Json<AgentDesired>, ApiError> {
    // The node as read for the key check serves the beat too: one read of it a beat.
    let current = app.agent_node(&p, &node_id(&req.node_id)?).await?;
    let seen = crate::app::observed(req.instances)?;
    let gpus = req.gpus;
    if req.metrics.len() > 20_000 {
        return Err(bad("metrics", "at most 20000 points a beat"));
    }
    let mut metrics = Vec::with_capacity(req.metrics.len());
    for m in req.metrics {
        let instance = InstanceId::parse(&m.instance).map_err(|e| bad("metrics", &e.to_string()))?;
        if m.name.is_empty() || m.name.len() > 64 || !m.value.is_finite() {
            return Err(bad("metrics", "a metric has a name of 1 to 64 characters and a finite value"));
        }
        metrics.push(gpucloud_store::MetricPoint {
            instance,
            at: gpucloud_model::Timestamp(m.at_ms),
            step: m.step,
            name: m.name,
            value: m.value,
        });
    }
    if req.purged_volumes.len() > 1000 {
        return Err(bad("purged_volumes", "at most 1000 volumes a beat"));
    }
    let purged = req
        .purged_volumes
        .iter()
        .map(|v| gpucloud_model::VolumeId::parse(v).map_err(|e| bad("purged_volumes", &e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let images = match req.images {
        Some(images) if images.len() > MAX_NODE_IMAGES => {
            return Err(bad("images", &format!("at most {MAX_NODE_IMAGES} images a node")));
        }
        Some(images) => {
            for i in &images {
                gpucloud_model::workload::check_image(i).map_err(|e| bad("images", &e))?;
            }
            Some(images)
        }
        None => None,
    };
    let node = node_id(&req.node_id)?;
    let report = AgentReport {
        node: node.clone(),
        epoch: Some(req.epoch),
        seq: req.seq,
        instances: seen.instances,
        gpus,
        checkpoints: seen.checkpoints,
        ports: seen.ports,
        metrics,
        preparing: seen.preparing,
        published: seen.published,
    };
    let desired = app.heartbeat_of(report, Some(current)).await?;
    if let Some(images) = images {
        app.record_node_images(&node, images).await?;
    }
    let purge_volumes = app.volume_purges(&node, &purged).await?.iter().map(|v| v.to_string()).collect();
    let instances = desired;
    Ok(Json(AgentDesired { instances, purge_volumes }))
}

/// Ship a workload's output.
/// A log call's body may be larger than other calls': the agent ships up to 64 KiB of output a
/// chunk, which JSON escaping can grow up to six-fold.
pub const AGENT_LOGS_MAX_BODY: usize = 1 << 20;

#[utoipa::path(post, path = "/v1/agent/logs", tag = "agents", request_body = AgentLogs,
    responses((status = 204), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn logs(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<AgentLogs, AGENT_LOGS_MAX_BODY>,
) -> Result<StatusCode, ApiError> {
    let node = node_id(&req.node_id)?;
    let instance = InstanceId::parse(&req.instance).map_err(|e| bad("instance", &e.to_string()))?;
    if req.chunks.len() > 1000 || req.chunks.iter().any(|c| c.seq < 1) {
        return Err(bad("chunks", "at most 1000 chunks a call, seq from 1"));
    }
    let chunks = req.chunks.into_iter().map(|c| (c.seq, c.data)).collect();
    app.agent_logs(&p, &node, req.epoch, &instance, chunks).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct After {
    /// Return chunks after this seq (0: from the start).
    after: Option<i64>,
}

/// A workload's output (stdout and stderr, interleaved as written). Poll with `after` to follow.
#[utoipa::path(get, path = "/v1/instances/{id}/logs", tag = "instances", params(("id" = String, Path), After),
    responses((status = 200, body = InstanceLogs), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn instance_logs(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    q: Result<Query<After>, QueryRejection>,
) -> Result<Json<InstanceLogs>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text()))?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            gpucloud_api::ProblemCode::InvalidRequest,
            "after is a chunk number, 0 or more",
        )
        .field("after"));
    }
    let chunks = app.instance_logs(&p, &id, after).await?;
    let next_after = chunks.last().map_or(after, |c| c.seq);
    let chunks = chunks.into_iter().map(|c| LogChunk { seq: c.seq, at: rfc3339(c.at), data: c.data }).collect();
    Ok(Json(InstanceLogs { chunks, next_after }))
}
