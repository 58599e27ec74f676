//! Pure placement of whole-GPU instances. `plan()` reads a snapshot of the fleet and the queue and
//! returns a [`Plan`]: where each instance goes (node, GPU indices, the node generation it saw) and,
//! for those that fit nowhere, why. It never reads a clock or a global RNG, so the same input always
//! gives the same plan; the server applies plans with optimistic concurrency.

mod explain;
mod index;
pub mod share;

pub use explain::{PendingReason, RegionShortfall};

use gpucloud_model::{GpuModel, InstanceId, NodeHealth, NodeId, NodeState, Region, Timestamp};
use rand::RngCore;
use std::collections::HashMap;

/// One GPU of a node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuView {
    pub index: u32,
    pub model: GpuModel,
    pub allocated: bool,
    /// False after a fatal hardware error: never placed on.
    pub healthy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub region: Region,
    /// Bumped by the store on every change to the node's state or allocation.
    pub generation: i64,
    pub state: NodeState,
    pub health: NodeHealth,
    pub gpus: Vec<GpuView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    pub nodes: Vec<NodeView>,
}

/// An instance waiting for GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub instance: InstanceId,
    pub model: GpuModel,
    pub count: u32,
    /// `None`: any region will do.
    pub region: Option<Region>,
}

/// How to choose among nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The node left with the fewest free GPUs of the model: keeps whole nodes free for big gangs.
    #[default]
    BestFit,
    /// The node left with the most free GPUs: spreads load and heat.
    Spread,
    /// Any node that fits, uniformly (a baseline).
    Random,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "best-fit" => Ok(Policy::BestFit),
            "spread" => Ok(Policy::Spread),
            "random" => Ok(Policy::Random),
            other => Err(format!("unknown policy '{other}' (best-fit, spread, random)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub instance: InstanceId,
    pub node: NodeId,
    pub node_generation: i64,
    pub gpus: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub instance: InstanceId,
    pub reason: PendingReason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub unplaced: Vec<Unplaced>,
}

/// Places `pending` in order (first come, first served) on `snapshot`.
///
/// `now` is unused by whole-GPU placement today; it is part of the signature so time-dependent
/// policies (reservations, spot) slot in without changing callers.
pub fn plan(
    snapshot: &ClusterSnapshot,
    pending: &[Pending],
    policy: Policy,
    _now: Timestamp,
    rng: &mut dyn RngCore,
) -> Plan {
    let mut index = index::FreeIndex::build(snapshot);
    let mut out = Plan::default();
    let mut waiting = Vec::new();
    for p in pending {
        match index.choose(p, policy, rng) {
            Some(node_ord) => {
                let gpus = index.take(node_ord, p.model, p.count);
                let node = &snapshot.nodes[node_ord];
                out.placements.push(Placement {
                    instance: p.instance.clone(),
                    node: node.id.clone(),
                    node_generation: node.generation,
                    gpus,
                });
            }
            None => waiting.push(p),
        }
    }
    // Explained against the fleet as this plan leaves it, once per distinct request shape: a long
    // queue of identical requests costs one scan, not one per request.
    let mut reasons: HashMap<(Option<&Region>, GpuModel, u32), PendingReason> = HashMap::new();
    for p in waiting {
        let reason = reasons
            .entry((p.region.as_ref(), p.model, p.count))
            .or_insert_with(|| explain::explain(snapshot, &index, p))
            .clone();
        out.unplaced.push(Unplaced { instance: p.instance.clone(), reason });
    }
    out
}

#[cfg(test)]
mod tests;
