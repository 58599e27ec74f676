//! Replaying a trace in time: each task arrives at its `creation_time`, waits in a FIFO queue if
//! nothing fits, runs for its recorded duration (`deletion_time - creation_time`) once placed,
//! and departs, freeing its share. Reports allocation over time and what each class of tasks
//! (the trace's `qos` column, standing in for tenants) would pay under a price book with
//! gpucloud's own per-second billing.

use crate::trace::{Models, NodeRow, Trace};
use gpucloud_billing::{PricePoint, Rules, charge};
use gpucloud_model::{Money, Timestamp};
use gpucloud_sched::share::{Choice, Placer, SharePolicy, typical_workload};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

/// Per GPU-hour, for the trace's models. T4 and A10 are the dev price book's; the rest are
/// assumptions (G2 and G3 are undisclosed models, priced like A100-40GB and A100-80GB).
pub const DEFAULT_PRICES: &[(&str, &str)] = &[
    ("T4", "0.35"),
    ("A10", "0.75"),
    ("P100", "0.40"),
    ("V100M16", "0.80"),
    ("V100M32", "0.95"),
    ("G2", "1.60"),
    ("G3", "2.20"),
];

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub from_s: i64,
    pub to_s: i64,
    /// Time-weighted mean of allocated milli-GPU over capacity, percent.
    pub allocation_pct: f64,
    /// Most tasks waiting at once.
    pub max_waiting: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassCost {
    pub class: String,
    pub tasks: usize,
    pub started: usize,
    pub wait_p50_s: i64,
    pub wait_p99_s: i64,
    pub gpu_hours: f64,
    /// Decimal string, dollars.
    pub cost: Money,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub policy: String,
    /// Arrival times were divided by this.
    pub compress: f64,
    pub tasks: usize,
    /// Tasks without usable times (no deletion, or not after creation).
    pub skipped: usize,
    /// Tasks that asked for more than any node has: they would wait forever.
    pub never_fit: usize,
    pub allocation_mean_pct: f64,
    pub buckets: Vec<Bucket>,
    pub classes: Vec<ClassCost>,
    pub total_cost: Money,
}

/// `prices`: model name -> per GPU-hour. A model without a price is billed at zero and named
/// in the error instead: a silent zero would understate every cost.
pub fn replay(
    nodes: &[NodeRow],
    trace: &Trace,
    models: &Models,
    policy: SharePolicy,
    prices: &HashMap<String, Money>,
    buckets: usize,
    compress: f64,
) -> Result<ReplayReport, String> {
    if !(compress.is_finite() && compress >= 1.0) {
        return Err(format!("compress {compress}: expected a factor of 1 or more"));
    }
    for n in nodes {
        let name = models.name(n.model);
        if !prices.contains_key(name) {
            return Err(format!("no price for GPU model {name} (give one with --price {name}=DOLLARS)"));
        }
    }
    let asks: Vec<_> = trace.tasks.iter().map(|t| t.ask.clone()).collect();
    let typical = typical_workload(&asks, |a| format!("{:?}", a.models));
    let mut placer =
        Placer::new(nodes.iter().map(NodeRow::node).collect(), (0..nodes.len()).collect(), policy, &typical);
    let capacity: u64 = nodes.iter().map(|n| n.gpus as u64 * 1000).sum();
    let mut timed: Vec<(i64, i64, usize)> = Vec::new();
    let mut skipped = 0;
    for (i, t) in trace.tasks.iter().enumerate() {
        match (t.creation, t.deletion) {
            // Compressing arrivals (durations kept) turns a quiet trace into a busy one.
            (Some(c), Some(d)) if d > c && c >= 0 => timed.push(((c as f64 / compress) as i64, d - c, i)),
            _ => skipped += 1,
        }
    }
    timed.sort();
    let start = timed.first().map_or(0, |t| t.0);
    let end = timed.iter().map(|t| t.0 + t.1).max().unwrap_or(start + 1).max(start + 1);
    let nb = buckets.clamp(1, 1000);
    let width = ((end - start) as f64 / nb as f64).max(1.0);
    let mut area = vec![0.0f64; nb];
    let mut max_waiting = vec![0usize; nb];
    let bucket_of = |t: i64| (((t - start) as f64 / width) as usize).min(nb - 1);

    // Anything no empty node could ever take would block the FIFO queue forever: set aside.
    let empty: Vec<_> = nodes.iter().map(NodeRow::node).collect();
    let fits_somewhere = |i: usize| empty.iter().any(|n| n.feasible(&trace.tasks[i].ask));
    let mut never_fit = 0;

    let mut rng = StdRng::seed_from_u64(0);
    let mut running: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    let mut placed_at: HashMap<usize, Choice> = HashMap::new();
    let mut waiting: VecDeque<(usize, i64, i64)> = VecDeque::new();
    let mut waits: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut costs: BTreeMap<String, (usize, usize, f64, Money)> = BTreeMap::new();
    let mut allocated: u64 = 0;
    let mut now = start;
    let mut next = 0;
    let price_book: Vec<Vec<PricePoint>> = (0..nodes.len())
        .map(|n| {
            let p = prices[models.name(nodes[n].model)];
            vec![PricePoint { effective_from: Timestamp(0), per_gpu_hour: p }]
        })
        .collect();

    let mut advance = |to: i64, allocated: u64, waiting: usize, now: &mut i64| {
        let mut t = *now;
        while t < to {
            let b = bucket_of(t);
            let b_end = (start as f64 + (b + 1) as f64 * width).ceil() as i64;
            let seg_end = if b == nb - 1 { to } else { b_end.min(to).max(t + 1) };
            area[b] += allocated as f64 * (seg_end - t) as f64;
            max_waiting[b] = max_waiting[b].max(waiting);
            t = seg_end;
        }
        *now = to;
    };

    loop {
        let arrival = timed.get(next).map(|t| t.0);
        let departure = running.peek().map(|Reverse((t, _))| *t);
        let t = match (arrival, departure) {
            (None, None) => break,
            (Some(a), Some(d)) => a.min(d),
            (Some(a), None) => a,
            (None, Some(d)) => d,
        };
        advance(t, allocated, waiting.len(), &mut now);
        // Departures first: what leaves at t is free for what arrives at t.
        let mut freed = false;
        while let Some(&Reverse((d, i))) = running.peek() {
            if d > t {
                break;
            }
            running.pop();
            if let Some(choice) = placed_at.remove(&i) {
                placer.release(&trace.tasks[i].ask, &choice);
                allocated -= trace.tasks[i].ask.demand();
                freed = true;
            }
        }
        while timed.get(next).is_some_and(|x| x.0 == t) {
            let (c, dur, i) = timed[next];
            next += 1;
            let class = trace.tasks[i].class.clone();
            costs.entry(class).or_default().0 += 1;
            if fits_somewhere(i) {
                waiting.push_back((i, c, dur));
            } else {
                never_fit += 1;
            }
        }
        // FIFO with backfill: the queue is scanned in order and whatever fits now starts.
        if freed || !waiting.is_empty() {
            let mut still = VecDeque::with_capacity(waiting.len());
            while let Some((i, c, dur)) = waiting.pop_front() {
                let ask = &trace.tasks[i].ask;
                match placer.place(ask, &mut rng) {
                    Some(choice) => {
                        allocated += ask.demand();
                        let class = trace.tasks[i].class.clone();
                        waits.entry(class.clone()).or_default().push(t - c);
                        let e = costs.entry(class).or_default();
                        e.1 += 1;
                        if ask.num_gpu > 0 {
                            let bill = charge(
                                Timestamp(t * 1000),
                                dur * 1000,
                                ask.demand() as u32,
                                &price_book[choice.node],
                                Rules::default(),
                            );
                            e.2 += ask.demand() as f64 / 1000.0 * dur as f64 / 3600.0;
                            e.3 = Money(e.3.0 + bill.amount.0);
                        }
                        running.push(Reverse((t + dur, i)));
                        placed_at.insert(i, choice);
                    }
                    None => still.push_back((i, c, dur)),
                }
            }
            waiting = still;
        }
    }
    let total_time = (end - start) as f64;
    let mean = area.iter().sum::<f64>() / (capacity as f64 * total_time) * 100.0;
    let buckets: Vec<Bucket> = (0..nb)
        .map(|b| {
            let from = start + (b as f64 * width) as i64;
            let to = if b == nb - 1 { end } else { start + ((b + 1) as f64 * width) as i64 };
            Bucket {
                from_s: from,
                to_s: to,
                allocation_pct: round2(area[b] / (capacity as f64 * (to - from).max(1) as f64) * 100.0),
                max_waiting: max_waiting[b],
            }
        })
        .collect();
    let classes: Vec<ClassCost> = costs
        .into_iter()
        .map(|(class, (tasks, started, gpu_hours, cost))| {
            let mut w = waits.remove(&class).unwrap_or_default();
            w.sort_unstable();
            let pct = |q: f64| w.get(((w.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
            ClassCost {
                class: if class.is_empty() { "-".into() } else { class },
                tasks,
                started,
                wait_p50_s: pct(0.5),
                wait_p99_s: pct(0.99),
                gpu_hours: round2(gpu_hours),
                cost,
            }
        })
        .collect();
    let total_cost = Money(classes.iter().map(|c| c.cost.0).sum());
    Ok(ReplayReport {
        policy: policy.name().to_string(),
        compress,
        tasks: trace.tasks.len(),
        skipped,
        never_fit,
        allocation_mean_pct: round2(mean),
        buckets,
        classes,
        total_cost,
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
