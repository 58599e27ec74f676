//! Clusters: create, show, resize, delete.

use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use crate::app::clusters::{ClusterView, NewCluster, master_port};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gpucloud_api::{Cluster, ClusterList, ClusterMember, CreateClusterRequest, Problem, ResizeClusterRequest, rfc3339};
use std::sync::Arc;

fn view(v: ClusterView) -> Cluster {
    let c = v.cluster;
    Cluster {
        master_port: master_port(&c.id),
        image: c.workload.image.clone(),
        env: c.workload.env.iter().cloned().collect(),
        ports: c.workload.ports.iter().map(|p| p.to_string()).collect(),
        id: c.id.to_string(),
        name: c.name,
        project: c.project.to_string(),
        gpu: c.model.to_string(),
        region: c.region.map(|r| r.to_string()),
        gpus_per_node: c.gpus_per_node,
        min_nodes: c.min_nodes,
        max_nodes: c.max_nodes,
        nodes: c.target_nodes,
        tier: c.tier.into(),
        state: v.state,
        reason: v.reason,
        members: v
            .members
            .into_iter()
            .map(|m| ClusterMember {
                rank: m.sale.cluster.as_ref().map_or(0, |(_, r)| *r),
                instance: m.id.to_string(),
                state: m.state.into(),
                node: m.node_id.map(|n| n.to_string()),
                pending_reason: m.pending_reason.filter(|_| m.state == gpucloud_model::InstanceState::Pending),
                leaving_at: m.notice.and_then(|n| n.deadline).map(rfc3339),
                endpoint: m.endpoint.filter(|_| m.state == gpucloud_model::InstanceState::Running),
            })
            .collect(),
        replicas_in: c.replicas_in.iter().map(|r| r.to_string()).collect(),
        command: c.command,
        created_at: rfc3339(c.created_at),
        autoscale: c
            .autoscale
            .map(|a| format!("+1 above {}% GPU utilization for {} s, -1 below {}%", a.up_pct, a.for_s, a.down_pct)),
        schedule: c.schedule.map(|s| {
            let h = c.utc_offset_min / 60;
            let m = (c.utc_offset_min % 60).abs();
            format!("{s} (UTC{}{:02}:{m:02})", if c.utc_offset_min < 0 { '-' } else { '+' }, h.abs())
        }),
    }
}

/// Create a cluster of `nodes` members (gpus_per_node GPUs each), resizable between min and max.
#[utoipa::path(post, path = "/v1/clusters", tag = "clusters", request_body = CreateClusterRequest,
    responses((status = 201, body = Cluster), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateClusterRequest>,
) -> Result<(StatusCode, Json<Cluster>), ApiError> {
    let tier = super::instances::tier_or_on_demand(req.tier);
    let v = app
        .create_cluster(
            &p,
            NewCluster {
                name: req.name,
                model: req.gpu,
                region: req.region,
                gpus_per_node: req.gpus_per_node,
                nodes: req.nodes,
                min_nodes: req.min_nodes.unwrap_or(1),
                max_nodes: req.max_nodes.unwrap_or(req.nodes),
                command: req.command,
                tier,
                replicas_in: req.replicas_in.unwrap_or_default(),
                image: req.image,
                env: req.env,
                secrets: req.secrets,
                ports: req.ports,
                project: req.project,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view(v))))
}

/// The caller's clusters.
#[utoipa::path(get, path = "/v1/clusters", tag = "clusters", responses((status = 200, body = ClusterList)),
    security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<ClusterList>, ApiError> {
    Ok(Json(ClusterList { clusters: app.list_clusters(&p).await?.into_iter().map(view).collect() }))
}

/// A cluster (by name or id) and its members by rank.
#[utoipa::path(get, path = "/v1/clusters/{name}", tag = "clusters", params(("name" = String, Path)),
    responses((status = 200, body = Cluster), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> Result<Json<Cluster>, ApiError> {
    Ok(Json(view(app.get_cluster(&p, &name).await?)))
}

/// Resize: new members start together or not at all; leaving members get the stop notice first.
#[utoipa::path(post, path = "/v1/clusters/{name}/resize", tag = "clusters", params(("name" = String, Path)),
    request_body = ResizeClusterRequest,
    responses((status = 200, body = Cluster), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn resize(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ResizeClusterRequest>,
) -> Result<Json<Cluster>, ApiError> {
    Ok(Json(view(app.resize_cluster(&p, &name, req.nodes).await?)))
}

/// Delete a cluster: every member is terminated.
#[utoipa::path(delete, path = "/v1/clusters/{name}", tag = "clusters", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_cluster(&p, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set (or clear) the cluster's size schedule; it is applied at once and follows the clock.
#[utoipa::path(post, path = "/v1/clusters/{name}/schedule", tag = "clusters", params(("name" = String, Path)),
    request_body = gpucloud_api::ClusterScheduleRequest,
    responses((status = 200, body = Cluster), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn schedule(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<gpucloud_api::ClusterScheduleRequest>,
) -> Result<Json<Cluster>, ApiError> {
    Ok(Json(view(app.set_cluster_schedule(&p, &name, req.schedule, req.utc_offset).await?)))
}

/// Set (or with no fields, clear) utilization autoscaling.
#[utoipa::path(post, path = "/v1/clusters/{name}/autoscale", tag = "clusters", params(("name" = String, Path)),
    request_body = gpucloud_api::ClusterAutoscaleRequest,
    responses((status = 200, body = Cluster), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn autoscale(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<gpucloud_api::ClusterAutoscaleRequest>,
) -> Result<Json<Cluster>, ApiError> {
    let policy = match (req.up_percent, req.down_percent, req.for_seconds) {
        (None, None, None) => None,
        (Some(up), Some(down), for_s) => {
            Some(gpucloud_store::Autoscale { up_pct: up, down_pct: down, for_s: for_s.unwrap_or(300) })
        }
        _ => {
            return Err(crate::app::AppError::Invalid {
                field: "up_percent".into(),
                detail: "give up_percent and down_percent (and for_seconds), or nothing to stop autoscaling".into(),
            }
            .into());
        }
    };
    Ok(Json(view(app.set_cluster_autoscale(&p, &name, policy).await?)))
}
