//! Free-GPU index: for each (region, model), the schedulable nodes ordered by free count, so a
//! best-fit choice is one ordered-set lookup instead of a scan of the fleet.

use crate::{ClusterSnapshot, Pending, Policy};
use gpucloud_model::{GpuModel, NodeHealth, Region};
use rand::RngCore;
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub(crate) struct FreeIndex<'a> {
    /// (region, model) -> {(free GPUs of that model, node rank)}. A node's rank is its place in
    /// id order, so ties break the same way whatever order the store listed the nodes in.
    by_pool: BTreeMap<(&'a Region, GpuModel), BTreeSet<(u32, usize)>>,
    /// (node rank, model) -> free GPU indices, ascending.
    free: HashMap<(usize, GpuModel), Vec<u32>>,
    /// rank -> region.
    regions: Vec<&'a Region>,
    /// rank -> position in the snapshot, and back.
    ord_of: Vec<usize>,
    rank_of: Vec<usize>,
}

impl<'a> FreeIndex<'a> {
    pub(crate) fn build(snapshot: &'a ClusterSnapshot) -> FreeIndex<'a> {
        let mut free: HashMap<(usize, GpuModel), Vec<u32>> = HashMap::new();
        let mut by_pool: BTreeMap<(&Region, GpuModel), BTreeSet<(u32, usize)>> = BTreeMap::new();
        let mut ord_of: Vec<usize> = (0..snapshot.nodes.len()).collect();
        ord_of.sort_by(|&a, &b| snapshot.nodes[a].id.cmp(&snapshot.nodes[b].id));
        let mut rank_of = vec![0; ord_of.len()];
        for (rank, &ord) in ord_of.iter().enumerate() {
            rank_of[ord] = rank;
            let node = &snapshot.nodes[ord];
            if !schedulable(node) {
                continue;
            }
            for gpu in node.gpus.iter().filter(|g| !g.allocated && g.healthy && g.slice_milli == 0) {
                free.entry((rank, gpu.model)).or_default().push(gpu.index);
            }
        }
        let regions: Vec<&Region> = ord_of.iter().map(|&o| &snapshot.nodes[o].region).collect();
        for ((rank, model), idx) in free.iter_mut() {
            idx.sort_unstable();
            idx.dedup();
            by_pool.entry((regions[*rank], *model)).or_default().insert((idx.len() as u32, *rank));
        }
        FreeIndex { by_pool, free, regions, ord_of, rank_of }
    }

    /// The node ordinal to place `p` on, if any fits.
    pub(crate) fn choose(&self, p: &Pending, policy: Policy, rng: &mut dyn RngCore) -> Option<usize> {
        if p.count == 0 {
            return None;
        }
        let pools = self
            .by_pool
            .iter()
            .filter(|((region, model), _)| *model == p.model && p.region.as_ref().is_none_or(|r| r == *region))
            .map(|(_, set)| set);
        let lo = (p.count, 0usize);
        match policy {
            // Score = (free after placement, node ordinal); ordinals follow node ids.
            Policy::BestFit => {
                pools.filter_map(|s| s.range(lo..).next().copied()).min().map(|(_, rank)| self.ord_of[rank])
            }
            Policy::Spread => pools
                .filter_map(|s| s.iter().next_back().copied().filter(|(f, _)| *f >= p.count))
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|(_, rank)| self.ord_of[rank]),
            // Only the three indexed policies reach here (`Policy::indexed`).
            _ => {
                let fits: Vec<usize> = pools.flat_map(|s| s.range(lo..).map(|(_, n)| *n)).collect();
                if fits.is_empty() {
                    None
                } else {
                    Some(self.ord_of[fits[(rng.next_u64() % fits.len() as u64) as usize]])
                }
            }
        }
    }

    /// Takes the `count` lowest free GPU indices of `model` on node `ord`.
    pub(crate) fn take(&mut self, ord: usize, model: GpuModel, count: u32) -> Vec<u32> {
        let rank = self.rank_of[ord];
        let idx = self.free.get_mut(&(rank, model)).expect("chosen node has the model");
        let before = idx.len() as u32;
        let taken: Vec<u32> = idx.drain(..count as usize).collect();
        let after = idx.len() as u32;
        let set = self.by_pool.get_mut(&(self.regions[rank], model)).expect("node is indexed");
        set.remove(&(before, rank));
        set.insert((after, rank));
        taken
    }

    /// Free GPUs of `model` on node `ord` right now (after earlier placements of this plan).
    pub(crate) fn free_on(&self, ord: usize, model: GpuModel) -> u32 {
        self.free.get(&(self.rank_of[ord], model)).map_or(0, |v| v.len() as u32)
    }
}

pub(crate) fn schedulable(node: &crate::NodeView) -> bool {
    node.state.accepts_new_instances() && node.health == NodeHealth::Healthy
}
