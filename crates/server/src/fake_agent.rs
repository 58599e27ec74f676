//! A node agent without hardware for dev mode, tests and demos. Each beat is the node agent's
//! own step (`gpucloud_node::runtime::Reconciler`) over the fake runtime and fake GPUs: the same
//! decisions of what to start, stop, report and forget as a real agent makes. Only the carrier
//! differs: its reports go through the same checks as an HTTP agent's (`app::observed`), then
//! straight to [`AgentApi`] instead of over the network.

use crate::app::{AgentApi, AgentReport};
use gpucloud_model::NodeId;
use gpucloud_node::gpu::{FakeGpus, GpuBackend, GpuInfo};
use gpucloud_node::runtime::{FakeRuntime, Reconciler, Runtime};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn run(api: Arc<dyn AgentApi>, node: NodeId, gpus: Vec<GpuInfo>, interval: Duration) {
    let mut backend = FakeGpus::from_gpus(gpus);
    let mut runtime = FakeRuntime::new();
    let mut reconciler = Reconciler::default();
    let mut last_reading = Instant::now();
    let mut start = |rt: &mut dyn Runtime, w: &gpucloud_api::AgentWorkload| rt.start(w, "", "", &[]);
    loop {
        let sent = reconciler.report(&mut runtime);
        let readings = backend.telemetry(&runtime.gpu_load(), last_reading.elapsed());
        last_reading = Instant::now();
        let mut changed = false;
        let beat = match crate::app::observed(sent.clone()) {
            Ok(seen) => Some(AgentReport {
                node: node.clone(),
                epoch: None,
                seq: None,
                instances: seen.instances,
                gpus: readings,
                checkpoints: seen.checkpoints,
                ports: seen.ports,
                metrics: Vec::new(),
                preparing: seen.preparing,
                published: seen.published,
            }),
            Err(e) => {
                tracing::error!(node = %node, error = %e, "fake agent's report refused");
                None
            }
        };
        if let Some(beat) = beat {
            match api.heartbeat(beat).await {
                Ok(desired) => changed = reconciler.apply(&mut runtime, &sent, &desired, &mut start).changed,
                // The node is gone or is now its registered agent's: this one has nothing to drive.
                Err(e @ (crate::app::AppError::Fenced(_) | crate::app::AppError::NotFound { kind: "node", .. })) => {
                    tracing::info!(node = %node, reason = %e, "fake agent stops");
                    return;
                }
                Err(e) => tracing::warn!(node = %node, error = %e, "fake agent heartbeat failed"),
            }
        }
        // Report a change at once rather than a full interval later.
        if !changed {
            tokio::time::sleep(interval).await;
        }
    }
}
