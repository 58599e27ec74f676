//! Replaying a trace in time: each task arrives at its `creation_time`, waits in a queue if
//! nothing fits, runs for its recorded duration (`deletion_time - creation_time`) once placed,
//! and departs, freeing its share. Reports allocation over time and what each class of tasks
//! (the trace's `qos` column, standing in for tenants) would pay under a price book with
//! gpucloud's own per-second billing.
//!
//! The queue is first-come-first-served with backfill, or (`Queue::Fair`) served in the order
//! the production scheduler uses (`gpucloud_sched::order`: priority class with aging, fair share
//! between projects, age), with the trace split into projects and its `qos` read as a priority.

use crate::trace::{Models, NodeRow, Trace};
use gpucloud_billing::{PricePoint, Rules, charge};
use gpucloud_model::{Money, Priority, ProjectName, TenantId, Timestamp};
use gpucloud_sched::order::{Queued, Share, ShareKey, order};
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

/// Estimated draw of one GPU in watts (idle, busy) for the trace's models: busy is the vendor's
/// board power (P100 PCIe 250 W, V100 SXM2 300 W; T4 and A10 as gpucloud's catalogue); idle about a
/// tenth of it. G2 and G3 are undisclosed and taken as A100-class parts, as their prices are.
pub const DEFAULT_POWER: &[(&str, f64, f64)] = &[
    ("T4", 10.0, 70.0),
    ("A10", 20.0, 150.0),
    ("P100", 30.0, 250.0),
    ("V100M16", 40.0, 300.0),
    ("V100M32", 40.0, 300.0),
    ("G2", 50.0, 400.0),
    ("G3", 55.0, 400.0),
];

/// [`DEFAULT_POWER`] per model id of `models` (None for a model it does not list).
pub fn power_of(models: &crate::trace::Models) -> Vec<Option<gpucloud_sched::share::Watts>> {
    models
        .names()
        .iter()
        .map(|n| {
            DEFAULT_POWER
                .iter()
                .find(|(m, _, _)| m == n)
                .map(|&(_, idle, busy)| gpucloud_sched::share::Watts { idle, busy })
        })
        .collect()
}

/// The order a waiting queue is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// First come, first served; whatever fits behind a blocked head starts (backfill).
    Fifo,
    /// `gpucloud_sched::order`, with backfill the same way.
    Fair { aging_s: i64 },
}

impl Queue {
    pub fn name(self) -> &'static str {
        match self {
            Queue::Fifo => "fifo",
            Queue::Fair { .. } => "fair",
        }
    }
}

/// How to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayOptions {
    /// Time buckets in the report.
    pub buckets: usize,
    /// Arrival times are divided by this (durations kept).
    pub compress: f64,
    /// Split the tasks into this many projects (0: none), the first submitting most: project
    /// k of n gets 2^(n-1-k) parts of 2^n - 1, by a hash of the task's name.
    pub projects: usize,
    pub queue: Queue,
    pub prefer: Prefer,
}

impl Default for ReplayOptions {
    fn default() -> ReplayOptions {
        ReplayOptions { buckets: 10, compress: 1.0, projects: 0, queue: Queue::Fifo, prefer: Prefer::Policy }
    }
}

/// Which of the models a task accepts it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    /// Whichever node the placement policy scores best, any model.
    Policy,
    /// The cheapest model per GPU-hour that has room; the policy chooses among its nodes (and
    /// among models of one price).
    Cheapest,
    /// The dearest model that has room, price standing in for speed.
    Fastest,
}

impl Prefer {
    pub fn name(self) -> &'static str {
        match self {
            Prefer::Policy => "policy",
            Prefer::Cheapest => "cheapest",
            Prefer::Fastest => "fastest",
        }
    }

    pub fn parse(s: &str) -> Option<Prefer> {
        [Prefer::Policy, Prefer::Cheapest, Prefer::Fastest].into_iter().find(|p| p.name() == s)
    }

    /// Per model id of `models`, its rank (lower first), models of one price sharing a rank;
    /// None for `Policy`.
    pub fn ranks(self, models: &Models, prices: &HashMap<String, Money>) -> Option<Vec<u32>> {
        let sign = match self {
            Prefer::Policy => return None,
            Prefer::Cheapest => 1,
            Prefer::Fastest => -1,
        };
        // A model without a price (only in a gpu_spec, on no node) ranks last either way.
        let key = |id: usize| prices.get(&models.names()[id]).map_or(i64::MAX, |m| sign * m.0);
        let mut keys: Vec<i64> = (0..models.names().len()).map(key).collect();
        let ids = keys.clone();
        keys.sort_unstable();
        keys.dedup();
        Some(ids.iter().map(|k| keys.partition_point(|x| x < k) as u32).collect())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub from_s: i64,
    pub to_s: i64,
    /// Time-weighted mean of allocated milli-GPU over capacity, percent.
    pub allocation_pct: f64,
    /// Most tasks waiting at once.
    pub max_waiting: usize,
    /// Each project's part of the GPU time allocated in the bucket, percent (with `projects`).
    pub project_share_pct: Vec<f64>,
}

/// One project's part of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectShare {
    pub project: String,
    /// Its part of the tasks, percent.
    pub submitted_pct: f64,
    pub tasks: usize,
    pub gpu_hours: f64,
    /// Its part of all GPU-hours run, percent.
    pub share_pct: f64,
    /// Its part of the GPU time allocated while tasks of two or more projects waited: what fair
    /// share decides, percent.
    pub contended_share_pct: f64,
    pub wait_p50_s: i64,
    pub wait_p95_s: i64,
}

/// Waiting by priority class (the trace's qos: LS and Guaranteed production, Burstable default,
/// BE batch).
#[derive(Debug, Clone, Serialize)]
pub struct PriorityWait {
    pub priority: String,
    pub tasks: usize,
    pub started: usize,
    pub wait_p50_s: i64,
    pub wait_p95_s: i64,
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
    /// Which model a task that accepts several goes to ([`Prefer::name`]).
    pub prefer: String,
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
    /// `fifo` or `fair`.
    pub queue: String,
    /// With `projects`: each project's share; and waits by priority class.
    pub projects: Vec<ProjectShare>,
    pub priorities: Vec<PriorityWait>,
}

/// The trace's qos as a priority class.
pub fn priority_of(qos: &str) -> Priority {
    match qos {
        "LS" | "Guaranteed" => Priority::Production,
        "BE" => Priority::Batch,
        _ => Priority::Default,
    }
}

/// The project (0-based) a task goes to among `n`: the first gets about half, each next half
/// of the one before (2^(n-1-k) parts of 2^n - 1), by an FNV-1a hash of its name.
pub fn project_of(name: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let n = n.min(16);
    let parts = (1u64 << n) - 1;
    let mut r = h % parts;
    for k in 0..n {
        let size = 1u64 << (n - 1 - k);
        if r < size {
            return k;
        }
        r -= size;
    }
    n - 1
}

fn pct_of(w: &mut [i64], q: f64) -> i64 {
    w.sort_unstable();
    w.get(((w.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0)
}

/// `prices`: model name -> per GPU-hour. A model without a price is billed at zero and named
/// in the error instead: a silent zero would understate every cost.
pub fn replay(
    nodes: &[NodeRow],
    trace: &Trace,
    models: &Models,
    policy: SharePolicy,
    prices: &HashMap<String, Money>,
    options: ReplayOptions,
) -> Result<ReplayReport, String> {
    let ReplayOptions { buckets, compress, projects, queue, prefer } = options;
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
    if let Some(ranks) = prefer.ranks(models, prices) {
        placer = placer.with_model_rank(ranks);
    }
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
    let np = projects.clamp(1, 16);
    let mut project_area = vec![vec![0.0f64; np]; nb];
    let mut max_waiting = vec![0usize; nb];
    let project_of_task: Vec<usize> = trace.tasks.iter().map(|t| project_of(&t.name, np)).collect();
    let tenant = TenantId::from_random(0);
    let keys: Vec<ShareKey> =
        (0..np).map(|k| (tenant.clone(), ProjectName::parse(&format!("p{}", k + 1)).expect("a plain name"))).collect();
    let mut project_alloc = vec![0u64; np];
    let mut waiting_per_project = vec![0usize; np];
    let mut contended_area = vec![0.0f64; np];
    let mut project_waits: Vec<Vec<i64>> = vec![Vec::new(); np];
    let mut project_tasks = vec![0usize; np];
    let mut project_hours = vec![0.0f64; np];
    let mut priority_waits: BTreeMap<Priority, (usize, Vec<i64>)> = BTreeMap::new();
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

    let mut advance = |to: i64, allocated: u64, by_project: &[u64], waiting_in: &[usize], now: &mut i64| {
        let waiting: usize = waiting_in.iter().sum();
        if waiting_in.iter().filter(|w| **w > 0).count() >= 2 {
            for (k, a) in by_project.iter().enumerate() {
                contended_area[k] += *a as f64 * (to - *now) as f64;
            }
        }
        let mut t = *now;
        while t < to {
            let b = bucket_of(t);
            let b_end = (start as f64 + (b + 1) as f64 * width).ceil() as i64;
            let seg_end = if b == nb - 1 { to } else { b_end.min(to).max(t + 1) };
            area[b] += allocated as f64 * (seg_end - t) as f64;
            for (k, a) in by_project.iter().enumerate() {
                project_area[b][k] += *a as f64 * (seg_end - t) as f64;
            }
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
        advance(t, allocated, &project_alloc, &waiting_per_project, &mut now);
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
                project_alloc[project_of_task[i]] -= trace.tasks[i].ask.demand();
                freed = true;
            }
        }
        while timed.get(next).is_some_and(|x| x.0 == t) {
            let (c, dur, i) = timed[next];
            next += 1;
            let class = trace.tasks[i].class.clone();
            priority_waits.entry(priority_of(&class)).or_default().0 += 1;
            project_tasks[project_of_task[i]] += 1;
            costs.entry(class).or_default().0 += 1;
            if fits_somewhere(i) {
                waiting.push_back((i, c, dur));
                waiting_per_project[project_of_task[i]] += 1;
            } else {
                never_fit += 1;
            }
        }
        // The queue is scanned in its order (arrival, or the scheduler's) and whatever fits now
        // starts: backfill.
        if freed || !waiting.is_empty() {
            if let Queue::Fair { aging_s } = queue {
                let queued: Vec<Queued> = waiting
                    .iter()
                    .map(|&(i, c, _)| Queued {
                        priority: priority_of(&trace.tasks[i].class),
                        since: Timestamp(c * 1000),
                        project: (projects > 0).then(|| keys[project_of_task[i]].clone()),
                        milli: trace.tasks[i].ask.demand(),
                    })
                    .collect();
                let shares: BTreeMap<ShareKey, Share> = keys
                    .iter()
                    .zip(&project_alloc)
                    .map(|(k, a)| (k.clone(), Share { used_milli: *a, weight_milli: 0 }))
                    .collect();
                let ordered = order(&queued, &shares, Timestamp(t * 1000), aging_s * 1000);
                waiting = ordered.into_iter().map(|k| waiting[k]).collect();
            }
            let mut still = VecDeque::with_capacity(waiting.len());
            while let Some((i, c, dur)) = waiting.pop_front() {
                let ask = &trace.tasks[i].ask;
                match placer.place(ask, &mut rng) {
                    Some(choice) => {
                        allocated += ask.demand();
                        let k = project_of_task[i];
                        waiting_per_project[k] -= 1;
                        project_alloc[k] += ask.demand();
                        project_waits[k].push(t - c);
                        project_hours[k] += ask.demand() as f64 / 1000.0 * dur as f64 / 3600.0;
                        let class = trace.tasks[i].class.clone();
                        priority_waits.entry(priority_of(&class)).or_default().1.push(t - c);
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
            let used: f64 = project_area[b].iter().sum();
            Bucket {
                from_s: from,
                to_s: to,
                allocation_pct: round2(area[b] / (capacity as f64 * (to - from).max(1) as f64) * 100.0),
                max_waiting: max_waiting[b],
                project_share_pct: if projects > 0 {
                    project_area[b].iter().map(|a| round2(if used > 0.0 { a / used * 100.0 } else { 0.0 })).collect()
                } else {
                    Vec::new()
                },
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
    let all_hours: f64 = project_hours.iter().sum();
    let contended: f64 = contended_area.iter().sum();
    let all_tasks: usize = project_tasks.iter().sum();
    let project_shares: Vec<ProjectShare> = if projects > 0 {
        (0..np)
            .map(|k| ProjectShare {
                project: format!("p{}", k + 1),
                submitted_pct: round2(project_tasks[k] as f64 / all_tasks.max(1) as f64 * 100.0),
                tasks: project_tasks[k],
                gpu_hours: round2(project_hours[k]),
                share_pct: round2(if all_hours > 0.0 { project_hours[k] / all_hours * 100.0 } else { 0.0 }),
                contended_share_pct: round2(if contended > 0.0 { contended_area[k] / contended * 100.0 } else { 0.0 }),
                wait_p50_s: pct_of(&mut project_waits[k], 0.5),
                wait_p95_s: pct_of(&mut project_waits[k], 0.95),
            })
            .collect()
    } else {
        Vec::new()
    };
    let priorities: Vec<PriorityWait> = priority_waits
        .into_iter()
        .rev()
        .map(|(p, (tasks, mut w))| PriorityWait {
            priority: p.to_string(),
            tasks,
            started: w.len(),
            wait_p50_s: pct_of(&mut w, 0.5),
            wait_p95_s: pct_of(&mut w, 0.95),
        })
        .collect();
    Ok(ReplayReport {
        policy: policy.name().to_string(),
        prefer: prefer.name().to_string(),
        compress,
        tasks: trace.tasks.len(),
        skipped,
        never_fit,
        allocation_mean_pct: round2(mean),
        buckets,
        classes,
        total_cost,
        queue: queue.name().to_string(),
        projects: project_shares,
        priorities,
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
