//! Placement of GPU slices and whole GPUs on a fleet of nodes with CPU, memory and per-GPU free
//! capacity in thousandths of a GPU ("milli-GPU").
//!
//! A [`Placer`] owns the fleet's free capacity and places one [`Ask`] at a time with a
//! [`SharePolicy`]: find the feasible nodes, score each (integers, higher is better), take the
//! top score, break ties by a fixed node priority, then pick the GPU(s) on the winner. The same
//! code serves the production scheduler ([`crate::plan`]) and the trace simulator, so what the
//! simulator measures is what the server does.

mod fgd;

pub use fgd::{Typical, typical_workload};

use rand::{Rng, RngCore};
use std::collections::BTreeSet;

/// One GPU, whole.
pub const MILLI: u32 = 1000;

/// The GPU models a request accepts, one bit per model id; the empty set accepts any model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ModelSet(pub u64);

impl ModelSet {
    pub const ANY: ModelSet = ModelSet(0);

    pub fn only(model: u16) -> ModelSet {
        ModelSet(1u64 << (model % 64))
    }

    pub fn with(self, model: u16) -> ModelSet {
        ModelSet(self.0 | 1u64 << (model % 64))
    }

    pub fn allows(self, model: u16) -> bool {
        self.0 == 0 || self.0 & (1u64 << (model % 64)) != 0
    }
}

/// What one task or instance asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ask {
    pub cpu_milli: u64,
    pub mem_mib: u64,
    /// 0 for a CPU-only task.
    pub num_gpu: u32,
    /// Share of each GPU, 1..=1000. Below 1000 only with `num_gpu == 1` (a slice never spans GPUs).
    pub gpu_milli: u32,
    /// GPU memory of a slice; 0 when memory is not tracked (the trace) or the GPU is whole.
    pub gpu_mem_mib: u64,
    pub models: ModelSet,
    /// A MIG slice: only on GPUs that hold MIG slices or nothing.
    pub mig: bool,
    /// Whose time-sliced slice it is (a tag, 0 for none): it joins only a GPU whose time-sliced
    /// slices are that tenant's, or one in a pool open to sharing.
    pub tenant: u32,
}

impl Ask {
    pub fn whole(num_gpu: u32, models: ModelSet) -> Ask {
        Ask { cpu_milli: 0, mem_mib: 0, num_gpu, gpu_milli: MILLI, gpu_mem_mib: 0, models, mig: false, tenant: 0 }
    }

    /// Milli-GPU this ask holds once placed.
    pub fn demand(&self) -> u64 {
        self.num_gpu as u64 * self.gpu_milli as u64
    }

    /// A fraction of one GPU.
    pub fn is_share(&self) -> bool {
        self.num_gpu == 1 && self.gpu_milli < MILLI
    }
}

/// An ask's tenant tag that joins any tenant's time-sliced GPU: only for explaining why an ask
/// waits (would it fit but for whose slices are there?), never for placing.
pub const ANY_TENANT: u32 = u32::MAX;

/// How a GPU is being shared, so that time-sliced and MIG slices never meet on one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuMode {
    #[default]
    Open,
    /// Time-sliced slices of one tenant (its tag), or of anyone's (0: a pool open to sharing).
    Shared(u32),
    Mig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub free_milli: u32,
    /// Free memory for slices; `u64::MAX` when not tracked.
    pub free_mem_mib: u64,
    pub healthy: bool,
    pub mode: GpuMode,
}

impl Gpu {
    pub fn idle() -> Gpu {
        Gpu { free_milli: MILLI, free_mem_mib: u64::MAX, healthy: true, mode: GpuMode::Open }
    }

    pub fn is_idle(&self) -> bool {
        self.healthy && self.free_milli == MILLI
    }

    fn fits_share(&self, ask: &Ask) -> bool {
        self.healthy
            && self.free_milli >= ask.gpu_milli
            && self.free_mem_mib >= ask.gpu_mem_mib
            && match self.mode {
                GpuMode::Open => true,
                GpuMode::Shared(owner) => !ask.mig && (owner == 0 || owner == ask.tenant || ask.tenant == ANY_TENANT),
                GpuMode::Mig => ask.mig,
            }
    }
}

/// A node's free capacity. All its GPUs are of one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub model: u16,
    pub cpu_free: u64,
    pub mem_free: u64,
    pub gpus: Vec<Gpu>,
    /// Kinds of GPU tasks on the node (GpuClustering): (0 = slices, n = whole n-GPU tasks) -> count.
    kinds: Vec<(u32, u32)>,
    /// Its operator lets tenants share a GPU by time slicing.
    pub open_sharing: bool,
}

impl Node {
    pub fn new(model: u16, cpu_free: u64, mem_free: u64, gpus: Vec<Gpu>) -> Node {
        Node { model, cpu_free, mem_free, gpus, kinds: Vec::new(), open_sharing: false }
    }

    /// Records a GPU task already on the node (the production scheduler rebuilds nodes from the
    /// store each pass).
    pub fn note_task(&mut self, ask: &Ask) {
        if ask.num_gpu > 0 {
            let kind = kind_of(ask);
            match self.kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => self.kinds.push((kind, 1)),
            }
        }
    }

    /// The largest free share of one healthy GPU.
    fn max_free(&self) -> u32 {
        self.gpus.iter().filter(|g| g.healthy).map(|g| g.free_milli).max().unwrap_or(0)
    }

    fn free_milli(&self) -> u64 {
        self.gpus.iter().filter(|g| g.healthy).map(|g| g.free_milli as u64).sum()
    }

    fn idle_count(&self) -> u32 {
        self.gpus.iter().filter(|g| g.is_idle()).count() as u32
    }

    pub fn feasible(&self, ask: &Ask) -> bool {
        if self.cpu_free < ask.cpu_milli || self.mem_free < ask.mem_mib {
            return false;
        }
        if ask.num_gpu == 0 {
            return true;
        }
        if !ask.models.allows(self.model) {
            return false;
        }
        if ask.is_share() { self.gpus.iter().any(|g| g.fits_share(ask)) } else { self.idle_count() >= ask.num_gpu }
    }

    /// The GPUs the default rule takes: the tightest fitting GPU for a slice (lowest index among
    /// equals), the lowest-indexed idle GPUs otherwise.
    fn default_gpus(&self, ask: &Ask) -> Vec<u32> {
        if ask.num_gpu == 0 {
            return Vec::new();
        }
        if ask.is_share() {
            let mut best: Option<(u32, usize)> = None;
            for (i, g) in self.gpus.iter().enumerate() {
                if g.fits_share(ask) && best.is_none_or(|(f, _)| g.free_milli < f) {
                    best = Some((g.free_milli, i));
                }
            }
            return best.map(|(_, i)| vec![i as u32]).unwrap_or_default();
        }
        self.idle_gpus().take(ask.num_gpu as usize).collect()
    }

    fn idle_gpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.gpus.iter().enumerate().filter(|(_, g)| g.is_idle()).map(|(i, _)| i as u32)
    }

    fn apply(&mut self, ask: &Ask, gpus: &[u32]) {
        self.cpu_free -= ask.cpu_milli;
        self.mem_free -= ask.mem_mib;
        for &i in gpus {
            let g = &mut self.gpus[i as usize];
            g.free_milli -= ask.gpu_milli;
            if g.free_mem_mib != u64::MAX {
                g.free_mem_mib -= ask.gpu_mem_mib;
            }
            if ask.is_share() {
                g.mode = match (ask.mig, self.open_sharing) {
                    (true, _) => GpuMode::Mig,
                    (false, true) => GpuMode::Shared(0),
                    (false, false) => GpuMode::Shared(ask.tenant),
                };
            }
        }
        self.note_task(ask);
    }

    fn release(&mut self, ask: &Ask, gpus: &[u32]) {
        self.cpu_free += ask.cpu_milli;
        self.mem_free += ask.mem_mib;
        for &i in gpus {
            let g = &mut self.gpus[i as usize];
            g.free_milli = (g.free_milli + ask.gpu_milli).min(MILLI);
            if g.free_mem_mib != u64::MAX {
                g.free_mem_mib += ask.gpu_mem_mib;
            }
            if g.free_milli == MILLI {
                g.mode = GpuMode::Open;
            }
        }
        if ask.num_gpu > 0 {
            let kind = kind_of(ask);
            if let Some(pos) = self.kinds.iter().position(|(k, _)| *k == kind) {
                self.kinds[pos].1 -= 1;
                if self.kinds[pos].1 == 0 {
                    self.kinds.swap_remove(pos);
                }
            }
        }
    }
}

fn kind_of(ask: &Ask) -> u32 {
    if ask.is_share() { 0 } else { ask.num_gpu }
}

/// How to choose among the nodes that fit. The first six follow the FGD paper (ATC'23) and its
/// simulator; `FgdPack` and `FgdCpu` are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SharePolicy {
    Random,
    DotProd,
    GpuClustering,
    GpuPacking,
    BestFit,
    Fgd,
    FgdPack,
    /// FgdPack, and each GPU a placement leaves stranded by its node's CPU (too little CPU left
    /// for the typical task's CPU per GPU) costs points: CPU-hungry tasks go where CPU is plenty.
    FgdCpu,
    /// Production only: the node left with the most free GPU capacity (spreads load and heat).
    Spread,
}

impl SharePolicy {
    pub const ALL: [SharePolicy; 8] = [
        SharePolicy::Random,
        SharePolicy::DotProd,
        SharePolicy::GpuClustering,
        SharePolicy::GpuPacking,
        SharePolicy::BestFit,
        SharePolicy::Fgd,
        SharePolicy::FgdPack,
        SharePolicy::FgdCpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SharePolicy::Random => "random",
            SharePolicy::DotProd => "dot-product",
            SharePolicy::GpuClustering => "gpu-clustering",
            SharePolicy::GpuPacking => "gpu-packing",
            SharePolicy::BestFit => "best-fit",
            SharePolicy::Fgd => "fgd",
            SharePolicy::FgdPack => "fgd-pack",
            SharePolicy::FgdCpu => "fgd-cpu",
            SharePolicy::Spread => "spread",
        }
    }

    pub fn parse(s: &str) -> Option<SharePolicy> {
        SharePolicy::ALL.into_iter().chain([SharePolicy::Spread]).find(|p| p.name() == s)
    }

    fn uses_fragmentation(self) -> bool {
        matches!(self, SharePolicy::Fgd | SharePolicy::FgdPack | SharePolicy::FgdCpu)
    }
}

/// Estimated draw of one GPU, in watts: powered with nothing on it, and running work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watts {
    pub idle: f64,
    pub busy: f64,
}

/// The power model the placer weighs and the simulator reports: a node with no GPU in use is
/// powered down and draws nothing; on a node in use, an idle GPU draws its idle power and a GPU
/// with any allocation, whole or a slice, its busy power (time-sliced slices keep the GPU at full
/// clocks whenever one of them runs). CPU and the rest of the host are left out.
pub fn node_watts(node: &Node, w: Watts) -> f64 {
    let busy = node.gpus.iter().filter(|g| g.free_milli < MILLI).count() as f64;
    if busy == 0.0 {
        return 0.0;
    }
    busy * w.busy + (node.gpus.len() as f64 - busy) * w.idle
}

/// What placing on `gpus` of `node` adds to [`node_watts`].
fn added_watts(node: &Node, gpus: &[u32], w: Watts) -> f64 {
    let on = node.gpus.iter().any(|g| g.free_milli < MILLI);
    let wake = if on { 0.0 } else { node.gpus.len() as f64 * w.idle };
    let lit = gpus.iter().filter(|&&i| node.gpus.get(i as usize).is_some_and(|g| g.free_milli == MILLI)).count();
    wake + lit as f64 * (w.busy - w.idle)
}

/// Where an ask went: node ordinal and GPU indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub node: usize,
    pub gpus: Vec<u32>,
}

/// The fleet plus everything one policy needs to place on it.
pub struct Placer {
    nodes: Vec<Node>,
    /// Node ordinals, best first: the tie-breaker.
    priority: Vec<usize>,
    policy: SharePolicy,
    frag: fgd::Fragmentation,
    /// (largest free share of one healthy GPU, priority rank) per node: a GPU task only visits
    /// the nodes with a GPU that has room for its share, in a nearly full fleet a few of many.
    by_free: BTreeSet<(u32, usize)>,
    /// Per node: its entry in `by_free`.
    free_key: Vec<(u32, usize)>,
    /// Per model id, its GPUs' draw, and the score points one added watt costs (FGD policies).
    power: Option<(Vec<Option<Watts>>, f64)>,
    /// Per node, its model's rank in the tenant's preference (lower first, e.g. cheapest first):
    /// an ask that accepts several models goes to the best-ranked model that fits, and the policy
    /// chooses among that model's nodes. Empty: the policy chooses among all.
    node_rank: Vec<u32>,
}

impl Placer {
    /// `priority` lists every node ordinal once; `typical` is the target workload FGD measures
    /// fragmentation against (ignored by the other policies).
    pub fn new(nodes: Vec<Node>, priority: Vec<usize>, policy: SharePolicy, typical: &[Typical]) -> Placer {
        debug_assert_eq!(priority.len(), nodes.len());
        let frag = fgd::Fragmentation::new(typical, nodes.len());
        let mut free_key = vec![(0, 0); nodes.len()];
        for (rank, &n) in priority.iter().enumerate() {
            free_key[n] = (nodes[n].max_free(), rank);
        }
        let by_free = free_key.iter().copied().collect();
        Placer { nodes, priority, policy, frag, by_free, free_key, power: None, node_rank: Vec::new() }
    }

    /// Puts models first in `rank` order (per model id, lower first; a model past the end ranks
    /// last), the policy deciding only among nodes of the best-ranked model that fits.
    pub fn with_model_rank(mut self, rank: Vec<u32>) -> Placer {
        self.node_rank = self.nodes.iter().map(|n| rank.get(n.model as usize).copied().unwrap_or(u32::MAX)).collect();
        self
    }

    fn rank_of(&self, node: usize) -> u32 {
        self.node_rank.get(node).copied().unwrap_or(0)
    }

    /// Weighs power against fragmentation (FGD policies): each watt a placement adds by the
    /// [`node_watts`] model costs `points_per_watt` of the score (FGD's score spans 0 to 100,
    /// FgdPack's 0 to 201). `per_model[id]` is a model's draw; a model without one costs nothing.
    pub fn with_power(mut self, per_model: Vec<Option<Watts>>, points_per_watt: f64) -> Placer {
        if points_per_watt > 0.0 && points_per_watt.is_finite() {
            self.power = Some((per_model, points_per_watt));
        }
        self
    }

    /// The fleet's draw now by the [`node_watts`] model.
    pub fn fleet_watts(&self, per_model: &[Option<Watts>]) -> f64 {
        self.nodes.iter().filter_map(|n| Some(node_watts(n, (*per_model.get(n.model as usize)?)?))).sum()
    }

    fn reindex(&mut self, n: usize) {
        let (old, rank) = self.free_key[n];
        let new = self.nodes[n].max_free();
        if new != old {
            self.by_free.remove(&(old, rank));
            self.by_free.insert((new, rank));
            self.free_key[n] = (new, rank);
        }
    }

    /// Turns off FGD's memo and per-node score cache: the same placements, each scored from
    /// scratch, as a simulator without them would. For benchmarks.
    pub fn without_caches(mut self) -> Placer {
        self.frag.caching = false;
        self
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Chooses where `ask` goes and takes the capacity. `None`: no node can take it.
    pub fn place(&mut self, ask: &Ask, rng: &mut dyn RngCore) -> Option<Choice> {
        self.place_where(ask, &|_| true, rng)
    }

    /// [`Placer::place`] on the nodes `allowed` accepts (a region, say).
    pub fn place_where(&mut self, ask: &Ask, allowed: &dyn Fn(usize) -> bool, rng: &mut dyn RngCore) -> Option<Choice> {
        self.place_preferring(ask, allowed, &|_| false, rng)
    }

    /// [`Placer::place_where`], and among nodes of equal score one `prefer` accepts (one that
    /// holds the ask's image, say) before the fixed priority order.
    pub fn place_preferring(
        &mut self,
        ask: &Ask,
        allowed: &dyn Fn(usize) -> bool,
        prefer: &dyn Fn(usize) -> bool,
        rng: &mut dyn RngCore,
    ) -> Option<Choice> {
        let choice = self.choose_preferring(ask, allowed, prefer, rng)?;
        self.apply(ask, &choice);
        Some(choice)
    }

    /// Takes the capacity of an ask placed elsewhere (or earlier).
    pub fn apply(&mut self, ask: &Ask, choice: &Choice) {
        self.nodes[choice.node].apply(ask, &choice.gpus);
        self.frag.invalidate(choice.node);
        self.reindex(choice.node);
    }

    /// Gives back what `apply` took.
    pub fn release(&mut self, ask: &Ask, choice: &Choice) {
        self.nodes[choice.node].release(ask, &choice.gpus);
        self.frag.invalidate(choice.node);
        self.reindex(choice.node);
    }

    /// Where `ask` would go, without taking anything.
    pub fn choose(&mut self, ask: &Ask, rng: &mut dyn RngCore) -> Option<Choice> {
        self.choose_where(ask, &|_| true, rng)
    }

    pub fn choose_where(
        &mut self,
        ask: &Ask,
        allowed: &dyn Fn(usize) -> bool,
        rng: &mut dyn RngCore,
    ) -> Option<Choice> {
        self.choose_preferring(ask, allowed, &|_| false, rng)
    }

    fn choose_preferring(
        &mut self,
        ask: &Ask,
        allowed: &dyn Fn(usize) -> bool,
        prefer: &dyn Fn(usize) -> bool,
        rng: &mut dyn RngCore,
    ) -> Option<Choice> {
        if ask.num_gpu > 0 && (ask.gpu_milli == 0 || ask.gpu_milli > MILLI) {
            return None;
        }
        if ask.num_gpu > 1 && ask.gpu_milli != MILLI {
            return None;
        }
        if self.policy == SharePolicy::Random {
            return self.choose_random(ask, allowed, rng);
        }
        // Best-ranked model, then best score, then a preferred node, then best priority rank.
        let mut best: Option<(u32, i64, bool, usize, usize, u32)> = None;
        let (nodes, priority, policy, power, node_rank) =
            (&self.nodes, &self.priority, self.policy, &self.power, &self.node_rank);
        let shape = if policy.uses_fragmentation() { self.frag.shape(ask) } else { 0 };
        let mut consider = |rank: usize, frag: &mut fgd::Fragmentation| {
            let n = priority[rank];
            let node = &nodes[n];
            let m = node_rank.get(n).copied().unwrap_or(0);
            if !node.feasible(ask) || !allowed(n) || best.is_some_and(|b| m > b.0) {
                return;
            }
            let (score, gpu) = match policy {
                SharePolicy::Fgd | SharePolicy::FgdPack | SharePolicy::FgdCpu => {
                    let watts = power.as_ref().and_then(|(m, k)| Some(((*m.get(node.model as usize)?)?, *k)));
                    frag.score(shape, n, node, ask, policy, watts)
                }
                p => (simple_score(p, node, ask), 0),
            };
            let preferred = prefer(n);
            if best.is_none_or(|(bm, s, p, r, _, _)| {
                m < bm || (m == bm && (score > s || (score == s && (preferred && !p || (preferred == p && rank < r)))))
            }) {
                best = Some((m, score, preferred, rank, n, gpu));
            }
        };
        if ask.num_gpu == 0 {
            for rank in 0..priority.len() {
                consider(rank, &mut self.frag);
            }
        } else {
            for &(_, rank) in self.by_free.range((ask.gpu_milli, 0)..) {
                consider(rank, &mut self.frag);
            }
        }
        let (_, _, _, _, n, gpu) = best?;
        let gpus = if ask.is_share() && self.policy.uses_fragmentation() {
            vec![gpu]
        } else {
            self.nodes[n].default_gpus(ask)
        };
        Some(Choice { node: n, gpus })
    }

    fn choose_random(&self, ask: &Ask, allowed: &dyn Fn(usize) -> bool, rng: &mut dyn RngCore) -> Option<Choice> {
        let mut feasible: Vec<usize> =
            (0..self.nodes.len()).filter(|&n| self.nodes[n].feasible(ask) && allowed(n)).collect();
        if let Some(top) = feasible.iter().map(|&n| self.rank_of(n)).min() {
            feasible.retain(|&n| self.rank_of(n) == top);
        }
        if feasible.is_empty() {
            return None;
        }
        let n = feasible[rng.random_range(0..feasible.len())];
        let node = &self.nodes[n];
        let gpus = if ask.is_share() {
            let fit: Vec<u32> =
                node.gpus.iter().enumerate().filter(|(_, g)| g.fits_share(ask)).map(|(i, _)| i as u32).collect();
            vec![fit[rng.random_range(0..fit.len())]]
        } else {
            node.default_gpus(ask)
        };
        Some(Choice { node: n, gpus })
    }
}

const CPU_NORM: f64 = 128_000.0;
const GPU_NORM: f64 = 8_000.0;

/// The paper's non-FGD scores, integers 0..=100 (BestFit can leave that range on nodes with more
/// than 128 cores; only the order matters).
fn simple_score(policy: SharePolicy, node: &Node, ask: &Ask) -> i64 {
    let c_free = node.cpu_free as f64;
    let g_free = node.free_milli() as f64;
    let c = ask.cpu_milli as f64;
    let g = ask.demand() as f64;
    match policy {
        SharePolicy::DotProd => {
            let dot = (c_free / CPU_NORM) * (c / CPU_NORM) + (g_free / GPU_NORM) * (g / GPU_NORM);
            (100.0 * (1.0 - dot / 2.0)) as i64
        }
        SharePolicy::BestFit => {
            let s = 0.5 * (c_free - c) / CPU_NORM + 0.5 * (g_free - g) / GPU_NORM;
            (100.0 * (1.0 - s)) as i64
        }
        SharePolicy::GpuClustering => {
            if ask.num_gpu == 0 {
                return 0;
            }
            let base = (25.0 * (GPU_NORM - g_free) / GPU_NORM) as i64;
            let kind = kind_of(ask);
            let has = node.kinds.iter().any(|(k, _)| *k == kind);
            let bonus = if node.kinds.is_empty() {
                25
            } else if has && node.kinds.len() == 1 {
                75
            } else if has {
                50
            } else {
                0
            };
            base + bonus
        }
        SharePolicy::GpuPacking => {
            if ask.num_gpu == 0 {
                return 0;
            }
            let k = node.gpus.len() as i64;
            if node.gpus.iter().all(|g| g.is_idle()) {
                return (33 - k).max(k);
            }
            let mut order: Vec<usize> = (0..node.gpus.len()).filter(|&i| node.gpus[i].healthy).collect();
            order.sort_by_key(|&i| (node.gpus[i].free_milli, i));
            let taken: Vec<u32> = order
                .into_iter()
                .map(|i| node.gpus[i].free_milli)
                .filter(|&f| f >= ask.gpu_milli)
                .take(ask.num_gpu as usize)
                .collect();
            let idle = taken.iter().filter(|&&f| f == MILLI).count() as i64;
            if idle > 0 {
                (50 - idle).max(33)
            } else {
                let sum: i64 = taken.iter().map(|&f| (f as i64 * 100) / MILLI as i64).sum();
                (100 - sum / 10).max(50)
            }
        }
        SharePolicy::Spread => (g_free - g) as i64,
        SharePolicy::Random | SharePolicy::Fgd | SharePolicy::FgdPack | SharePolicy::FgdCpu => 0,
    }
}

#[cfg(test)]
mod tests;
