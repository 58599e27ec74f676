//! The background reconcilers on this replica, for operators.

use super::error::ApiError;
use super::extract::Auth;
use crate::app::App;
use crate::app::reconcilers::TaskStatus;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gpucloud_api::{Problem, TaskList};
use std::sync::Arc;

fn task(t: TaskStatus) -> gpucloud_api::TaskStatus {
    gpucloud_api::TaskStatus {
        name: t.name.to_string(),
        what: t.what.to_string(),
        period_ms: t.period.as_millis() as u64,
        leader_only: t.leader_only,
        runs: t.runs,
        failures: t.failures,
        last_started: t.last_started.map(gpucloud_api::rfc3339),
        last_duration_ms: t.last_duration.map(|d| d.as_secs_f64() * 1000.0),
        last_error: t.last_error,
        last_failed_at: t.last_failed_at.map(gpucloud_api::rfc3339),
    }
}

/// Every background reconciler on the replica that answers: its period, how many passes it ran,
/// how long the last took and the last error (operator).
#[utoipa::path(get, path = "/v1/admin/tasks", tag = "admin",
    responses((status = 200, body = TaskList), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<TaskList>, ApiError> {
    let tasks = app.tasks(&p)?.into_iter().map(task).collect();
    let r = app.replica_status();
    Ok(Json(TaskList { replica: r.replica, leader: r.leader, tasks }))
}

/// Run one reconciler now instead of at its next period (operator); 409 on a replica that does
/// not lead when the task runs only on the leader.
#[utoipa::path(post, path = "/v1/admin/tasks/{name}/run", tag = "admin", params(("name" = String, Path)),
    responses((status = 202, body = gpucloud_api::TaskStatus), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn run(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<gpucloud_api::TaskStatus>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(task(app.run_task(&p, &name)?))))
}
