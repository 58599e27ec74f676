//! The contract between the control plane and a node agent: the agent reports what it sees and
//! gets back what should run. The in-process fake agent calls it directly; a real agent will reach
//! the same methods over HTTP.

use super::{App, AppError};
use async_trait::async_trait;
use gpucloud_model::{AgentObservation, InstanceId, InstanceState, NodeId};

#[derive(Debug, Clone)]
pub struct AgentReport {
    pub node: NodeId,
    /// The workloads the agent knows of and what it saw of each.
    pub instances: Vec<(InstanceId, AgentObservation)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Run,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredInstance {
    pub id: InstanceId,
    pub desired: Desired,
    pub gpus: Vec<u32>,
    pub command: String,
}

#[async_trait]
pub trait AgentApi: Send + Sync {
    /// Records the heartbeat, applies the report, and returns the node's desired workloads.
    /// A workload the agent runs that is not in the answer must be stopped.
    async fn heartbeat(&self, report: AgentReport) -> Result<Vec<DesiredInstance>, AppError>;
}

#[async_trait]
impl AgentApi for App {
    async fn heartbeat(&self, report: AgentReport) -> Result<Vec<DesiredInstance>, AppError> {
        let node = &report.node;
        if !self.store.record_heartbeat(node, self.now()).await? {
            return Err(AppError::NotFound { kind: "node", id: node.to_string() });
        }
        for (id, seen) in &report.instances {
            let Some(inst) = self.store.get_instance(None, id).await? else { continue };
            // A report about an instance that has since left this node is stale: ignore it.
            if inst.node_id.as_ref() != Some(node) {
                continue;
            }
            self.observe(inst, *seen).await?;
        }
        let desired = self
            .store
            .instances_on_node(node)
            .await?
            .into_iter()
            .filter(|i| i.state.holds_gpus())
            .map(|i| DesiredInstance {
                desired: if i.state == InstanceState::Stopping { Desired::Stop } else { Desired::Run },
                id: i.id,
                gpus: i.gpus,
                command: i.command,
            })
            .collect();
        Ok(desired)
    }
}
