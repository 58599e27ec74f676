//! Pure placement of whole GPUs and GPU slices. `plan()` reads a snapshot of the fleet and the queue
//! and returns a [`Plan`]: where each instance goes (node, GPU indices, the node generation it saw)
//! and, for those that fit nowhere, why. It never reads a clock or a global RNG, so the same input
//! always gives the same plan; the server applies plans with optimistic concurrency.
//!
//! Two engines: whole-GPU queues under best-fit/spread/random use an ordered free-GPU index (one
//! lookup per placement); everything else (slices, the fragmentation-aware policies) goes through
//! [`share::Placer`], the same code the trace simulator measures.

mod explain;
mod index;
pub mod order;
pub mod pass;
pub mod preempt;
pub mod share;
mod slices;

pub use explain::{PendingReason, RegionShortfall};

use gpucloud_model::{GpuModel, GpuShare, InstanceId, NodeHealth, NodeId, NodeState, Region, TenantId, Timestamp};
use rand::RngCore;
use std::collections::HashMap;

/// One GPU of a node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuView {
    pub index: u32,
    pub model: GpuModel,
    /// Held whole by one instance.
    pub allocated: bool,
    /// False after a fatal hardware error: never placed on.
    pub healthy: bool,
    /// Compute (thousandths) and memory held by slices; 0 when none.
    pub slice_milli: u32,
    pub slice_mem_mib: u64,
    /// The slices on it are MIG instances.
    pub mig: bool,
    /// The tenant whose time-sliced slices are on it (time slicing has no memory or fault
    /// isolation, so one tenant's only, unless the node's pool allows sharing).
    pub slice_tenant: Option<TenantId>,
    /// Free, but kept for a reservation's owner: shown as taken to other work (`allocated` is
    /// set too), and said as "reserved" when that is why something waits.
    pub reserved: bool,
}

impl GpuView {
    /// A GPU nobody holds any of.
    pub fn free(index: u32, model: GpuModel) -> GpuView {
        GpuView {
            index,
            model,
            allocated: false,
            healthy: true,
            slice_milli: 0,
            slice_mem_mib: 0,
            mig: false,
            slice_tenant: None,
            reserved: false,
        }
    }
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
    /// Its operator lets tenants share its GPUs by time slicing (node label
    /// `time-slicing=shared`).
    pub open_time_slicing: bool,
    /// Container images already on the node (public ones: a private image is pulled again
    /// for every workload, so holding it saves nothing).
    pub images: Vec<String>,
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
    /// Part of one GPU (`count` is then 1); `None`: `count` whole GPUs.
    pub share: Option<GpuShare>,
    /// Whose request it is (`None`: a tenant-less one, as in traces).
    pub tenant: Option<TenantId>,
    /// Only this node will do (its volume lives there); `None`: any node.
    pub node: Option<NodeId>,
    /// The container image it runs in: among nodes the policy finds equally good, one that
    /// holds it already is chosen (no pull).
    pub image: Option<String>,
}

/// How to choose among nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The node left with the fewest free GPUs of the model: keeps whole nodes free for big gangs.
    BestFit,
    /// The node left with the most free GPUs: spreads load and heat.
    Spread,
    /// Any node that fits, uniformly (a baseline).
    Random,
    /// The FGD paper's baselines, for comparison on a real fleet.
    DotProduct,
    GpuClustering,
    GpuPacking,
    /// Fragmentation gradient descent (ATC'23): the placement that fragments the fleet least for
    /// the workload in the queue and on the nodes.
    Fgd,
    /// FGD, and among tied nodes one already in use. The best on every trace we have
    /// (docs/benchmarks.md), so the default.
    #[default]
    FgdPack,
    /// FgdPack, and GPUs a placement would strand by using up their node's CPU cost points.
    /// The same as fgd-pack while instances carry no CPU request (today's server).
    FgdCpu,
}

impl Policy {
    pub const NAMES: &str =
        "fgd-pack, fgd-cpu, fgd, best-fit, spread, random, dot-product, gpu-clustering, gpu-packing";

    fn share(self) -> share::SharePolicy {
        use share::SharePolicy as S;
        match self {
            Policy::BestFit => S::BestFit,
            Policy::Spread => S::Spread,
            Policy::Random => S::Random,
            Policy::DotProduct => S::DotProd,
            Policy::GpuClustering => S::GpuClustering,
            Policy::GpuPacking => S::GpuPacking,
            Policy::Fgd => S::Fgd,
            Policy::FgdPack => S::FgdPack,
            Policy::FgdCpu => S::FgdCpu,
        }
    }

    /// Whole-GPU queues under this policy can use the free-GPU index.
    fn indexed(self) -> bool {
        matches!(self, Policy::BestFit | Policy::Spread | Policy::Random)
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        Ok(match s {
            "best-fit" => Policy::BestFit,
            "spread" => Policy::Spread,
            "random" => Policy::Random,
            "dot-product" => Policy::DotProduct,
            "gpu-clustering" => Policy::GpuClustering,
            "gpu-packing" => Policy::GpuPacking,
            "fgd" => Policy::Fgd,
            "fgd-pack" => Policy::FgdPack,
            "fgd-cpu" => Policy::FgdCpu,
            other => return Err(format!("unknown policy '{other}' ({})", Policy::NAMES)),
        })
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.share().name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub instance: InstanceId,
    pub node: NodeId,
    pub node_generation: i64,
    pub gpus: Vec<u32>,
    /// The request's image was on the node already, and that chose among equally good nodes.
    pub image_cached: bool,
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

/// How much the placer weighs power against fragmentation (FGD policies): hundredths of a score
/// point per 100 W a placement adds by the `share::node_watts` model, with each model's
/// `GpuModel::watts`. 0: not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PowerWeight(pub u32);

impl PowerWeight {
    /// From score points per 100 W (0 to 1000).
    pub fn from_points(points: f64) -> Result<PowerWeight, String> {
        if !(points.is_finite() && (0.0..=1000.0).contains(&points)) {
            return Err(format!("power weight {points}: expected score points per 100 W, 0 to 1000"));
        }
        Ok(PowerWeight((points * 100.0).round() as u32))
    }

    fn points_per_watt(self) -> f64 {
        self.0 as f64 / 100.0 / 100.0
    }

    /// Each catalogue model's draw, by the placer's model ids.
    fn catalogue() -> Vec<Option<share::Watts>> {
        GpuModel::ALL
            .iter()
            .map(|m| {
                let (idle, busy) = m.watts();
                Some(share::Watts { idle: idle as f64, busy: busy as f64 })
            })
            .collect()
    }
}

/// Places `pending` in order (first come, first served) on `snapshot`.
///
/// `now` is unused by whole-GPU placement today; it is part of the signature so time-dependent
/// policies (reservations, spot) slot in without changing callers.
pub fn plan(
    snapshot: &ClusterSnapshot,
    pending: &[Pending],
    policy: Policy,
    now: Timestamp,
    rng: &mut dyn RngCore,
) -> Plan {
    plan_weighing_power(snapshot, pending, policy, PowerWeight::default(), now, rng)
}

/// [`plan`], with power weighed as `power` says (FGD policies only; the others ignore it).
pub fn plan_weighing_power(
    snapshot: &ClusterSnapshot,
    pending: &[Pending],
    policy: Policy,
    power: PowerWeight,
    _now: Timestamp,
    rng: &mut dyn RngCore,
) -> Plan {
    // The index keeps nodes per pool, not per id: requests pinned to a node, or with an image some
    // node holds (a tie-break the index does not keep), take the general engine.
    // Every image some node holds, gathered once: not a scan of the fleet per request.
    let held: std::collections::HashSet<&str> = if pending.iter().any(|p| p.image.is_some()) {
        snapshot.nodes.iter().flat_map(|n| n.images.iter().map(String::as_str)).collect()
    } else {
        Default::default()
    };
    let cached = |p: &Pending| p.image.as_deref().is_some_and(|i| held.contains(i));
    if !policy.indexed() || pending.iter().any(|p| p.share.is_some() || p.node.is_some() || cached(p)) {
        return slices::plan(snapshot, pending, policy.share(), power, rng);
    }
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
                    image_cached: false,
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
            .or_insert_with(|| explain::explain(snapshot, &|ord| index.free_on(ord, p.model) >= p.count, &|_| false, p))
            .clone();
        out.unplaced.push(Unplaced { instance: p.instance.clone(), reason });
    }
    out
}

#[cfg(test)]
mod tests;
