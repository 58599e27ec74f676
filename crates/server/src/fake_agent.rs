//! A node agent without hardware: it "runs" a workload by remembering it and reporting it
//! running, and stops it when asked. First-class code for dev mode, tests and demos; it talks to
//! the control plane only through [`AgentApi`], as a real agent does.

use crate::app::{AgentApi, AgentReport, Desired};
use gpucloud_model::{AgentObservation, InstanceId, NodeId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(api: Arc<dyn AgentApi>, node: NodeId, interval: Duration) {
    // What the agent reports on its next beat.
    let mut workloads: BTreeMap<InstanceId, AgentObservation> = BTreeMap::new();
    loop {
        let report = AgentReport {
            node: node.clone(),
            epoch: None,
            instances: workloads.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        };
        let mut changed = false;
        match api.heartbeat(report).await {
            Ok(desired) => {
                // A stop, once reported, is the server's to act on.
                workloads.retain(|_, seen| *seen == AgentObservation::Running);
                let wanted: BTreeMap<_, _> = desired.iter().map(|d| (&d.id, d.desired)).collect();
                for (id, seen) in workloads.iter_mut() {
                    if wanted.get(id) != Some(&Desired::Run) {
                        *seen = AgentObservation::Stopped;
                        changed = true;
                    }
                }
                for d in &desired {
                    match d.desired {
                        Desired::Run if !workloads.contains_key(&d.id) => {
                            workloads.insert(d.id.clone(), AgentObservation::Running);
                            changed = true;
                        }
                        // Asked to stop something it no longer runs (a report lost in transit):
                        // say so again on the next regular beat.
                        Desired::Stop => {
                            workloads.entry(d.id.clone()).or_insert(AgentObservation::Stopped);
                        }
                        Desired::Run => {}
                    }
                }
            }
            Err(e) => tracing::warn!(node = %node, error = %e, "fake agent heartbeat failed"),
        }
        // Report a change at once rather than a full interval later.
        if !changed {
            tokio::time::sleep(interval).await;
        }
    }
}
