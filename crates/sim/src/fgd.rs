//! The FGD paper's packing experiment (the data folder's README describes it step by step):
//! shuffle the trace, inflate it to `tune` x the fleet's GPU capacity by resampling, place tasks
//! one by one with no departures, and record the GPU allocation ratio against arrived demand.

use crate::trace::{NodeRow, Trace};
use gpucloud_sched::share::{Placer, SharePolicy, Typical, Watts, typical_workload};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Allocation ratio (percent, 2 decimals) at each whole percent of arrived demand 0..=max.
pub type Curve = Vec<Option<f64>>;

pub struct Experiment<'a> {
    pub nodes: &'a [NodeRow],
    pub trace: &'a Trace,
    pub typical: Vec<Typical>,
    pub tune: f64,
    /// Per model id, its GPUs' draw (the fleet's power is reported for the models that have one).
    pub power: Vec<Option<Watts>>,
    /// Score points per 100 W a placement adds, for the FGD policies (0: power not weighed).
    pub power_weight: f64,
}

/// What one run did besides the curve, for the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    pub tasks: usize,
    pub placed: usize,
    pub failed: usize,
    /// The fleet's estimated draw after the last task (`gpucloud_sched::share::node_watts`).
    pub watts: f64,
    /// Milli-GPU held after the last task.
    pub allocated_milli: u64,
}

impl<'a> Experiment<'a> {
    pub fn new(nodes: &'a [NodeRow], trace: &'a Trace, tune: f64) -> Experiment<'a> {
        let asks: Vec<_> = trace.tasks.iter().map(|t| t.ask.clone()).collect();
        let specs: std::collections::HashMap<_, _> =
            trace.tasks.iter().map(|t| (t.ask.models, t.spec.clone())).collect();
        let typical = typical_workload(&asks, |a| specs.get(&a.models).cloned().unwrap_or_default());
        Experiment { nodes, trace, typical, tune, power: Vec::new(), power_weight: 0.0 }
    }

    /// Reports the fleet's draw with `per_model`, and weighs it in placement by `weight` points
    /// per 100 W.
    pub fn with_power(mut self, per_model: Vec<Option<Watts>>, weight: f64) -> Experiment<'a> {
        self.power = per_model;
        self.power_weight = weight;
        self
    }

    pub fn capacity_milli(&self) -> u64 {
        self.nodes.iter().map(|n| n.gpus as u64 * 1000).sum()
    }

    /// Highest whole percent a curve reports.
    pub fn max_percent(&self) -> usize {
        (self.tune * 100.0).round() as usize
    }

    /// The task sequence of one seed: indices into the trace, then the node priority.
    pub fn sequence(&self, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let tasks = &self.trace.tasks;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..tasks.len()).collect();
        order.sort_by(|&a, &b| tasks[a].name.cmp(&tasks[b].name));
        order.shuffle(&mut rng);
        let target = (self.tune * self.capacity_milli() as f64) as u64;
        let mut total: u64 = order.iter().map(|&i| tasks[i].ask.demand()).sum();
        if total > target {
            while total > target && !order.is_empty() {
                let i = order.remove(rng.random_range(0..order.len()));
                total -= tasks[i].ask.demand();
            }
        } else if tasks.iter().any(|t| t.ask.demand() > 0) {
            // (A trace with no GPU task has no demand to inflate: the loop would never stop.)
            loop {
                let i = rng.random_range(0..tasks.len());
                // The upstream stop test adds the per-GPU share, not the whole demand (README §3).
                if total + tasks[i].ask.gpu_milli as u64 > target {
                    break;
                }
                order.push(i);
                total += tasks[i].ask.demand();
            }
        }
        let mut priority: Vec<usize> = (0..self.nodes.len()).collect();
        priority.shuffle(&mut rng);
        (order, priority)
    }

    pub fn run(&self, policy: SharePolicy, seed: u64) -> (Curve, RunStats) {
        self.run_with(policy, seed, true)
    }

    /// `caching: false` scores every node from scratch (the benchmark's baseline).
    pub fn run_with(&self, policy: SharePolicy, seed: u64, caching: bool) -> (Curve, RunStats) {
        let (curve, stats, _, _) = self.run_keeping(policy, seed, caching);
        (curve, stats)
    }

    /// [`Experiment::run_with`], and the fleet as the run leaves it with the tasks that failed
    /// (indices into the trace, in arrival order).
    pub fn run_keeping(
        &self,
        policy: SharePolicy,
        seed: u64,
        caching: bool,
    ) -> (Curve, RunStats, Vec<gpucloud_sched::share::Node>, Vec<usize>) {
        let (order, priority) = self.sequence(seed);
        let mut failed = Vec::new();
        let nodes = self.nodes.iter().map(NodeRow::node).collect();
        let mut placer = Placer::new(nodes, priority, policy, &self.typical)
            .with_power(self.power.clone(), self.power_weight / 100.0);
        if !caching {
            placer = placer.without_caches();
        }
        // Random's choices come from a stream of their own so that the sequence is the same for
        // every policy.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0000_0a4d_0000);
        let pct = self.capacity_milli() as f64 / 100.0;
        let max = self.max_percent();
        let mut sums = vec![(0.0f64, 0u32); max + 2];
        let (mut arrived, mut used) = (0u64, 0u64);
        let mut stats = RunStats { tasks: order.len(), ..RunStats::default() };
        for i in order {
            let ask = &self.trace.tasks[i].ask;
            arrived += ask.demand();
            if placer.place(ask, &mut rng).is_some() {
                used += ask.demand();
                stats.placed += 1;
            } else {
                stats.failed += 1;
                failed.push(i);
            }
            let x = (arrived as f64 / pct).round_ties_even() as usize;
            let y = round2(used as f64 / pct);
            if x < sums.len() {
                sums[x].0 += y;
                sums[x].1 += 1;
            }
        }
        stats.watts = placer.fleet_watts(&self.power);
        stats.allocated_milli = used;
        let curve = (0..=max)
            .map(|k| {
                let (s, n) = sums[k];
                if n > 0 {
                    return Some(round2(s / n as f64));
                }
                let lo = k.saturating_sub(1);
                let (s, n) =
                    sums[lo..=(k + 1).min(sums.len() - 1)].iter().fold((0.0, 0), |(s, n), (ds, dn)| (s + ds, n + dn));
                (n > 0).then(|| round2(s / n as f64))
            })
            .collect();
        (curve, stats, placer.nodes().to_vec(), failed)
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Mean and sample standard deviation over seeds, per demand percent.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub trace: String,
    pub policy: String,
    pub demand_percent: usize,
    pub allocation_mean: f64,
    pub allocation_std: f64,
    pub seeds: usize,
    /// At the top demand percent only: the fleet's estimated draw after the last task, mean over
    /// the seeds, in kW.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_kw: Option<f64>,
}

pub fn summarize(trace: &str, policy: SharePolicy, curves: &[Curve]) -> Vec<Record> {
    let len = curves.iter().map(Vec::len).max().unwrap_or(0);
    (0..len)
        .filter_map(|k| {
            let ys: Vec<f64> = curves.iter().filter_map(|c| c.get(k).copied().flatten()).collect();
            if ys.is_empty() {
                return None;
            }
            let n = ys.len() as f64;
            let mean = ys.iter().sum::<f64>() / n;
            let var = if ys.len() > 1 { ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
            Some(Record {
                trace: trace.to_string(),
                policy: policy.name().to_string(),
                demand_percent: k,
                allocation_mean: round2(mean),
                allocation_std: (var.sqrt() * 1000.0).round() / 1000.0,
                seeds: ys.len(),
                fleet_kw: None,
            })
        })
        .collect()
}
