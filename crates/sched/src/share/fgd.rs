//! Fragmentation gradient descent (Weng et al., ATC'23): a node's fragmentation is the GPU
//! capacity that the workload we expect could not use there; a task goes where it makes that
//! fragmentation grow least.
//!
//! Scoring a node means evaluating the fragmentation of a few hypothetical node states, each a sum
//! over the typical tasks. Fragmentation depends on the CPU only through which typical tasks' CPU
//! fits, and on the GPUs only as a multiset, so values are memoised on (model, CPU class, sorted
//! free milli): a 1,213-node fleet repeats the same few hundred states all run long.

use super::{Ask, MILLI, ModelSet, Node, SharePolicy, Watts};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// One kind of task the fleet expects, with its share of the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Typical {
    pub cpu_milli: u64,
    pub num_gpu: u32,
    pub gpu_milli: u32,
    pub models: ModelSet,
    pub weight: f64,
}

/// The typical tasks of a workload: tasks grouped by (CPU, GPU share, GPU count, models), largest
/// groups first, cut at the first prefix covering 95% of the tasks. `spec` names a task's allowed
/// models; it only orders groups of equal size.
pub fn typical_workload(tasks: &[Ask], spec: impl Fn(&Ask) -> String) -> Vec<Typical> {
    let mut groups: HashMap<(u64, u32, u32, ModelSet), (usize, String)> = HashMap::new();
    for t in tasks {
        let e = groups.entry((t.cpu_milli, t.gpu_milli, t.num_gpu, t.models)).or_insert_with(|| (0, spec(t)));
        e.0 += 1;
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|(ka, (na, sa)), (kb, (nb, sb))| {
        nb.cmp(na).then(kb.0.cmp(&ka.0)).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2)).then(sb.cmp(sa))
    });
    let total = tasks.len();
    let mut kept = 0;
    let mut out = Vec::new();
    for ((cpu, gpu_milli, num_gpu, models), (n, _)) in groups {
        if kept * 100 >= total * 95 {
            break;
        }
        kept += n;
        out.push(Typical { cpu_milli: cpu, num_gpu, gpu_milli, models, weight: n as f64 });
    }
    for t in &mut out {
        t.weight /= kept as f64;
    }
    out
}

/// FxHash: the memo keys are small integers, for which SipHash is needlessly slow.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// Up to this many GPUs a node's free vector packs into one memo key (10 bits each).
const PACKED_GPUS: usize = 12;

pub(super) struct Fragmentation {
    typical: Vec<Typical>,
    /// Distinct CPU requests of the typical tasks, ascending.
    cpu_cuts: Vec<u64>,
    memo: FxMap<(u64, u128), f64>,
    /// Per node: fragmentation of its current state (NaN: not computed since it changed).
    now: Vec<f64>,
    /// Scores already computed, shape-major (`scores[shape][node]`), valid while an entry's
    /// version is its node's. Each placement changes one node, so the rest of the fleet answers
    /// the next task of a shape from one contiguous row.
    shapes: FxMap<u128, u32>,
    scores: Vec<Vec<Cached>>,
    version: Vec<u32>,
    /// Off: every score computed from scratch (the benchmark's baseline).
    pub(super) caching: bool,
    /// The typical GPU tasks' CPU per milli-GPU, weighted as FGD weighs them (0: none ask CPU).
    cpu_per_milli: f64,
}

/// What one GPU stranded by a node's CPU costs FgdCpu, in its score's points (FgdPack's scale,
/// 0 to 201). Allocation at 130% is flat from 10 to 200 on the traces (docs/benchmarks.md).
const STRANDED_GPU_POINTS: f64 = 50.0;

#[derive(Debug, Clone, Copy, Default)]
struct Cached {
    /// 0: empty (node versions start at 1).
    version: u32,
    score: i32,
    gpu: u32,
}

impl Fragmentation {
    pub(super) fn new(typical: &[Typical], nodes: usize) -> Fragmentation {
        let mut cpu_cuts: Vec<u64> = typical.iter().map(|t| t.cpu_milli).collect();
        cpu_cuts.sort_unstable();
        cpu_cuts.dedup();
        let gpu_tasks = typical.iter().filter(|t| t.num_gpu > 0);
        let cpu: f64 = gpu_tasks.clone().map(|t| t.weight * t.cpu_milli as f64).sum();
        let gpu: f64 = gpu_tasks.map(|t| t.weight * (t.num_gpu as u64 * t.gpu_milli as u64) as f64).sum();
        Fragmentation {
            cpu_per_milli: if gpu > 0.0 { cpu / gpu } else { 0.0 },
            typical: typical.to_vec(),
            cpu_cuts,
            memo: FxMap::default(),
            now: vec![f64::NAN; nodes],
            shapes: FxMap::default(),
            scores: Vec::new(),
            version: vec![1; nodes],
            caching: true,
        }
    }

    pub(super) fn invalidate(&mut self, node: usize) {
        self.now[node] = f64::NAN;
        self.version[node] = self.version[node].checked_add(1).unwrap_or(1);
    }

    /// The row of cached scores for `ask`'s shape, made on first sight. What a score depends
    /// on besides the node: the ask's CPU, GPU count, share, memory, kind and tenant (which GPUs
    /// a time-sliced slice may join).
    pub(super) fn shape(&mut self, ask: &Ask) -> usize {
        // Feasible asks are small: CPU < 2^40 milli, GPUs < 2^8, share <= 1000, memory < 2^40,
        // tenant tags < 2^28.
        let key = (ask.tenant as u128 & 0xfff_ffff) << 100
            | (ask.cpu_milli as u128 & 0xff_ffff_ffff) << 60
            | (ask.num_gpu as u128 & 0xff) << 52
            | (ask.gpu_milli as u128 & 0x7ff) << 41
            | (ask.gpu_mem_mib as u128 & 0xff_ffff_ffff) << 1
            | ask.mig as u128;
        let next = self.scores.len();
        let id = *self.shapes.entry(key).or_insert(next as u32) as usize;
        if id == next {
            self.scores.push(vec![Cached::default(); self.version.len()]);
        }
        id
    }

    /// Fragmentation in milli-GPU of a node of `model` with `cpu` free and GPUs `free` (sorted or
    /// not; unhealthy GPUs count as 0).
    fn value(&mut self, model: u16, cpu: u64, free: &mut [u32]) -> f64 {
        if free.len() > PACKED_GPUS || !self.caching {
            return self.compute(model, cpu, free);
        }
        free.sort_unstable();
        let class = self.cpu_cuts.partition_point(|&c| c <= cpu) as u64;
        let packed = free.iter().fold(0u128, |acc, &f| acc << 10 | f.min(1023) as u128);
        let key = ((model as u64) << 48 | class << 8 | free.len() as u64, packed);
        if let Some(&v) = self.memo.get(&key) {
            return v;
        }
        let v = self.compute(model, cpu, free);
        self.memo.insert(key, v);
        v
    }

    fn compute(&self, model: u16, cpu: u64, free: &[u32]) -> f64 {
        let total: u64 = free.iter().map(|&f| f as u64).sum();
        let mut out = 0.0;
        for t in &self.typical {
            let frag = if t.num_gpu == 0 || !t.models.allows(model) {
                total
            } else {
                let fitting = free.iter().filter(|&&f| f >= t.gpu_milli).count() as u32;
                if cpu >= t.cpu_milli && fitting >= t.num_gpu {
                    free.iter().filter(|&&f| f < t.gpu_milli).map(|&f| f as u64).sum()
                } else {
                    total
                }
            };
            out += t.weight * frag as f64;
        }
        out
    }

    fn free_vec(node: &Node) -> Vec<u32> {
        node.gpus.iter().map(|g| if g.healthy { g.free_milli } else { 0 }).collect()
    }

    /// Score of placing `ask` on node `n` (feasible), and for a slice the GPU FGD picks there.
    /// `shape` is `self.shape(ask)`.
    /// `power`: the node model's draw and the points one watt added costs.
    pub(super) fn score(
        &mut self,
        shape: usize,
        n: usize,
        node: &Node,
        ask: &Ask,
        policy: SharePolicy,
        power: Option<(Watts, f64)>,
    ) -> (i64, u32) {
        if !self.caching {
            self.now[n] = f64::NAN;
            return self.score_uncached(n, node, ask, policy, power);
        }
        let hit = self.scores[shape][n];
        if hit.version == self.version[n] {
            return (i64::from(hit.score), hit.gpu);
        }
        let out = self.score_uncached(n, node, ask, policy, power);
        let score = out.0.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        self.scores[shape][n] = Cached { version: self.version[n], score, gpu: out.1 };
        out
    }

    fn score_uncached(
        &mut self,
        n: usize,
        node: &Node,
        ask: &Ask,
        policy: SharePolicy,
        power: Option<(Watts, f64)>,
    ) -> (i64, u32) {
        let mut free = Self::free_vec(node);
        if self.now[n].is_nan() {
            let mut scratch = free.clone();
            self.now[n] = self.value(node.model, node.cpu_free, &mut scratch);
        }
        let before = self.now[n];
        let cpu_after = node.cpu_free - ask.cpu_milli;
        if ask.is_share() {
            // (final score, GPU), and per distinct free share seen: its final score.
            let mut best: Option<(i64, u32)> = None;
            let mut seen: Vec<(u32, i64)> = Vec::with_capacity(free.len());
            for (i, g) in node.gpus.iter().enumerate() {
                if !g.fits_share(ask) {
                    continue;
                }
                let s = match seen.iter().find(|(v, _)| *v == g.free_milli) {
                    Some(&(_, s)) => s,
                    None => {
                        let mut after = free.clone();
                        after[i] -= ask.gpu_milli;
                        let d = before - self.value(node.model, cpu_after, &mut after);
                        let s = finish(policy, sigmoid_score(d), node, &[i as u32], power);
                        seen.push((g.free_milli, s));
                        s
                    }
                };
                if best.is_none_or(|(bs, _)| s > bs) {
                    best = Some((s, i as u32));
                }
            }
            return best.map(|(s, g)| (s - self.strand(policy, node, ask), g)).unwrap_or((i64::MIN, 0));
        }
        let taken: Vec<u32> = node.idle_gpus().take(ask.num_gpu as usize).collect();
        for &i in &taken {
            free[i as usize] = 0;
        }
        let delta = before - self.value(node.model, cpu_after, &mut free);
        (finish(policy, sigmoid_score(delta), node, &taken, power) - self.strand(policy, node, ask), 0)
    }

    /// FgdCpu's charge for the GPUs a placement strands: GPUs whose node has too little CPU
    /// left to run the typical workload's tasks on them (its CPU per milli-GPU), before and after.
    /// FGD's own measure only sees a node's CPU when it falls below one typical task's request,
    /// so it fills a CPU-poor node with CPU-hungry tasks and leaves its last GPUs unusable.
    fn strand(&self, policy: SharePolicy, node: &Node, ask: &Ask) -> i64 {
        if policy != SharePolicy::FgdCpu || self.cpu_per_milli <= 0.0 {
            return 0;
        }
        let free: f64 = node.gpus.iter().filter(|g| g.healthy).map(|g| g.free_milli as f64).sum();
        let stranded = |cpu: u64, gpu: f64| (gpu - cpu as f64 / self.cpu_per_milli).max(0.0);
        let before = stranded(node.cpu_free, free);
        let after = stranded(node.cpu_free - ask.cpu_milli, free - ask.demand() as f64);
        (STRANDED_GPU_POINTS * (after - before) / MILLI as f64).round() as i64
    }
}

/// A policy's score from FGD's: FGD's integer scores tie often, and the fixed node priority then
/// decides. FgdPack breaks those ties towards a node already in use, which keeps an empty node
/// whole for the multi-GPU tasks FGD's expectation cannot save room for on its own. With power
/// weighed, the watts the placement adds (waking a node, lighting an idle GPU) cost points.
fn finish(policy: SharePolicy, fgd: i64, node: &Node, gpus: &[u32], power: Option<(Watts, f64)>) -> i64 {
    let base = match policy {
        SharePolicy::FgdPack | SharePolicy::FgdCpu => fgd * 2 + i64::from(!node.gpus.iter().all(|g| g.is_idle())),
        _ => fgd,
    };
    match power {
        Some((w, per_watt)) => base - (per_watt * super::added_watts(node, gpus, w)).round() as i64,
        None => base,
    }
}

/// trunc(100 · σ(Δ / 1000)): 50 when fragmentation does not change.
fn sigmoid_score(delta: f64) -> i64 {
    let x = delta / MILLI as f64;
    (100.0 * (1.0 / (1.0 + (-x).exp()))) as i64
}
