//! Why an instance fits nowhere, per region, in words a tenant can act on.

use crate::{ClusterSnapshot, Pending};
use gpucloud_model::{GpuModel, NodeHealth, NodeState, Region};
use std::collections::BTreeMap;
use std::fmt;

/// How the nodes of one region that carry the wanted model fall short.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionShortfall {
    pub region: String,
    pub nodes_with_model: u32,
    /// Schedulable, but too few of its GPUs are free.
    pub full: u32,
    /// Would have room but for GPUs kept for other tenants' reservations.
    pub reserved: u32,
    /// Too few GPUs free, some of them out of service after a hardware fault.
    pub failed_gpu: u32,
    /// Room for the time-sliced slice only on GPUs other tenants time-slice (never shared
    /// across tenants unless the node's pool allows it).
    pub other_tenants: u32,
    /// Has fewer GPUs of the model in total than asked: can never fit.
    pub too_small: u32,
    pub cordoned: u32,
    pub draining: u32,
    pub unhealthy: u32,
    pub lost: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReason {
    pub model: GpuModel,
    pub count: u32,
    /// The region asked for, `None` for any.
    pub region: Option<String>,
    /// One entry per region that has the model at all; empty if none has it.
    pub regions: Vec<RegionShortfall>,
    /// What part of one GPU was asked for ("25% / 10240 MiB"), when a slice.
    pub share: Option<String>,
}

/// `has_room(ord)`: node `ord` could take `p` now (after the plan's earlier placements);
/// `beside_others(ord)`: it could, but for other tenants' time-sliced slices on its GPUs.
pub(crate) fn explain(
    snapshot: &ClusterSnapshot,
    has_room: &dyn Fn(usize) -> bool,
    beside_others: &dyn Fn(usize) -> bool,
    p: &Pending,
) -> PendingReason {
    let mut per_region: BTreeMap<&Region, RegionShortfall> = BTreeMap::new();
    for (ord, node) in snapshot.nodes.iter().enumerate() {
        if p.region.as_ref().is_some_and(|r| *r != node.region) || p.node.as_ref().is_some_and(|n| *n != node.id) {
            continue;
        }
        let total = node.gpus.iter().filter(|g| g.model == p.model).count() as u32;
        if total == 0 {
            continue;
        }
        let s = per_region
            .entry(&node.region)
            .or_insert_with(|| RegionShortfall { region: node.region.to_string(), ..Default::default() });
        s.nodes_with_model += 1;
        if node.health == NodeHealth::Lost {
            s.lost += 1;
        } else if node.health == NodeHealth::Unhealthy {
            s.unhealthy += 1;
        } else if node.state == NodeState::Cordoned {
            s.cordoned += 1;
        } else if node.state == NodeState::Draining {
            s.draining += 1;
        } else if total < p.count {
            s.too_small += 1;
        } else if !has_room(ord) {
            let of_model = || node.gpus.iter().filter(|g| g.model == p.model);
            if beside_others(ord) {
                s.other_tenants += 1;
            } else if of_model().any(|g| g.reserved) {
                s.reserved += 1;
            } else if of_model().any(|g| !g.healthy) {
                s.failed_gpu += 1;
            } else {
                s.full += 1;
            }
        }
    }
    PendingReason {
        model: p.model,
        count: p.count,
        region: p.region.as_ref().map(|r| r.to_string()),
        regions: per_region.into_values().collect(),
        share: p.share.as_ref().map(|s| s.describe()),
    }
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return f.write_str("an instance needs at least 1 GPU");
        }
        if self.regions.is_empty() {
            let place = self.region.as_deref().map_or("any region".to_string(), |r| r.to_string());
            return write!(f, "no node in {place} has {} GPUs", self.model);
        }
        for (i, r) in self.regions.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match &self.share {
                Some(share) => write!(f, "no {} in {} has {share} free", self.model, r.region)?,
                None => write!(f, "no node in {} has {} free {}", r.region, self.count, self.model)?,
            }
            let parts: Vec<String> = [
                (r.full, "full"),
                (r.reserved, "reserved"),
                (r.failed_gpu, "with a failed GPU"),
                (r.other_tenants, "time-shared by other tenants"),
                (r.too_small, "too small"),
                (r.cordoned, "cordoned"),
                (r.draining, "draining"),
                (r.unhealthy, "unhealthy"),
                (r.lost, "lost"),
            ]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            if !parts.is_empty() {
                write!(f, ": {}", parts.join(", "))?;
            }
        }
        Ok(())
    }
}
