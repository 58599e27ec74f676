//! A node agent without hardware: it "runs" a workload by remembering it and reporting it
//! running, stops it when asked, and reports plausible GPU readings from the agent's fake
//! backend. First-class code for dev mode, tests and demos; it talks to the control plane only
//! through [`AgentApi`], as a real agent does.

use crate::app::{AgentApi, AgentReport, Desired};
use gpucloud_model::{AgentObservation, InstanceId, NodeId};
use gpucloud_node::gpu::{FakeGpus, GpuBackend, GpuInfo};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn run(api: Arc<dyn AgentApi>, node: NodeId, gpus: Vec<GpuInfo>, interval: Duration) {
    let mut backend = FakeGpus::from_gpus(gpus);
    let mut last_reading = Instant::now();
    // What the agent reports on its next beat, and the GPUs its running workloads hold.
    let mut workloads: BTreeMap<InstanceId, AgentObservation> = BTreeMap::new();
    let mut busy: Vec<u32> = Vec::new();
    loop {
        let readings = backend
            // No processes here: a workload reads as a busy one.
            .telemetry(&busy.iter().map(|g| (*g, 0.95)).collect::<Vec<_>>(), last_reading.elapsed());
        last_reading = Instant::now();
        let report = AgentReport {
            node: node.clone(),
            epoch: None,
            instances: workloads.iter().map(|(k, v)| (k.clone(), *v, None)).collect(),
            gpus: readings,
            checkpoints: Vec::new(),
            ports: Vec::new(),
            metrics: Vec::new(),
            preparing: Vec::new(),
            published: Vec::new(),
        };
        let mut changed = false;
        match api.heartbeat(report).await {
            Ok(desired) => {
                // A stop, once reported, is the server's to act on.
                workloads.retain(|_, seen| *seen == AgentObservation::Running);
                let desired = crate::app::typed(&desired);
                let wanted: BTreeMap<_, _> = desired.iter().map(|(id, d)| (id, d.desired)).collect();
                for (id, seen) in workloads.iter_mut() {
                    if wanted.get(id) != Some(&Desired::Run) {
                        *seen = AgentObservation::Stopped { exit_code: None };
                        changed = true;
                    }
                }
                for (id, d) in &desired {
                    match d.desired {
                        Desired::Run if !workloads.contains_key(id) => {
                            workloads.insert(id.clone(), AgentObservation::Running);
                            changed = true;
                        }
                        // Asked to stop something it no longer runs (a report lost in transit):
                        // say so again on the next regular beat.
                        Desired::Stop => {
                            workloads.entry(id.clone()).or_insert(AgentObservation::Stopped { exit_code: None });
                        }
                        Desired::Run => {}
                    }
                }
                busy = desired
                    .iter()
                    .filter(|(_, d)| d.desired == Desired::Run)
                    .flat_map(|(_, d)| d.gpus.iter().copied())
                    .collect();
            }
            Err(e) => tracing::warn!(node = %node, error = %e, "fake agent heartbeat failed"),
        }
        // Report a change at once rather than a full interval later.
        if !changed {
            tokio::time::sleep(interval).await;
        }
    }
}
